"""The real training step at 1 and 2 ranks for each reward placement (``gfn.reward_placement``), one
table with ratios. Issue 29.

    python bench/bench_placement.py                          # the offline default (SmolLM2 sampler, answerer, judge)
    python bench/bench_placement.py --rounds 1 --steps 4     # shorter
    python bench/bench_placement.py --overrides reward=leak_margin loss=tb

Each variant is ``train.py`` in its own run (``trainer=ddp_sim`` for 2 ranks: 2 gloo processes),
one thread per rank (``OMP_NUM_THREADS=1``), fresh trajectories every step
(``gfn.use_buffer_prob=0``), no validation, no checkpoints. Every rank writes each step's wall time,
from the batch's start to the optimizer's update (``StepTrace``'s ``seconds``), and its peak
resident memory. The step time of a run is the median over its steps after the first two (warm-up)
of the slowest rank's time; the variants run in alternating order, ``--rounds`` times, and the
table reports the median over rounds and each placement's ratio of 2 ranks to 1 rank.

Per-rank batch is fixed (each rank takes ``data.batch_size`` records), as in data-parallel training:
under ``rank0`` rank 0 rewards both ranks' trajectories while rank 1 waits, so the step grows by
one reward per added rank; under ``per_rank`` each rank rewards its own. Run it alone: the machine
needs one free core per rank, or the 2-rank runs measure contention instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEMENTS = ("rank0", "per_rank")


def run_variant(ranks: int, placement: str, steps: int, overrides: list[str], workdir: Path) -> dict:
    """One train.py run; its per-step times (slowest rank) and each rank's peak RSS."""
    out = workdir / f"{placement}-{ranks}-{time.monotonic_ns()}"
    cmd = [sys.executable, str(ROOT / "train.py"), "logger=none", "callbacks=none", "final_probe_samples=0",
           f"trainer.max_steps={steps}", "+trainer.limit_val_batches=0", "gfn.use_buffer_prob=0.0",
           f"gfn.reward_placement={placement}", "+callbacks.step_trace._target_=gflownet.core.callbacks.StepTrace",
           f"+callbacks.step_trace.dirpath={out}/trace", f"hydra.run.dir={out}", "run_name=bench_placement",
           *(["trainer=ddp_sim"] if ranks == 2 else []), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=3600)
    if proc.returncode != 0:
        sys.exit(f"{placement} at {ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
    traces = []
    for r in range(ranks):
        rows = [json.loads(line) for line in open(out / "trace" / f"rank{r}.jsonl")]
        traces.append(rows)
    per_step = [max(rows[i]["seconds"] for rows in [[e for e in t if e["event"] == "step"] for t in traces])
                for i in range(steps)]
    peaks = [next(e for e in t if e["event"] == "end")["peak_rss_mib"] for t in traces]
    return {"steps": per_step, "step": statistics.median(per_step[2:] if len(per_step) > 2 else per_step), "peak": peaks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="training steps per run (the first two are warm-up)")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides for every variant")
    args = ap.parse_args()
    variants = [(ranks, p) for p in PLACEMENTS for ranks in (1, 2)]
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    peaks: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for ranks, placement in order:
                got = run_variant(ranks, placement, args.steps, args.overrides, Path(tmp))
                times[(ranks, placement)].append(got["step"])
                peaks[(ranks, placement)] = got["peak"]
                print(f"round {rnd + 1}: {placement:8s} {ranks} rank(s): step {got['step']:.2f} s "
                      f"(steps {', '.join(f'{s:.2f}' for s in got['steps'])}); peak RSS per rank "
                      f"{', '.join(f'{p:.0f}' for p in got['peak'])} MiB", flush=True)
    print(f"\noverrides: {' '.join(args.overrides) or '(the offline default)'}; {args.steps} steps per run, "
          f"{args.rounds} round(s), one thread per rank")
    print("| placement | step, 1 rank (s) | step, 2 ranks (s) | 2 ranks / 1 rank | peak RSS per rank at 2 ranks (MiB) |")
    print("|---|---|---|---|---|")
    for placement in PLACEMENTS:
        one, two = statistics.median(times[(1, placement)]), statistics.median(times[(2, placement)])
        print(f"| {placement} | {one:.2f} | {two:.2f} | {two / one:.2f}x | "
              f"{' / '.join(f'{p:.0f}' for p in peaks[(2, placement)])} |")


if __name__ == "__main__":
    main()
