"""The spread of a run's validation metrics over seeds: how far a bound in a test or a claim in the
results may sit from one run's value.

    python scripts/seed_spread.py --seeds 0 1 2 3 4 5 42 --threads 1 -- experiment=inversion_toy
    python scripts/seed_spread.py --seeds 0 1 --threads 2 --metrics val/kl_exact val/log_z_error -- experiment=inversion_toy

Each seed is one `python train.py OVERRIDES seed=S logger=csv callbacks=none` run in this process,
under $TMPDIR/seed_spread/ (or --out). It prints each validation's metrics per seed, then the final
values' range. --threads sets torch's intra-op threads: the thread count changes the order of the sums
and with it every sampled trajectory, so a run on a 2-core CI machine is another draw than on 1 core.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--metrics", nargs="+", default=["val/kl_exact", "val/l1_exact", "val/log_z_error"])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "seed_spread")
    ap.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = ap.parse_args(argv)

    import torch

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _spread(args)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (a test) keeps its own


def _version(path: Path) -> int:
    return int(path.parent.name.rsplit("_", 1)[1])  # csv/version_N: the latest run of a repeated seed


def _spread(args) -> int:
    import torch

    from gflownet.runner import compose_config, run_training

    finals: dict[str, list[float]] = {m: [] for m in args.metrics}
    for seed in args.seeds:
        out = args.out / f"threads{torch.get_num_threads()}_seed{seed}"
        start = time.time()
        run_training(compose_config([*args.overrides, f"seed={seed}", "logger=csv", "callbacks=none",
                                     "trainer.enable_progress_bar=false"], out))
        rows = list(csv.DictReader(max(out.glob("csv/version_*/metrics.csv"), key=_version).read_text().splitlines()))
        print(f"seed {seed} ({torch.get_num_threads()} threads, {time.time() - start:.0f}s)")
        for m in args.metrics:
            logged = [r for r in rows if r.get(m)]
            if not logged:
                print(f"seed {seed}: no validation row logs {m} (--metrics takes the run's metric names)", file=sys.stderr)
                return 1
            print(f"  {m}: " + " ".join(f"{r['step']}:{float(r[m]):+.3f}" for r in logged))
            finals[m].append(float(logged[-1][m]))
    print(f"final values over {len(args.seeds)} seeds:")
    for m, vals in finals.items():
        print(f"  {m}: min {min(vals):+.3f}  max {max(vals):+.3f}  max |.| {max(map(abs, vals)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
