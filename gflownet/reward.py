"""The contradiction reward (DESIGN.md section 4), as a plain callable over token trajectories.

    log R(q) = log C(answer(q) | edit fact) + likelihood_weight * log P_base(q | prompt)

with the original project's knobs: a fixed penalty below ``min_question_len``, a reward
temperature annealed over training (``log R / temperature`` is what the loss sees), a hybrid
phase (likelihood reward plus ``failure_penalty`` where the judge finds no contradiction), and
an optional answer-quality term. For SubTB every scored prefix ``s_t`` gets its own reward, as
the question ``decode(s_t) + "?"``; all prefixes of a call share one batched answer/judge pass
and one base-model forward for the likelihoods.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from gflownet.answerer import Answerer
from gflownet.sampling import encode_prompts, state_logits

log = logging.getLogger(__name__)

QUALITY_FLOOR = -20.0  # answer-quality values are clamped here so the reward stays finite


def linear_schedule(start: float, end: float, horizon: int, step: int) -> float:
    if horizon <= 0:
        return end
    frac = min(max(step, 0) / horizon, 1.0)
    return start + frac * (end - start)


@dataclass
class RewardOutput:
    log_r: Tensor  # (B, T+1) scaled log-reward of each scored prefix (0 elsewhere)
    log_r_unscaled: Tensor  # (B, T+1)
    scored: Tensor  # (B, T+1) bool
    log_c: Tensor  # (B,) terminal log p(contradiction)
    log_p: Tensor  # (B,) terminal log P_base(question | prompt)
    questions: list[str]
    answers: list[str]
    temperature: float
    extras: dict = field(default_factory=dict)

    @property
    def terminal_unscaled(self) -> Tensor:
        return self._terminal(self.log_r_unscaled)

    @property
    def terminal_scaled(self) -> Tensor:
        return self._terminal(self.log_r)

    def _terminal(self, values: Tensor) -> Tensor:
        last = self.scored.long().cumsum(1).argmax(1)  # index of the last scored state
        return values.gather(1, last[:, None]).squeeze(1)


class ContradictionReward:
    def __init__(
        self,
        answerer: Answerer,
        judge,
        base_model,
        tokenizer,
        min_question_len: int,
        likelihood_weight: float = 0.2,
        min_len_penalty: float = -99.0,
        score_every: int = 1,
        temperature: dict | None = None,
        use_hybrid_reward: bool = False,
        penalized_reward_end_step: int = 0,
        failure_penalty: float = -5.0,
        contradiction_threshold: float = math.log(0.5),
        answer_quality_weight: float = 0.0,
        answer_quality_threshold: float = -3.0,
        answer_quality_penalty: float = -5.0,
        disable_adapters: bool = False,
    ):
        if score_every < 1:
            raise ValueError(f"reward.score_every must be >= 1, got {score_every}")
        self.answerer, self.judge, self.base_model, self.tokenizer = answerer, judge, base_model, tokenizer
        self.min_question_len = min_question_len
        self.likelihood_weight = likelihood_weight
        self.min_len_penalty = min_len_penalty
        self.score_every = score_every
        self.temperature_cfg = {"start": 1.0, "end": 1.0, "horizon": 0, **(temperature or {})}
        self.use_hybrid_reward = use_hybrid_reward
        self.penalized_reward_end_step = penalized_reward_end_step
        self.failure_penalty = failure_penalty
        self.contradiction_threshold = contradiction_threshold
        self.answer_quality_weight = answer_quality_weight
        self.answer_quality_threshold = answer_quality_threshold
        self.answer_quality_penalty = answer_quality_penalty
        self.disable_adapters = disable_adapters

    def temperature(self, step: int) -> float:
        c = self.temperature_cfg
        return linear_schedule(float(c["start"]), float(c["end"]), int(c["horizon"]), step)

    def scored_states(self, lengths: Tensor, terminal_only: bool = False) -> Tensor:
        """(B, T+1) bool: every ``score_every``-th state from ``min_question_len`` on, plus the terminal."""
        T = int(lengths.max()) if lengths.numel() else 0
        steps = torch.arange(T + 1)[None, :]
        L = lengths.cpu()[:, None]
        terminal = steps == L
        if terminal_only:
            return terminal
        periodic = (steps >= self.min_question_len) & ((steps - self.min_question_len) % self.score_every == 0) & (steps <= L)
        return periodic | terminal

    @torch.no_grad()
    def prefix_log_likelihood(self, prompts: Sequence[str], question_ids: Tensor, lengths: Tensor) -> Tensor:
        """(B, T+1): ``log P_base(x_<t, ? | prompt)`` for every prefix length t, in one forward.

        Uses the base model's plain distribution (no action masking) over real token positions.
        """
        device = next(self.base_model.parameters()).device
        p_ids, p_mask = encode_prompts(self.tokenizer, prompts, device)
        B, T1 = question_ids.shape
        T = T1 - 1
        q = question_ids.to(device)
        ctx = self.base_model.disable_adapter() if self.disable_adapters else nullcontext()
        was_training = self.base_model.training
        self.base_model.eval()
        try:
            with ctx:
                logits, _ = state_logits(self.base_model, p_ids, p_mask, q)
        finally:
            self.base_model.train(was_training)
        lp = logits.float().log_softmax(-1)  # (B, T+1, V) at states 0..T
        term_id = int(question_ids[0, lengths[0]])  # the termination token ends every trajectory
        tok_lp = lp[:, :T].gather(-1, q[:, :T, None]).squeeze(-1)
        tok_lp = torch.where(torch.arange(T, device=device)[None] < lengths.to(device)[:, None], tok_lp, 0.0)
        cum = torch.cat([tok_lp.new_zeros(B, 1), tok_lp.cumsum(1)], dim=1)
        return (cum + lp[..., term_id]).cpu()

    def __call__(
        self,
        prompts: Sequence[str],
        edit_facts: Sequence[str],
        original_facts: Sequence[str],
        question_ids: Tensor,
        lengths: Tensor,
        step: int,
        terminal_only: bool = False,
    ) -> RewardOutput:
        """Rewards of every scored prefix of ``B`` trajectories (each with its own prompt and record)."""
        B = question_ids.size(0)
        if not (len(prompts) == len(edit_facts) == len(original_facts) == B):
            raise ValueError("reward needs one prompt, edit fact and original fact per trajectory")
        question_ids, lengths = question_ids.cpu(), lengths.cpu()
        scored = self.scored_states(lengths, terminal_only)
        T1 = scored.size(1)
        question_ids = question_ids[:, :T1]
        log_p_all = self.prefix_log_likelihood(prompts, question_ids, lengths)

        # Prefixes that need the answerer and judge: scored, and long enough to escape the penalty.
        needs_model = scored & (torch.arange(T1)[None, :] >= self.min_question_len)
        where = needs_model.nonzero().tolist()
        texts = [self.tokenizer.decode(question_ids[b, :t].tolist()).strip() + "?" for b, t in where]
        answers = self.answerer(texts)
        log_c_flat = self.judge([edit_facts[b] for b, _ in where], answers, [original_facts[b] for b, _ in where])
        log_c_all = torch.full((B, T1), float("nan"))
        for (b, t), v in zip(where, log_c_flat.tolist()):
            log_c_all[b, t] = v

        hybrid = self.use_hybrid_reward and step < self.penalized_reward_end_step
        if hybrid:
            log_r = self.likelihood_weight * log_p_all + torch.where(log_c_all < self.contradiction_threshold, self.failure_penalty, 0.0)
        else:
            log_r = log_c_all + self.likelihood_weight * log_p_all
        if self.answer_quality_weight:
            quality = self.answer_quality(texts, answers)
            q_all = torch.zeros(B, T1)
            for (b, t), v in zip(where, quality.tolist()):
                q_all[b, t] = self.answer_quality_weight * v + (self.answer_quality_penalty if v < self.answer_quality_threshold else 0.0)
            log_r = log_r + q_all
        log_r = torch.where(needs_model, log_r, torch.full_like(log_r, self.min_len_penalty))
        log_r = torch.where(scored, log_r, torch.zeros_like(log_r))
        temp = self.temperature(step)

        term_answers = {(b, t): a for (b, t), a in zip(where, answers)}
        idx = torch.arange(B)
        return RewardOutput(
            log_r=log_r / temp,
            log_r_unscaled=log_r,
            scored=scored,
            log_c=log_c_all[idx, lengths],  # nan for questions below the minimum length
            log_p=log_p_all[idx, lengths],
            questions=[self.tokenizer.decode(question_ids[b, : int(lengths[b])].tolist()).strip() + "?" for b in range(B)],
            answers=[term_answers.get((b, int(lengths[b])), "") for b in range(B)],
            temperature=temp,
        )

    @torch.no_grad()
    def answer_quality(self, questions: Sequence[str], answers: Sequence[str]) -> Tensor:
        """Mean per-token log-probability of each answer under the answerer given its prompt."""
        model, tok = self.answerer.model, self.tokenizer
        device = next(model.parameters()).device
        out = []
        ctx = model.disable_adapter() if self.answerer.disable_adapters else nullcontext()
        with ctx:
            for q, a in zip(questions, answers):
                p = tok.encode(self.answerer.prompt(q), add_special_tokens=False)
                x = tok.encode(" " + a, add_special_tokens=False) if a else []
                if not x:
                    out.append(QUALITY_FLOOR)  # an empty answer: the worst quality, but finite
                    continue
                ids = torch.tensor([p + x], device=device)
                lp = model(input_ids=ids).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
                out.append(max(lp.gather(-1, ids[0, len(p):, None]).mean().item(), QUALITY_FLOOR))
        return torch.tensor(out)
