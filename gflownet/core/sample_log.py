"""The sample log (``gfn.sample_log``): every freshly scored sample as a JSON line, on rank 0.

Training data for a reward model (``scripts/train_reward_model.py``). ``gfn.sample_log_states:
terminal`` (default) writes one row per trajectory: the step, the stage (train, val, sanity for
Lightning's sanity check, or probe for samples drawn outside fit), the prompt, the sample
(``sample``), the record's context fields, the terminal log R (unscaled), and the reward's
components and texts. ``all`` writes one row per scored state instead (``sample`` is the state's
text, ``state`` its length, ``terminal`` whether the sample ended there), with that state's log R
and the reward's per-state values (``RewardOutput.per_state``, e.g. log C of every prefix);
components and texts are on terminal rows only. A resumed run first drops the rows that it redoes
(``trim``), so each step's rows appear once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from gflownet.core.protocols import RewardOutput
from gflownet.core.sampling import state_text

log = logging.getLogger(__name__)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class SampleLog:
    def __init__(self, path: str, states: str, termination_text: str, tokenizer):
        if states not in {"terminal", "all"}:
            raise ValueError(f"gfn.sample_log_states={states}: use terminal (one row per sample) or all")
        self.spec, self.states, self.termination_text, self.tokenizer = path, states, termination_text, tokenizer

    def path(self, run_dir: str | Path | None) -> Path:
        """The file: ``gfn.sample_log`` as given when absolute, else inside the run directory."""
        path = Path(self.spec).expanduser()
        if not path.is_absolute() and run_dir is not None:
            path = Path(run_dir) / path
        return path

    def write(self, path: Path, step: int, stage: str, prompts: list[str], samples: list[str], context: dict[str, list],
              lengths: torch.Tensor, out: RewardOutput, ids: torch.Tensor, scored: torch.Tensor) -> None:
        """Append the rows of B freshly scored trajectories (one per trajectory, or per scored state)."""
        B = lengths.numel()
        log_r = out.log_r.float().cpu()
        per_state = {k: v.float().cpu() for k, v in out.per_state.items()}
        if self.states == "all":
            states = [scored[b].nonzero().flatten().tolist() for b in range(B)]
        else:
            states = [[int(lengths[b])] for b in range(B)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for b in range(B):
                base = {"step": step, "stage": stage, "prompt": prompts[b], **{k: v[b] for k, v in context.items()}}
                for t in states[b]:
                    is_end = t == int(lengths[b])
                    text = samples[b] if is_end else state_text(self.tokenizer, ids[b, :t].tolist(), self.termination_text)
                    row = {**base, "sample": text, "log_r": _finite_or_none(float(log_r[b, t]))}
                    if self.states == "all":
                        row.update(state=t, terminal=is_end)
                        row.update({k: _finite_or_none(float(v[b, t])) for k, v in per_state.items()})
                    if is_end:
                        row["length"] = int(lengths[b])
                        row.update({k: _finite_or_none(float(v[b])) for k, v in out.components.items()})
                        row.update({k: v[b] for k, v in out.texts.items()})
                    f.write(json.dumps(row, default=str) + "\n")
            f.flush()

    def trim(self, path: Path, step: int) -> None:
        """When a fit resumes from the checkpoint of ``step``: drop the rows that the resumed run writes
        again, so that no step's rows appear twice: training rows of ``step`` and later (the checkpoint
        of step N holds the training steps before N), and validation, sanity and probe rows after
        ``step`` (step N's validation ran after its checkpoint was saved and is not repeated). A last
        line cut short by the interruption is dropped; other lines that are not JSON are kept. The
        file is rewritten beside itself and renamed into place."""
        if not path.is_file():
            return
        dropped = torn = 0
        tmp = path.with_name(path.name + ".trim")
        with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if not line.endswith("\n"):  # the interrupted run's last, partial write
                        torn += 1
                        continue
                    dst.write(line)
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and (
                        row["step"] >= step if row.get("stage") == "train" else row["step"] > step):
                    dropped += 1
                else:
                    dst.write(line if line.endswith("\n") else line + "\n")
        os.replace(tmp, path)
        if dropped or torn:
            log.info("sample log %s: dropped %d rows of steps this run resumes from step %d and redoes%s", path,
                     dropped, step, f", and {torn} cut-short line" if torn else "")
