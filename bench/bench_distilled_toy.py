"""Does a learned reward for the prefixes keep the known target? (issue 16, item 3)

    python bench/bench_distilled_toy.py                      # 3 seeds x 3 variants, 800 steps each
    python bench/bench_distilled_toy.py --seeds 42 --steps 400

On the known-target task (84 sequences, fixed random log-rewards, target R/Z known exactly):

1. ``exact``: SubTB with the true reward at every scored state (the task's default), logging its
   samples (``gfn.sample_log``);
2. a reward model (frozen MiniLM, per-layer attention readout, regression) trained on the first
   seed's logged samples, split by sequence; its held-out correlation, and its correlation with the
   true table over all 84 sequences;
3. ``learned_prefixes``: SubTB with the true reward for complete samples and the reward model for
   the prefixes (``rewards.combine.ByState``);
4. ``tb``: trajectory balance, terminal rewards only (what you get with no prefix reward at all).

Each variant's final exact L1 distance to R/Z and log Z error, per seed, and their means.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

COMMON = ["task=toy", "logger=csv", "callbacks=none", "trainer.enable_progress_bar=false"]


def final_metrics(run_dir: Path) -> dict:
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    last = [r for r in rows if r.get("val/l1_to_target")][-1]
    return {"step": int(last["step"]), "l1": float(last["val/l1_to_target"]),
            "log_z_error": float(last["val/log_z_error"]) if last.get("val/log_z_error") else float("nan")}


def train(overrides: list[str], out: Path, reward=None) -> dict:
    from omegaconf import OmegaConf, open_dict

    from gflownet.runner import run_training
    from tests.conftest import compose

    cfg = compose([*COMMON, *overrides], output_dir=out)
    if reward is not None:
        with open_dict(cfg):
            terminal = OmegaConf.to_container(cfg.reward, resolve=True)
            cfg.reward = OmegaConf.create({"_target_": "gflownet.rewards.combine.by_state", "_partial_": True,
                                           "_recursive_": False, "terminal": terminal, "intermediate": reward})
    start = time.perf_counter()
    run_training(cfg)
    return {**final_metrics(out), "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--rm-steps", type=int, default=300)
    ap.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--rm-overrides", nargs="*", default=[], help="scripts/train_reward_model.py overrides, e.g. "
                    "backbone.name_or_path=packaged:toy-llama backbone.train=full readout=final_token")
    ap.add_argument("--skip-exact", action="store_true", help="reuse the exact runs' sample logs and metrics in --out")
    args = ap.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="distilled_toy_"))
    steps = [f"trainer.max_steps={args.steps}", f"scheduler.decay_steps={args.steps}"]
    results: dict[str, list[dict]] = {"exact": [], "learned_prefixes": [], "tb": []}

    for seed in args.seeds:
        if args.skip_exact:
            results["exact"].append({**final_metrics(work / f"exact{seed}"), "seconds": float("nan")})
        else:
            results["exact"].append(train([*steps, f"seed={seed}", "gfn.sample_log=samples.jsonl"], work / f"exact{seed}"))
        print("exact", seed, results["exact"][-1], flush=True)

    # the reward model, from the first seed's logged training samples
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_reward_model", ROOT / "scripts" / "train_reward_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from tests.conftest import compose

    rm_dir = work / ("rm" if not args.rm_overrides else "rm_" + hashlib.sha1(" ".join(args.rm_overrides).encode()).hexdigest()[:8])
    rm_cfg = compose([f"data.path={work / f'exact{args.seeds[0]}' / 'samples.jsonl'}", "data.target_field=log_r",
                      "data.template='{sample}'", "data.group_field=sample", "data.filters={stage:train}",
                      f"trainer.max_steps={args.rm_steps}", "trainer.val_check_interval=100", "logger=none",
                      "trainer.enable_progress_bar=false", *args.rm_overrides], rm_dir, "reward_model")
    rm = script.run(rm_cfg)
    print("reward model", json.dumps(rm["val"]), json.dumps(rm["data"]), flush=True)

    import torch

    from gflownet.reward_models.model import load_reward_model
    from gflownet.tasks.toy.problem import ToyProblem, toy_tokenizer

    problem = ToyProblem(4, 1, 3, 1.5, 0)
    tok = toy_tokenizer(4)
    ids, lengths = problem.batch_of_all()
    texts = [tok.decode(ids[b, : int(lengths[b])].tolist()).strip() + "?" for b in range(len(ids))]
    pred = load_reward_model(rm["last_checkpoint"], str(ROOT / "models")).score(texts).double()
    true = problem.log_r_tensor().double()
    all_corr = float(torch.corrcoef(torch.stack([pred, true]))[0, 1])
    all_rmse = float(((pred - true) ** 2).mean().sqrt())
    print(f"reward model over all 84 sequences: pearson {all_corr:.3f}, rmse {all_rmse:.3f} (std of the table {float(true.std()):.3f})")

    learned = {"_target_": "gflownet.rewards.learned.learned_reward", "checkpoint": rm["last_checkpoint"], "template": "{question}"}
    for seed in args.seeds:
        results["learned_prefixes"].append(train([*steps, f"seed={seed}"], rm_dir / f"learned{seed}", reward=learned))
        print("learned_prefixes", seed, results["learned_prefixes"][-1], flush=True)
        if (work / f"tb{seed}").is_dir():  # the same for every reward model
            results["tb"].append({**final_metrics(work / f"tb{seed}"), "seconds": float("nan")})
        else:
            results["tb"].append(train([*steps, f"seed={seed}", "loss=tb"], work / f"tb{seed}"))
        print("tb", seed, results["tb"][-1], flush=True)

    print(f"\nknown target, {args.steps} steps, seeds {args.seeds}; reward model: held-out pearson "
          f"{rm['val'].get('pearson', float('nan')):.3f}, all-84 pearson {all_corr:.3f} ({' '.join(args.rm_overrides) or 'defaults'})")
    print("| variant | L1 to R/Z per seed | mean L1 | mean log Z error | s/run |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        l1s = ", ".join(f"{r['l1']:.3f}" for r in runs)
        print(f"| {name} | {l1s} | {statistics.mean(r['l1'] for r in runs):.3f} | "
              f"{statistics.mean(r['log_z_error'] for r in runs):+.3f} | {statistics.mean(r['seconds'] for r in runs):.0f} |")
    print(f"(work directory: {work})")


if __name__ == "__main__":
    main()
