"""Gradient clipping: log Z apart from the sampler (this project) against one joint norm (Lightning's default).

    python bench/bench_clipping.py                     # toy: 2 seeds x SubTB/TB; real: 30 contradiction steps
    python bench/bench_clipping.py --seeds 0 --real-steps 0

* separate: ``LMGFlowNet.configure_gradient_clipping`` clips the sampler's gradient and log Z's
  gradient each to ``trainer.gradient_clip_val``.
* joint: Lightning's default, one norm over every trainable parameter; log Z's gradient (its
  balance residual times layer-normed features of norm sqrt(hidden size)) then sets the factor
  the sampler's gradient is scaled by.

Known target (``task=toy`` with ``trainer.gradient_clip_val=1.0``; the toy config itself does
not clip): the exact L1 distance to R/Z at steps 199, 399 and 799, both variants run in this
process one after the other for each seed and loss.

Real run (the offline contradiction default, ``--real-steps`` steps, clip 1.0): the sampler's and
log Z's gradient norms per step, from which the factor each design scales the sampler's gradient
by follows: separate min(1, c / |g_s|), joint min(1, c / sqrt(|g_s|^2 + |g_z|^2)). Both variants
are run and their mean terminal log R over the last 10 steps reported.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def compose(overrides: list[str], output_dir: Path):
    from gflownet.runner import compose_config

    return compose_config(overrides, output_dir)


def joint_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
    """Lightning's clipping (one norm over all parameters), logging the same two norms."""
    import torch

    groups = optimizer.param_groups
    for name, params in (("sampler", groups[0]["params"]), ("log_z", [p for g in groups[1:] for p in g["params"]])):
        grads = [p.grad.float() for p in params if p.grad is not None]
        if grads:
            self.log(f"grad_norm/{name}", torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])), batch_size=1)
    self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)


def run(variant: str, overrides: list[str], workdir: Path) -> list[dict]:
    from gflownet.core.module import LMGFlowNet
    from gflownet.runner import run_training

    separate = LMGFlowNet.configure_gradient_clipping
    out = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{variant}-"))
    try:
        if variant == "joint":
            LMGFlowNet.configure_gradient_clipping = joint_clipping
        run_training(compose(overrides, out))
    finally:
        LMGFlowNet.configure_gradient_clipping = separate
    return list(csv.DictReader(open(next(out.glob("csv/version_*/metrics.csv")))))


def column(rows: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--losses", nargs="+", default=["subtb", "tb"])
    ap.add_argument("--real-steps", type=int, default=30)
    ap.add_argument("--clip", type=float, default=1.0)
    args = ap.parse_args()
    from gflownet.runner import quiet_libraries

    quiet_libraries()
    workdir = Path(tempfile.mkdtemp(prefix="bench-clipping-"))
    common = ["logger=csv", "callbacks=none", "trainer.enable_progress_bar=false", f"trainer.gradient_clip_val={args.clip}"]

    print(f"## Known target, clip {args.clip}: L1 to R/Z (lower is better)\n")
    print("| loss | seed | variant | step 199 | step 399 | step 799 | joint factor on the sampler, median (min) |")
    print("|---|---|---|---|---|---|---|")
    finals: dict[tuple[str, str], list[float]] = {}
    for loss in args.losses:
        for seed in args.seeds:
            order = ("separate", "joint") if seed % 2 == 0 else ("joint", "separate")  # alternate who goes first
            for variant in order:
                rows = run(variant, ["task=toy", f"loss={loss}", f"seed={seed}", *common], workdir)
                l1 = column(rows, "val/l1_to_target")
                s, z = column(rows, "grad_norm/sampler"), column(rows, "grad_norm/log_z")
                factors = [min(1.0, args.clip / (s[k] ** 2 + z[k] ** 2) ** 0.5) / min(1.0, args.clip / max(s[k], 1e-12))
                           for k in s if k in z]
                finals.setdefault((loss, variant), []).append(l1[799])
                print(f"| {loss} | {seed} | {variant} | {l1[199]:.3f} | {l1[399]:.3f} | {l1[799]:.3f} | "
                      f"{statistics.median(factors):.3f} ({min(factors):.3g}) |", flush=True)
    for loss in args.losses:
        sep, joint = statistics.mean(finals[(loss, "separate")]), statistics.mean(finals[(loss, "joint")])
        print(f"\n{loss}: mean L1 at step 799, separate {sep:.3f}, joint {joint:.3f}; joint / separate = {joint / sep:.2f}")

    if args.real_steps > 0:
        print(f"\n## Offline contradiction default, {args.real_steps} steps, clip {args.clip}\n")
        real = [f"trainer.max_steps={args.real_steps}", "+trainer.limit_val_batches=0", "final_probe_samples=0", *common]
        print("| variant | sampler grad norm, median | log Z grad norm, median | joint factor on the sampler, median (min) "
              "| mean log R, last 10 steps |")
        print("|---|---|---|---|---|")
        for variant in ("separate", "joint"):
            rows = run(variant, real, workdir)
            s, z = column(rows, "grad_norm/sampler"), column(rows, "grad_norm/log_z")
            factors = [min(1.0, args.clip / (s[k] ** 2 + z[k] ** 2) ** 0.5) / min(1.0, args.clip / max(s[k], 1e-12)) for k in s]
            r = column(rows, "train/fresh/avg_log_reward_unscaled")
            last = [r[k] for k in sorted(r)[-10:]]
            print(f"| {variant} | {statistics.median(s.values()):.3g} | {statistics.median(z.values()):.3g} | "
                  f"{statistics.median(factors):.3f} ({min(factors):.3g}) | {statistics.mean(last):.2f} |", flush=True)
        print("\n(joint factor: how much one joint norm scales the sampler's gradient relative to clipping it alone)")


if __name__ == "__main__":
    main()
