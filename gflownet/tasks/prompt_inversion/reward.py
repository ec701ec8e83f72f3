"""The prompt-inversion reward: ``log R(x) = log p_prior(x) + beta * log p(y | x)``.

* ``log p_prior(x)``: a prior LM's log-probability of x followed by the termination text, after
  ``prior.prompt`` (``gflownet.rewards.likelihood``; every prefix scored from one pass). The prior
  is the sampler's base weights (``prior.model: shared``, LoRA disabled) or a separate frozen LM.
* ``log p(y | x)``: the reward model's log-probability of the target y after x, put to it by a
  template (``templates.py``) and scored by a backend (``backends.py``: a local model, or an
  OpenAI-compatible endpoint with a persistent cache).

The reward temperature (``gfn.reward_temperature``) divides the sum, as for every task: the
target is ``(p_prior(x) p(y | x)^beta)^(1/T)``. Every scored state is a complete input (the sample
that stops there), so SubTB's intermediate states cost one more reward-model score each.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import hydra
import torch
from torch import Tensor

from gflownet.core.modeling import load_causal_lm, load_tokenizer
from gflownet.core.protocols import RewardEnv, RewardOutput
from gflownet.rewards.likelihood import LikelihoodReward
from gflownet.tasks.prompt_inversion.backends import CachedBackend, LocalBackend, OpenAIBackend
from gflownet.tasks.prompt_inversion.templates import check_template, render

log = logging.getLogger(__name__)
SENTINEL = "\x00X\x00"


def auto_prior_prompt(tokenizer) -> str:
    """What precedes x for the prior: the chat template up to a user message's content when the
    tokenizer has one (x is then scored as a user's request), else the BOS token, else a newline."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False)
        if SENTINEL in text:
            return text.split(SENTINEL)[0]
    return tokenizer.bos_token or "\n"


class PromptInversionReward:
    def __init__(self, prior: LikelihoodReward, prior_prompt: str, backend, template: str, beta: float, tokenizer,
                 chat_tokenizer=None):
        check_template(template)
        self.prior, self.prior_prompt, self.backend = prior, prior_prompt, backend
        self.template, self.beta, self.tokenizer, self.chat_tokenizer = template, float(beta), tokenizer, chat_tokenizer

    def inputs(self, sample_ids: Tensor, lengths: Tensor) -> list[str]:
        """The text of each sample without its termination token (what is put to the reward model)."""
        return [self.tokenizer.decode(sample_ids[b, : int(lengths[b])].tolist()).strip() for b in range(lengths.numel())]

    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 target: Sequence[str] = (), **_: Any) -> RewardOutput:
        B, T1 = scored.shape
        if len(target) != B:
            raise ValueError(f"prompt-inversion reward: {len(target)} targets for {B} trajectories (context field 'target')")
        log_prior = self.prior.prefix_log_likelihood([self.prior_prompt] * B, sample_ids, lengths)
        where = scored.nonzero().tolist()
        pairs = [render(self.template, self.tokenizer.decode(sample_ids[b, :t].tolist()), target[b], self.chat_tokenizer)
                 for b, t in where]
        unique = list(dict.fromkeys(pairs))  # one score per distinct (input, target)
        responses: list | None = [] if self.backend.mode == "generate" else None
        values = dict(zip(unique, self.backend.log_probs(unique, responses)))
        log_lik = torch.full((B, T1), float("nan"), dtype=torch.float64)
        for (b, t), pair in zip(where, pairs):
            log_lik[b, t] = values[pair]
        log_r = torch.where(scored, log_prior.double() + self.beta * log_lik, torch.zeros_like(log_lik)).float()
        idx = lengths.cpu()[:, None]
        out = RewardOutput(log_r=log_r, components={
            "log_prior": log_prior.gather(1, idx).squeeze(1).float(),
            "log_p_target": log_lik.gather(1, idx).squeeze(1).float(),
        })
        if responses is not None:  # generate mode: the response each terminal input drew
            by_pair = dict(zip(unique, responses))
            out.texts["response"] = [by_pair.get(render(self.template, x, y, self.chat_tokenizer)) or ""
                                     for x, y in zip(self.inputs(sample_ids, lengths), target)]
        return out

    def metrics(self) -> dict[str, float]:
        """The backend's counters (requests, tokens, cache hits), logged as ``reward/<name>``."""
        return self.backend.metrics()


