"""The base-LM likelihood reward, shared by every task.

    log R(s_t) = log P_LM(x_<t, termination | prompt)

for every scored state ``s_t`` (the sample that stops there), from one teacher-forced pass over
the prompts and samples (each distinct prompt encoded once). The LM is the sampler's own base
weights with the adapters disabled (``model: shared``), or a separate frozen model with the same
tokenizer. ``penalized_texts`` / ``penalty`` lower the LM's logits of those tokens by ``penalty``
nats before the softmax, so every occurrence of one costs about that much reward (the banned-token
penalty of the next-sentence task, after Hu et al. 2023).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
from torch import Tensor

from gflownet.core.modeling import load_causal_lm, load_tokenizer
from gflownet.core.protocols import RewardEnv, RewardOutput
from gflownet.core.sampling import encode_prompts, state_logits, token_ids_of_texts


class LikelihoodReward:
    def __init__(self, model, tokenizer, disable_adapters: bool = False, penalized: Tensor | None = None,
                 penalty: float = 0.0, component: str = "log_likelihood"):
        self.model, self.tokenizer, self.disable_adapters = model, tokenizer, disable_adapters
        self.penalized, self.penalty, self.component = penalized, float(penalty), component

    @torch.no_grad()
    def prefix_log_likelihood(self, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor,
                              termination_id: int | None = None) -> Tensor:
        """(B, T+1): the reward's ``log P_LM(x_<t, termination | prompt)`` for every state t, in one
        forward (under the banned-token penalty where ``penalty`` is set; ``prefix_log_likelihoods``
        gives the LM's plain values beside it)."""
        plain, penalised = self.prefix_log_likelihoods(prompts, sample_ids, lengths, termination_id)
        return plain if penalised is None else penalised

    @torch.no_grad()
    def prefix_log_likelihoods(self, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor,
                               termination_id: int | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, T+1) each, from one forward: the LM's plain ``log P_LM(x_<t, termination | prompt)`` for
        every state t, and the same under the banned-token penalty (None without one).

        The LM's plain distribution (no action masking) over real token positions. The termination
        token is read from each row at its length unless ``termination_id`` is given."""
        device = next(self.model.parameters()).device
        p_ids, p_mask = encode_prompts(self.tokenizer, prompts, device)
        B, T1 = sample_ids.shape
        q = sample_ids.to(device)
        ctx = self.model.disable_adapter() if self.disable_adapters else nullcontext()
        was_training = self.model.training
        self.model.eval()
        try:
            with ctx:
                logits, _ = state_logits(self.model, p_ids, p_mask, q)
        finally:
            self.model.train(was_training)
        logits = logits.float()
        lengths = lengths.to(device)
        term = q.gather(1, lengths[:, None]) if termination_id is None else torch.full((B, 1), termination_id, device=device)
        plain = self._prefix_sums(logits.log_softmax(-1), q, lengths, term)
        if self.penalized is None or not self.penalty:
            return plain, None
        logits[..., self.penalized.to(device)] -= self.penalty
        return plain, self._prefix_sums(logits.log_softmax(-1), q, lengths, term)

    @staticmethod
    def _prefix_sums(lp: Tensor, q: Tensor, lengths: Tensor, term: Tensor) -> Tensor:
        """From log-probs (B, T+1, V) at states 0..T: the log-probability of each state's sample, its
        tokens so far then ``term``."""
        B, T1 = q.shape
        T = T1 - 1
        tok_lp = lp[:, :T].gather(-1, q[:, :T, None]).squeeze(-1)
        tok_lp = torch.where(torch.arange(T, device=q.device)[None] < lengths[:, None], tok_lp, 0.0)
        cum = torch.cat([tok_lp.new_zeros(B, 1), tok_lp.cumsum(1)], dim=1)
        return (cum + lp.gather(-1, term[:, None, :].expand(B, T1, 1)).squeeze(-1)).cpu()

    def __call__(self, *, prompts, sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 **context: Any) -> RewardOutput:
        """log R = the LM's log-likelihood of each scored state's sample, under the banned-token penalty
        where one is set. Components: ``log_likelihood`` (``self.component``), the plain LM
        log-likelihood of the complete sample (what fluency means), and with a penalty also
        ``penalized_log_likelihood``, the reward's own value."""
        plain, penalised = self.prefix_log_likelihoods(prompts, sample_ids, lengths)
        log_p = penalised if penalised is not None else plain
        log_r = torch.where(scored, log_p, torch.zeros_like(log_p))
        at_end = lengths.cpu()[:, None]
        components = {self.component: plain.gather(1, at_end).squeeze(1)}
        if penalised is not None:
            components[f"penalized_{self.component}"] = penalised.gather(1, at_end).squeeze(1)
        return RewardOutput(log_r=log_r, components=components)


def likelihood_reward(env: RewardEnv, model: str = "shared", dtype: str = "float32", penalized_texts: Sequence[str] = (),
                      penalty: float = 0.0) -> LikelihoodReward:
    """Factory: the sampler's base weights (``model: shared``) or a separate frozen LM as the reward LM."""
    if model == "shared":
        lm, tokenizer, shared = env.sampler, env.tokenizer, True
    else:
        lm = load_causal_lm(model, env.models_dir, dtype=dtype).to(env.device)
        tokenizer = load_tokenizer(model, env.models_dir)
        if tokenizer.get_vocab() != env.tokenizer.get_vocab():
            raise ValueError(f"reward LM {model!r} must share the sampler's tokenizer (it scores the sampler's token ids)")
        shared = False
    vocab = env.sampler.get_output_embeddings().weight.size(0)
    penalized = None
    if penalized_texts:
        penalized = torch.zeros(vocab, dtype=torch.bool)
        penalized[token_ids_of_texts(env.tokenizer, penalized_texts)] = True
    return LikelihoodReward(lm, tokenizer, disable_adapters=shared, penalized=penalized, penalty=penalty)
