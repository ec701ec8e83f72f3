"""The reward exchange: a rank's fresh trajectories in, their rewards out, computed where
``gfn.reward_placement`` says.

* ``rank0`` (the original design's): every rank sends its trajectories to rank 0, which calls the
  reward once over all of them and sends each rank its own part. Only rank 0 builds the reward.
* ``per_rank``: every rank builds the reward and scores its own trajectories. Reward work then
  divides by the number of ranks instead of growing with it; each rank pays the reward's memory.

In both, what needs every rank's samples is pooled on rank 0 after scoring: the sample log (rank 0
writes every rank's rows, in rank order), the semantic diversity of the step's samples (sent back
to every rank), and a shared replay buffer (rank 0 stores every rank's trajectories). A reward
that fails on any rank fails the step on every rank (``distributed.Rank0Error``), never a hang.
Without a process group both placements are the same single call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from gflownet.core import distributed
from gflownet.core.protocols import RewardOutput

PLACEMENTS = ("rank0", "per_rank")


@dataclass
class Bookkeeping:
    """What rank 0 does with every rank's scored trajectories (each piece optional)."""

    log_samples: Callable[[dict, dict], None] | None = None  # (request, result) -> the sample log's rows
    diversity: Callable[[list[str], list[str]], float] | None = None  # (samples, prompts) -> pooled diversity
    store: Callable[[dict, dict], None] | None = None  # (request, result) -> a shared buffer's entries


class RewardExchange:
    def __init__(self, placement: str, score: Callable[..., RewardOutput], texts: Callable[[torch.Tensor, torch.Tensor], list[str]],
                 pad_id: int, bookkeeping: Callable[[], Bookkeeping]):
        if placement not in PLACEMENTS:
            raise ValueError(f"gfn.reward_placement={placement}: use one of {', '.join(PLACEMENTS)}")
        self.placement, self.score, self.texts, self.pad_id = placement, score, texts, pad_id
        self.bookkeeping = bookkeeping  # read at each call: the sample log's path and the buffer change with the run

    @staticmethod
    def request(prompts: list[str], context: dict[str, list], sample_ids: torch.Tensor, lengths: torch.Tensor,
                scored: torch.Tensor, store: bool) -> dict:
        """What a rank sends: one prompt and one value per context field per trajectory."""
        return {"prompts": prompts, "context": context, "sample_ids": sample_ids.cpu(), "lengths": lengths.cpu(),
                "scored": scored.cpu(), "store": store}

    def builds_reward_on(self, rank: int) -> bool:
        return self.placement == "per_rank" or rank == 0

    def __call__(self, request: dict | None, collective: bool = True) -> dict | None:
        """This rank's result for its ``request`` (None: a rank that replays this step takes part for the
        pooled diversity only). ``collective``: every rank calls it together; otherwise this process
        scores and keeps the books alone (evaluation, a single process)."""
        if not collective:
            return self._keep_books([request], self._score_all([request]))[0]
        if self.placement == "rank0" or not distributed.initialized():
            compute = (lambda requests: self._keep_books(requests, self._score_all(requests))) if distributed.rank() == 0 else None
            return distributed.compute_on_rank0(request, compute)
        own, error = None, None
        try:  # caught here, raised on every rank below: a rank that raised now would leave the others waiting
            own = self._score_all([request])[0] if request is not None else None
        except Exception as err:  # noqa: BLE001
            error = f"{type(err).__name__}: {err}"

        def pooled(parts: list) -> list:
            failed = [(i, e) for i, (_, _, e) in enumerate(parts) if e is not None]
            if failed:
                raise RuntimeError("; ".join(f"rank {i}'s reward failed ({e})" for i, e in failed))
            return self._keep_books([p[0] for p in parts], [p[1] for p in parts])

        return distributed.compute_on_rank0((request, own, error), pooled if distributed.rank() == 0 else None)

    def _score_all(self, requests: list[dict | None]) -> list[dict | None]:
        """One batched reward call over the given requests' trajectories; each request's own part back."""
        live = [r for r in requests if r is not None]
        if not live:
            return [None] * len(requests)
        T1 = max(r["sample_ids"].size(1) for r in live)
        ids = torch.cat([nn.functional.pad(r["sample_ids"], (0, T1 - r["sample_ids"].size(1)), value=self.pad_id)
                         for r in live])
        scored = torch.cat([nn.functional.pad(r["scored"], (0, T1 - r["scored"].size(1)), value=False) for r in live])
        lengths = torch.cat([r["lengths"] for r in live])
        prompts = sum((r["prompts"] for r in live), [])
        context = {f: sum((r["context"][f] for r in live), []) for f in live[0]["context"]}
        out = self.score(prompts, ids, lengths, scored, context)
        samples = self.texts(ids, lengths)
        results, start = [], 0
        for r in requests:
            if r is None:
                results.append(None)
                continue
            B, w = r["lengths"].numel(), r["sample_ids"].size(1)
            sl = slice(start, start + B)
            start += B
            results.append({
                "log_r": out.log_r[sl, :w].float(), "samples": samples[sl],
                "components": {k: v[sl].float() for k, v in out.components.items()},
                "texts": {k: v[sl] for k, v in out.texts.items()},
                "per_state": {k: v[sl, :w] for k, v in out.per_state.items()},
                # what these rewards were computed for, so that each rank can check they are its own
                "prompts": r["prompts"], "context": r["context"],
            })
        return results

    def _keep_books(self, requests: list[dict | None], results: list[dict | None]) -> list[dict]:
        """On rank 0, over every rank's scored trajectories in rank order: the sample log, a shared
        buffer, and the pooled diversity that goes back with every rank's result."""
        books = self.bookkeeping()
        samples, prompts = [], []
        for r, res in zip(requests, results):
            if r is None:
                continue
            if books.log_samples is not None:
                books.log_samples(r, res)
            if books.store is not None and r["store"]:
                books.store(r, res)
            samples += res["samples"]
            prompts += r["prompts"]
        diversity = books.diversity(samples, prompts) if books.diversity is not None and samples else None
        return [{"diversity": diversity} if res is None else {**res, "diversity": diversity} for res in results]


def as_output(result: dict) -> RewardOutput:
    """A rank's exchange result as the reward's output for its trajectories (the sample log's input)."""
    return RewardOutput(log_r=result["log_r"], components=result["components"], texts=result["texts"],
                        per_state=result.get("per_state", {}))
