"""Rank-0 computation for data-parallel ranks: gather every rank's request, compute once, send slices.

Without an initialised process group these are identities, so single-process runs take the same path.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def mean_over_ranks(value: float, device=None) -> float:
    """The average of a float across ranks (the value itself without a process group)."""
    return sum_over_ranks([value], device=device)[0] / world_size()


def sum_over_ranks(values: list[float], device=None) -> list[float]:
    """Element-wise sums of a list of floats across ranks (the list itself without a process group).
    Collective: every rank calls it with a list of the same length."""
    if not initialized():
        return [float(v) for v in values]
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's value on every rank (any picklable object); collective."""
    if not initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_rank0(value: Any) -> list[Any] | None:
    """Every rank's value in rank order on rank 0, None on the others; collective."""
    if not initialized():
        return [value]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(value, out, dst=0)
    return out


def stream_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's random stream at a step: different per rank, the same after a resume.

    Re-deriving the stream from (seed, rank, step) at every step, instead of saving generator
    states, keeps ranks apart after a resume (Lightning writes the checkpoint from rank 0, so a
    saved state would be rank 0's on every rank) and makes a resumed run draw what the
    uninterrupted one would have drawn."""
    import hashlib

    digest = hashlib.sha256(f"gfn-stream:{int(seed)}:{int(rank)}:{int(step)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def balance_nonfinite(loss, params):
    """Make data-parallel gradient averaging ignore ranks whose loss is not finite.

    DDP averages gradients over all W ranks. A rank with a non-finite loss contributes a zero
    gradient (``sum(p) * 0``: every parameter still takes part in the all-reduce), so without
    care the others' update is scaled by (finite ranks) / W: halved on 2 ranks. Here each finite
    rank scales its loss by W / (finite ranks), so the average is the finite ranks' mean.

    Returns ``(loss_for_backward, finite_ranks)``; collective (every rank calls it once per step)."""
    import torch

    finite = bool(torch.isfinite(loss.detach()).all())
    n_finite = int(round(sum_over_ranks([1.0 if finite else 0.0], device=loss.device)[0]))
    if not finite:
        return sum(p.sum() * 0.0 for p in params), n_finite
    return loss * (world_size() / n_finite), n_finite


class Rank0Error(RuntimeError):
    """Rank 0 failed while computing for every rank; raised on every rank, so none waits in a collective."""


def compute_on_rank0(request: Any, compute: Callable[[list[Any]], list[Any]] | None) -> Any:
    """Every rank passes its own ``request`` (any picklable object, or None); rank 0 calls
    ``compute(requests)`` on the list of all ranks' requests (in rank order) and must return one
    result per rank; each rank gets back its own result. ``compute`` is only used on rank 0.

    If ``compute`` raises, rank 0 still sends: every rank then raises ``Rank0Error`` naming rank 0's
    exception (rank 0 chains the original), instead of the other ranks waiting in the broadcast
    until the process group's timeout.

    Collective: every rank must call this the same number of times.
    """
    if not initialized():
        return compute([request])[0]
    gathered = gather_to_rank0(request)
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if rank() == 0:
        try:
            results = list(compute(gathered))
            if len(results) != world_size():
                raise RuntimeError(f"rank-0 compute returned {len(results)} results for {world_size()} ranks")
            payload = [{"results": results}]
        except Exception as err:  # sent to every rank below, then raised everywhere
            failure = err
            payload = [{"error": f"{type(err).__name__}: {err}"}]
    dist.broadcast_object_list(payload, src=0)
    if "error" in payload[0]:
        raise Rank0Error(f"rank 0 failed computing for every rank ({payload[0]['error']}); "
                         f"this rank ({rank()}) stops too") from failure
    return payload[0]["results"][rank()]
