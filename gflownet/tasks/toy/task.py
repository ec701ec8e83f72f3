"""The known-target task: the core's proof that training matches R(x)/Z.

``python train.py task=toy`` trains the toy sampler (a 2-layer Llama over 4 words, fully
fine-tuned) with the same module, loss, replay buffer, log Z initialisation, reward temperature
and rank-0 exchange as every task, and logs ``val/l1_to_target``: the exact L1 distance between
the sampler's distribution over all 84 sequences and R/Z. ``reward.broadcast_terminal: true``
reproduces the original implementation's bug (the terminal reward copied to every scored state)
as a negative control.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gflownet.core import exact
from gflownet.core.data import RecordDataModule
from gflownet.core.modeling import register_packaged
from gflownet.core.protocols import ActionLimits, RewardEnv, RewardOutput, Rollout
from gflownet.tasks.toy.problem import ToyProblem, build_toy_llama

PROMPT = "<s>"
register_packaged("toy-llama", build_toy_llama)


class ToyTask:
    name = "toy"
    context_fields = ()

    def __init__(self, n_words: int = 4, min_len: int = 1, max_len: int = 3, reward_scale: float = 1.5, seed: int = 0):
        self.problem = ToyProblem(n_words, min_len, max_len, reward_scale, seed)
        # only the words and "?" can be drawn: "<pad>" and "<s>" are special tokens ("eos" class)
        self.limits = ActionLimits("?", min_len, max_len, ("eos",))

    def prompt(self, record: Any, tokenizer) -> str:
        return PROMPT

    def describe(self, record: Any) -> str:
        return "toy"

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def exact_metrics(self, module) -> dict[str, float]:
        """The exact distances to the target at the current reward temperature T
        (``core.exact.exact_metrics``: every sequence scored by the reward, log Z_T = logsumexp(log R / T)):
        ``l1_to_target`` = L1(P_sampler, R^(1/T)/Z_T), ``kl_to_target``, and ``log_z_error`` where the
        module learns log Z."""
        got = exact.exact_metrics(module, {"prompt": PROMPT})
        out = {"l1_to_target": got["l1_exact"], "kl_to_target": got["kl_exact"]}
        if "log_z_error" in got:
            out["log_z_error"] = got["log_z_error"]
        return out


class ToyReward:
    """Per-state log-rewards from the problem's table: each state ``s_t`` scores the sample that stops there."""

    def __init__(self, problem: ToyProblem, broadcast_terminal: bool = False):
        self.problem, self.broadcast_terminal = problem, broadcast_terminal

    def __call__(self, *, sample_ids: Tensor, lengths: Tensor, scored: Tensor, **_: Any) -> RewardOutput:
        B, T1 = scored.shape
        log_r = torch.zeros(B, T1)
        for b, t in scored.nonzero().tolist():
            t_r = int(lengths[b]) if self.broadcast_terminal else t  # the original bug: the terminal reward everywhere
            log_r[b, t] = self.problem.log_r[tuple(sample_ids[b, :t_r].tolist())]
        return RewardOutput(log_r=log_r)


def toy_reward(env: RewardEnv, n_words: int = 4, min_len: int = 1, max_len: int = 3, reward_scale: float = 1.5, seed: int = 0,
               broadcast_terminal: bool = False) -> ToyReward:
    """Factory: the same problem as the task's (same parameters, same seeded rewards)."""
    words = len(env.tokenizer) - 3
    if words != n_words:
        raise ValueError(f"reward.n_words={n_words} but the sampler's tokenizer has {words} words: use model=toy_llama")
    return ToyReward(ToyProblem(n_words, min_len, max_len, reward_scale, seed), broadcast_terminal)


class ToyDataModule(RecordDataModule):
    """One record (the problem has a single prompt), repeated ``steps_per_epoch`` times per epoch."""

    def __init__(self, steps_per_epoch: int = 1000, batch_size: int = 1, num_workers: int = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.steps_per_epoch = steps_per_epoch

    def load(self) -> tuple[list, list]:
        return [{"prompt": PROMPT}] * self.steps_per_epoch, [{"prompt": PROMPT}]
