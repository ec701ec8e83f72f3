"""Schedules: the reward temperature's linear anneal, and learning-rate schedulers for config.

    scheduler:                                   # configs/scheduler/warmup.yaml
      _target_: gflownet.core.schedules.warmup_linear
      _partial_: true                            # the module passes the optimizer
      warmup_steps: 10
"""

from __future__ import annotations

import torch


def linear_schedule(start: float, end: float, horizon: int, step: int) -> float:
    """``start`` at step 0, ``end`` from step ``horizon`` on, linear in between."""
    if horizon <= 0:
        return end
    frac = min(max(step, 0) / horizon, 1.0)
    return start + frac * (end - start)


def warmup_linear(optimizer: torch.optim.Optimizer, warmup_steps: int = 0, decay_steps: int = 0,
                  final_fraction: float = 1.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then (with ``decay_steps`` > 0) a linear
    decay to ``final_fraction`` of the learning rate at step ``decay_steps``; constant after."""
    if warmup_steps < 0 or decay_steps < 0 or not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"scheduler: need warmup_steps >= 0, decay_steps >= 0 and 0 <= final_fraction <= 1, got "
                         f"{warmup_steps}, {decay_steps}, {final_fraction}")

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        decay = 1.0 - (1.0 - final_fraction) * min(step / decay_steps, 1.0) if decay_steps else 1.0
        return warm * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
