"""The contradiction reward, as a plain callable over token trajectories (docs/design.md).

    log R(q) = log C(answer(q) | edit fact) + likelihood_weight * log P_base(q | prompt)

``ContradictionTerm`` is the first term: for every scored state ``s_t`` it asks the answerer
the question ``decode(s_t) + "?"`` and the judge whether the answer contradicts the edit fact.
All prefixes of a call share one batched answer and judge pass. The original project's knobs live
here: a fixed penalty for states below ``min_question_len`` (the action space never lets a sample
terminate there, so it only applies when a caller scores such states), a hybrid phase (before
``penalized_reward_end_step``: ``failure_penalty`` where the judge finds no contradiction, instead
of log C) and an optional answer-quality term. The second term is the shared base-LM likelihood
reward (``gflownet.rewards.likelihood``); ``contradiction_reward`` composes the two as a weighted
sum. The reward temperature is the core's (``gfn.reward_temperature``).
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from typing import Any, Sequence

import hydra
import torch
from torch import Tensor

from gflownet.core.modeling import load_causal_lm, load_tokenizer
from gflownet.core.protocols import RewardEnv, RewardOutput
from gflownet.core.sampling import state_text
from gflownet.rewards.combine import WeightedSum
from gflownet.rewards.likelihood import likelihood_reward
from gflownet.tasks.contradiction.answerer import Answerer

log = logging.getLogger(__name__)

QUALITY_FLOOR = -20.0  # answer-quality values are clamped here so the reward stays finite


class ContradictionTerm:
    def __init__(
        self,
        answerer: Answerer,
        judge,
        tokenizer,
        min_question_len: int,
        min_len_penalty: float = -99.0,
        use_hybrid_reward: bool = False,
        penalized_reward_end_step: int = 0,
        failure_penalty: float = -5.0,
        contradiction_threshold: float = math.log(0.5),
        answer_quality_weight: float = 0.0,
        answer_quality_threshold: float = -3.0,
        answer_quality_penalty: float = -5.0,
    ):
        self.answerer, self.judge, self.tokenizer = answerer, judge, tokenizer
        self.min_question_len = min_question_len
        self.min_len_penalty = min_len_penalty
        self.use_hybrid_reward = use_hybrid_reward
        self.penalized_reward_end_step = penalized_reward_end_step
        self.failure_penalty = failure_penalty
        self.contradiction_threshold = contradiction_threshold
        self.answer_quality_weight = answer_quality_weight
        self.answer_quality_threshold = answer_quality_threshold
        self.answer_quality_penalty = answer_quality_penalty

    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 edit_fact: Sequence[str], original_fact: Sequence[str], **context: Any) -> RewardOutput:
        """Per-state rewards of ``B`` trajectories (each with its own prompt and edit)."""
        B = sample_ids.size(0)
        if not (len(prompts) == len(edit_fact) == len(original_fact) == B):
            raise ValueError("the contradiction reward needs one prompt, edit fact and original fact per trajectory")
        sample_ids, lengths, scored = sample_ids.cpu(), lengths.cpu(), scored.cpu()
        T1 = scored.size(1)
        sample_ids = sample_ids[:, :T1]
        # States that need the answerer and judge: scored, and long enough to escape the penalty.
        needs_model = scored & (torch.arange(T1)[None, :] >= self.min_question_len)
        where = needs_model.nonzero().tolist()
        texts = [state_text(self.tokenizer, sample_ids[b, :t].tolist(), "?") for b, t in where]
        facts = [edit_fact[b] for b, _ in where]
        answers = self.answerer(texts, facts)
        log_c_flat = self.judge([edit_fact[b] for b, _ in where], answers, [original_fact[b] for b, _ in where])
        log_c = torch.full((B, T1), float("nan"))
        for (b, t), v in zip(where, log_c_flat.tolist()):
            log_c[b, t] = v

        if self.use_hybrid_reward and step < self.penalized_reward_end_step:
            log_r = torch.where(log_c < self.contradiction_threshold, self.failure_penalty, 0.0)
        else:
            log_r = log_c.clone()
        if self.answer_quality_weight:
            quality = self.answer_quality(texts, answers, facts)
            for (b, t), v in zip(where, quality.tolist()):
                log_r[b, t] += self.answer_quality_weight * v + (self.answer_quality_penalty if v < self.answer_quality_threshold else 0.0)
        log_r = torch.where(needs_model, log_r, torch.full_like(log_r, self.min_len_penalty))
        log_r = torch.where(scored, log_r, torch.zeros_like(log_r))
        by_state = {(b, t): a for (b, t), a in zip(where, answers)}
        idx = torch.arange(B)
        return RewardOutput(
            log_r=log_r,
            components={"log_contradiction": log_c[idx, lengths]},  # nan where the terminal state was not judged
            texts={"answer": [by_state.get((b, int(lengths[b])), "") for b in range(B)]},
            per_state={"log_contradiction": log_c},
        )

    def phase(self, step: int) -> str:
        """``hybrid`` before ``penalized_reward_end_step`` when the hybrid reward is on: its log-rewards
        are another function then, and the replay buffer must not carry them past the switch."""
        return "hybrid" if self.use_hybrid_reward and step < self.penalized_reward_end_step else ""

    @torch.no_grad()
    def answer_quality(self, questions: Sequence[str], answers: Sequence[str], facts: Sequence[str]) -> Tensor:
        """Mean per-token log-probability of each answer under the answerer given its prompt."""
        model, tok = self.answerer.model, self.tokenizer
        device = next(model.parameters()).device
        out = []
        ctx = model.disable_adapter() if self.answerer.disable_adapters else nullcontext()
        with ctx:
            for q, a, f in zip(questions, answers, facts):
                p = tok.encode(self.answerer.prompt(self.answerer.turn(q, f)), add_special_tokens=False)
                x = tok.encode(" " + a, add_special_tokens=False) if a else []
                if not x:
                    out.append(QUALITY_FLOOR)  # an empty answer: the worst quality, but finite
                    continue
                ids = torch.tensor([p + x], device=device)
                lp = model(input_ids=ids).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
                out.append(max(lp.gather(-1, ids[0, len(p):, None]).mean().item(), QUALITY_FLOOR))
        return torch.tensor(out)


EDIT_METHODS = ("none", "in_context", "rome", "lora_ft")


def served_answerer(env: RewardEnv, served: dict, answer: dict, method: str):
    """The answerer behind an OpenAI-compatible endpoint (``reward.served``; ``ServedAnswerer``)."""
    from gflownet.tasks.prompt_inversion.backends import CachedBackend, OpenAIBackend

    from gflownet.tasks.contradiction.answerer import ServedAnswerer

    if method in ("rome", "lora_ft"):
        raise ValueError(f"answerer/edit={method} edits local weights, which a served answerer does not have: use "
                         "answerer/edit=none or in_context with reward.served, or drop reward.served")
    served = dict(served)
    unknown = set(served) - {"base_url", "model", "api_key", "api_key_env", "concurrency", "max_retries", "timeout", "cache"}
    if unknown:
        raise ValueError(f"unknown reward.served keys {sorted(unknown)}: use base_url, model, api_key, api_key_env, "
                         "concurrency, max_retries, timeout, cache")
    cache = served.pop("cache", None)
    backend = OpenAIBackend(served.pop("base_url", None), served.pop("model", None), check=False, **served)
    if cache:
        backend = CachedBackend(backend, cache)
    built = ServedAnswerer(backend, env.tokenizer, **answer)
    built.backend.complete([built.prompt("Who wrote Hamlet?")], 1)  # fail at start-up, not at the first step
    return built


def plain_edit(edit) -> dict:
    """``answerer.edit`` as plain, resolved values (it arrives as a Hydra node), ``{"method": "none"}`` for none."""
    if edit is not None and not isinstance(edit, dict):
        from omegaconf import OmegaConf

        edit = OmegaConf.to_container(edit, resolve=True)
    return dict(edit or {"method": "none"})


def build_answerer(env: RewardEnv, answerer: dict, answer: dict, edit: dict | None = None,
                   served: dict | None = None) -> Answerer:
    """The answerer: the sampler's base weights with adapters disabled (``name_or_path: shared``), or a
    separate frozen model with the sampler's tokenizer; edited as ``edit`` says (``answerer/edit=...``):

    * ``none``: unedited;
    * ``in_context``: the edit fact stated before each question (``edit.template``);
    * ``rome`` / ``lora_ft``: a copy of the model whose weights carry every edit of ``edit.data`` (train
      and validation records), applied together, saved once and reused (``gflownet.editing.store``).
      The sampler's own weights are never edited: a shared answerer becomes a separate copy.
    """
    edit = plain_edit(edit)
    method = edit.get("method", "none")
    if method not in EDIT_METHODS:
        raise ValueError(f"unknown answerer.edit.method {method!r}: use one of {', '.join(EDIT_METHODS)}")
    answer = dict(answer)
    if method == "in_context":
        answer["fact_template"] = edit.get("template") or "New fact: {fact}\n{question}"
    if served:
        return served_answerer(env, served, answer, method)
    name = answerer.get("name_or_path", "shared")
    if name == "shared" and method not in ("rome", "lora_ft"):
        return Answerer(env.sampler, env.tokenizer, disable_adapters=True, **answer)
    source = env.sampler_name if name == "shared" else name
    if not source:
        raise ValueError("a weight-edited answerer needs the model to copy: set model.answerer.name_or_path")
    model = load_causal_lm(source, env.models_dir, dtype=answerer.get("dtype", "float32")).to(env.device)
    tokenizer = load_tokenizer(source, env.models_dir)
    if tokenizer.get_vocab() != env.tokenizer.get_vocab():
        raise ValueError("a separate answerer must share the sampler's tokenizer (it scores the sampler's token ids)")
    built = Answerer(model, tokenizer, **answer)
    if method in ("rome", "lora_ft"):
        edit_weights(model, tokenizer, source, edit, answer_prompt=built.prompt)
    return built


def edit_records(data: Any) -> list:
    """Every record (train and validation) of the data set an edit config names (a data config or a
    data module)."""
    module = hydra.utils.instantiate(data) if not hasattr(data, "load") else data
    train, val = module.load()
    return list(train) + list(val)


def edit_weights(model, tokenizer, model_name: str, edit: dict, answer_prompt=None) -> dict:
    """Apply ``edit.method`` (rome or lora_ft) for every record of ``edit.data`` to ``model``.

    With ``edit.answer_format`` (LoRA-FT), each edit is also trained where the answerer is asked it:
    ``answer_prompt(edit prompt)`` (the answerer's instruction, examples and the edit prompt as the
    question) followed by the edit prompt as the start of its answer, a context of the request."""
    from dataclasses import replace

    from gflownet.editing.requests import request_from_record
    from gflownet.editing.store import edited_model

    if edit.get("data") is None:
        raise ValueError(f"answerer/edit={edit['method']} needs edit.data (the data set whose edits it applies)")
    requests = [request_from_record(r) for r in edit_records(edit["data"])]
    if edit.get("answer_format"):
        if edit["method"] != "lora_ft":
            raise ValueError(f"answerer.edit.answer_format is a LoRA-FT option (ROME edits the subject's key wherever it is "
                             f"read); set it to false for answerer/edit={edit['method']}")
        if answer_prompt is None:
            raise ValueError("answerer.edit.answer_format needs the answerer's prompt builder (answer_prompt)")
        requests = [replace(r, contexts=(answer_prompt(r.prompt) + r.prompt,)) for r in requests]
    _, manifest = edited_model(edit["method"], model, tokenizer, requests, model_name=model_name, layer=edit.get("layer"),
                               settings=dict(edit.get("settings") or {}), stats=dict(edit.get("stats") or {}),
                               path=edit.get("path"), cache_dir=edit.get("cache_dir"))
    log.info("answerer edited with %s: %d edits at %s", edit["method"], manifest["edits"], manifest.get("site"))
    return manifest


def check_took_only(edit) -> None:
    """``reward.took_only=true`` needs an edited answerer (an unedited one takes no edit): checked before
    any model is loaded."""
    if plain_edit(edit).get("method", "none") == "none":
        raise ValueError("reward.took_only=true pays only on edits the answerer took, and answerer/edit=none takes none: "
                         "choose an edit (answerer/edit=in_context, lora_ft or rome) or set reward.took_only=false")


def gate_took(term, answerer, edit, failed_log_reward: float):
    """``term`` paying only on edits that took (``leaks.TookGate``): ``reward.took_only=true``."""
    from gflownet.tasks.contradiction.leaks import TookGate

    check_took_only(edit)
    return TookGate(term, answerer, failed_log_reward)


def contradiction_reward(env: RewardEnv, judge: dict, answer: dict, answerer: dict | None = None,
                         likelihood_weight: float = 1.0, edit: dict | None = None, served: dict | None = None,
                         took_only: bool = False, failed_log_reward: float = -10.0, **knobs: Any) -> WeightedSum:
    """Factory (where ``gfn.reward_placement`` builds rewards): log C of the answerer's answers plus
    ``likelihood_weight`` x the base LM's log-likelihood of the question. ``served``: the answerer
    behind an OpenAI-compatible endpoint instead of a local model. ``took_only``: the contradiction
    term pays only on edits that took (``leaks.TookGate``), elsewhere ``failed_log_reward`` for every
    question. ``knobs`` go to ``ContradictionTerm``."""
    if served and float(knobs.get("answer_quality_weight", 0.0) or 0.0):
        raise ValueError("reward.answer_quality_weight reads the answerer's probabilities, which a served answerer does "
                         "not give: set it to 0 or drop reward.served")
    if took_only:
        check_took_only(edit)  # before the judge and the answerer load
    judge_model = hydra.utils.instantiate(judge, device=str(env.device))  # this rank's GPU in DDP runs
    term = ContradictionTerm(build_answerer(env, dict(answerer or {}), dict(answer), edit, served), judge_model,
                             env.tokenizer, min_question_len=env.limits.min_len, **knobs)
    if took_only:
        term = gate_took(term, term.answerer, edit, failed_log_reward)
    return WeightedSum({"contradiction": (1.0, term), "likelihood": (float(likelihood_weight), likelihood_reward(env))})