# ------------------------------------------------------------------------------------ factories
def local_backend(env: RewardEnv, model: str = "shared", dtype: str = "float32", batch_size: int = 16) -> LocalBackend:
    """A local Hugging Face model as the reward model; ``shared``: the sampler's base weights."""
    if model == "shared":
        if not hasattr(env.sampler, "disable_adapter"):
            raise ValueError("reward.backend.model=shared scores with the sampler's base weights, but this sampler has no "
                             "LoRA adapters (it is fully fine-tuned): name a separate model, e.g. reward.backend.model="
                             f"{env.sampler_name}")
        return LocalBackend(env.sampler, load_tokenizer(env.sampler_name, env.models_dir, padding_side="right"),
                            name=f"local:{env.sampler_name}", batch_size=batch_size, disable_adapters=True)
    lm = load_causal_lm(model, env.models_dir, dtype=dtype).to(env.device)
    return LocalBackend(lm, load_tokenizer(model, env.models_dir, padding_side="right"), name=f"local:{model}",
                        batch_size=batch_size)


def openai_backend(env: RewardEnv, base_url: str, model: str, api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                   mode: str = "echo", concurrency: int = 4, max_retries: int = 5, timeout: float = 60.0,
                   max_response_tokens: int = 64, tokenizer: str | None = None) -> OpenAIBackend:
    """An OpenAI-compatible endpoint as the reward model. ``tokenizer``: a model (name, directory or
    packaged:NAME) with the served model's tokenizer, whose chat template and BOS token render the
    templates; null renders chat-style templates as ``User: ...\\nAssistant:``, without a BOS."""
    backend = OpenAIBackend(base_url, model, api_key=api_key, api_key_env=api_key_env, mode=mode, concurrency=concurrency,
                            max_retries=max_retries, timeout=timeout, max_response_tokens=max_response_tokens)
    backend.chat_tokenizer = load_tokenizer(tokenizer, env.models_dir) if tokenizer else None
    return backend


def prompt_inversion_reward(env: RewardEnv, backend: dict, template: str = "chat", beta: float = 1.0,
                            prior: dict | None = None) -> PromptInversionReward:
    """Factory (rank 0): the prior, and the backend (a ``_target_`` config called with ``env``; its
    ``cache``, a SQLite path or null, puts a persistent cache in front of it)."""
    check_template(template)
    if not math.isfinite(float(beta)) or float(beta) < 0:
        raise ValueError(f"reward.beta={beta}: the weight of log p(y | x) must be a finite number >= 0")
    prior = dict(prior or {})
    prior_model = prior.get("model", "shared")
    if prior_model == "shared":
        if not hasattr(env.sampler, "disable_adapter"):
            raise ValueError("reward.prior.model=shared is the sampler's base weights, but this sampler is fully fine-tuned "
                             f"(no LoRA): name a separate prior, e.g. reward.prior.model={env.sampler_name}")
        prior_lm, shared = env.sampler, True
    else:
        prior_lm, shared = load_causal_lm(prior_model, env.models_dir, dtype=prior.get("dtype", "float32")).to(env.device), False
        if load_tokenizer(prior_model, env.models_dir).get_vocab() != env.tokenizer.get_vocab():
            raise ValueError(f"reward.prior.model={prior_model!r} must share the sampler's tokenizer (it scores the sampler's tokens)")
    prior_prompt = prior.get("prompt", "auto")
    if prior_prompt in (None, "auto"):
        prior_prompt = auto_prior_prompt(env.tokenizer)
    backend = dict(backend)
    cache = backend.pop("cache", None)
    built = hydra.utils.instantiate(backend, env=env, _partial_=False)
    chat_tokenizer = getattr(built, "chat_tokenizer", None) if not isinstance(built, LocalBackend) else built.tokenizer
    if cache:
        built_cached = CachedBackend(built, cache)
        log.info("reward cache: %s", cache)
    else:
        built_cached = built
    return PromptInversionReward(LikelihoodReward(prior_lm, env.tokenizer, disable_adapters=shared), prior_prompt,
                                 built_cached, template, beta, env.tokenizer, chat_tokenizer)
