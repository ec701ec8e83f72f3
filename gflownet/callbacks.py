"""Callbacks beyond Lightning's own.

``StepTrace`` writes, per rank, one JSON line per training step with what that rank did
(``ContradictionGFNTask.step_info``: its records, the prompts it scored its trajectories after,
the prompts and edits rank 0 computed their rewards for, the schedules), and at the end of
fitting a fingerprint of its trainable weights and whether it held the reward models. It is
how the DDP and resume tests see inside each process, and a way to debug a run:

    python train.py trainer=ddp_sim +callbacks.step_trace._target_=gflownet.callbacks.StepTrace \
        +callbacks.step_trace.dirpath=trace
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl


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

    def _write(self, trainer, record: dict) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info = getattr(pl_module, "step_info", None)
        if info:
            self._write(trainer, {"event": "step", **info, "global_step_after": trainer.global_step})

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, {
            "event": "end", "rank": trainer.global_rank, "global_step": trainer.global_step,
            "weights": weights_fingerprint(pl_module),
            "reward_models_loaded": getattr(pl_module, "reward_fn", None) is not None,
            "embedder_loaded": getattr(pl_module, "embedder", None) is not None,
        })
