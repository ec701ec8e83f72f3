"""The replay policy: whether a step replays stored trajectories (``gfn.use_buffer_prob``), which
ones (the buffer's own sampling, per prompt, under the reward's current signature), and storing
fresh ones. A buffer that cannot be reached (Redis lost) is counted and the step goes on: a replay
step becomes an on-policy step, trajectories go unstored.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from gflownet.core.protocols import Rollout
from gflownet.core.replay_buffer import BufferEntry, entries_to_rollout, to_entries

log = logging.getLogger(__name__)


class Replay:
    def __init__(self, buffer_factory: Callable[[], Any], use_prob: float, pad_id: int):
        self.buffer_factory, self.use_prob, self.pad_id = buffer_factory, float(use_prob), pad_id
        self.buffer = None
        self.steps = 0  # training steps that replayed on this rank
        self.unavailable = 0  # buffer calls that failed (Redis lost); the run went on without it

    def build(self) -> None:
        if self.buffer is None:
            self.buffer = self.buffer_factory()

    def wanted(self, draw: float) -> bool:
        """Whether a step with this uniform draw replays."""
        return draw < self.use_prob

    def draw(self, prompts: list[str], n: int, rng: torch.Generator, signature: str, device) -> Rollout | None:
        """n replayed trajectories for every prompt, or None when any prompt has none (then: fresh)."""
        entries: list[BufferEntry] = []
        for p in prompts:
            try:
                got = self.buffer.sample(p, n, rng, signature=signature)
            except ConnectionError as err:  # BufferUnavailable: the buffer retries with backoff
                self.unavailable += 1
                log.debug("replay buffer unavailable (%s): on-policy step instead", err)
                return None
            if not got:
                return None
            entries += got
        self.steps += 1
        return entries_to_rollout([p for p in prompts for _ in range(n)], entries, self.pad_id, device)

    def store(self, prompts: list[str], ids, lengths, scored, result: dict, signature: str) -> None:
        """Store scored trajectories per prompt (``prompts`` has one entry per trajectory; ``result``
        holds their ``log_r``, ``samples``, ``components`` and ``texts``)."""
        for p in dict.fromkeys(prompts):
            rows = [i for i, q in enumerate(prompts) if q == p]
            pick = lambda v: v[rows] if isinstance(v, torch.Tensor) else [v[i] for i in rows]  # noqa: E731
            entries = to_entries(
                pick(ids), pick(lengths), pick(scored), pick(result["log_r"]), pick(result["samples"]),
                {k: pick(v) for k, v in result["components"].items()}, {k: pick(v) for k, v in result["texts"].items()},
                signature,
            )
            try:
                self.buffer.add(p, entries, signature=signature)
            except ConnectionError as err:
                self.unavailable += 1
                log.debug("replay buffer unavailable (%s): trajectories not stored", err)

    def size(self, prompts: list[str], signature: str) -> float | None:
        """Stored entries of these prompts under the signature; None while the buffer is unreachable."""
        try:
            return float(sum(self.buffer.size(p, signature=signature) for p in dict.fromkeys(prompts)))
        except ConnectionError:  # BufferUnavailable: already warned; the size is unknown this step
            return None
