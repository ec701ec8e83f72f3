"""Callbacks beyond Lightning's own.

``StepTrace`` writes, per rank, one JSON line per training step with what that rank did
(the ``trace`` of the training step's outputs: its records, the prompts it scored its trajectories after,
the prompts and record fields rank 0 computed their rewards for, the schedules), and at the end of
fitting a fingerprint of its trainable weights and whether it held the reward models. It is
how the DDP and resume tests see inside each process, and a way to debug a run:

    python train.py trainer=ddp_sim +callbacks.step_trace._target_=gflownet.core.callbacks.StepTrace \
        +callbacks.step_trace.dirpath=trace
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

from gflownet.core.progress import duration


def weights_fingerprint(module) -> str:
    """sha256 over the trainable parameters' bytes, in name order: equal on every rank after a DDP step."""
    digest = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class StepTrace(pl.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self._started = time.perf_counter()

    def _write(self, trainer, record: dict) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info = outputs.get("trace") if isinstance(outputs, dict) else None
        if info:  # seconds: this rank's whole step, sampling to the optimizer's update (bench/bench_placement.py)
            self._write(trainer, {"event": "step", **info, "global_step_after": trainer.global_step,
                                  "seconds": time.perf_counter() - self._started})

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, {
            "event": "end", "rank": trainer.global_rank, "global_step": trainer.global_step,
            "weights": weights_fingerprint(pl_module),
            "reward_models_loaded": getattr(pl_module, "reward", None) is not None,
            "embedder_loaded": getattr(pl_module, "embedder", None) is not None,
            "peak_rss_mib": peak_rss_mib(),
        })


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


class ProgressLog(pl.Callback):
    """One log line every ``every_n_steps`` training steps, on rank 0:

        step 40/2000 | loss 12.31 | mean log R (fresh) -35.20 | 4.12 s/step | 2m44s elapsed, about 2h14m to go

    The progress bar redraws one terminal line, so a run whose output goes to a file (run_4gpu_ddp.sh,
    SLURM, ``tail -f`` of the Hydra log) shows nothing until it ends; these lines go through Python
    logging, to the console and to the run's log file."""

    def __init__(self, every_n_steps: int = 10, gfn: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"ProgressLog every_n_steps must be >= 1, got {every_n_steps}")
        self.every = every_n_steps
        self._t0: float | None = None
        self._last: tuple[float, int] | None = None
        self._fresh_log_r: float | None = None  # the last step that sampled fresh trajectories
        self.gfn = bool(gfn)  # False: no "mean log R" part (reward-model training)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.monotonic()
        self._last = (self._t0, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        by_source = outputs.get("by_source") if isinstance(outputs, dict) else None  # the step's pooled means (rank 0)
        fresh = (by_source or {}).get("train/fresh/avg_log_reward_unscaled")
        if fresh is not None:
            self._fresh_log_r = fresh
        step = trainer.global_step
        if trainer.global_rank != 0 or step == 0 or step % self.every or self._last is None or self._last[1] == step:
            return
        now = time.monotonic()
        per_step = (now - self._last[0]) / max(step - self._last[1], 1)
        self._last = (now, step)
        metrics = trainer.callback_metrics
        loss, log_r = metrics.get("train/loss"), self._fresh_log_r
        fmt = lambda v: "n/a" if v is None else f"{float(v):.2f}"  # noqa: E731
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        elapsed = now - self._t0
        rest = ""
        if trainer.max_steps and trainer.max_steps > step:  # at the recent pace
            rest = f", about {duration(per_step * (trainer.max_steps - step))} to go"
        # a GFlowNet run also says how its fresh samples score; a reward model's training has none
        reward = f" | mean log R (fresh) {fmt(log_r)}" if log_r is not None or self.gfn else ""
        logging.getLogger("gflownet.progress").info(
            "step %d%s | loss %s%s | %.2f s/step | %s elapsed%s",
            step, total, fmt(loss), reward, per_step, duration(elapsed), rest,
        )
