"""API calls per training step of the prompt-inversion task against a real OpenAI-compatible server,
with and without the reward cache.

    WITH_LLAMA_SERVER=1 bash scripts/setup.sh        # once: llama-cpp-python's server
    python bench/bench_inversion_api.py              # starts the server on a free loopback port
    python bench/bench_inversion_api.py --steps 8

Three runs of the same training job (task=prompt_inversion, reward/backend=openai, the packaged
SmolLM2 served by llama-cpp-python, same seed), one after the other in this process:

* ``no cache``: every scored input is a request;
* ``cache, cold``: a new cache file; repeats within the run are answered from it;
* ``cache, warm``: the same job again on that file (a rerun or a resume): the same seed draws the
  same inputs, so they are all in the cache.

It prints requests per step, the cache hit rate and seconds per step for each, and the ratios.
Validation is off, so the counts are the training steps' own.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def run(url: str, steps: int, cache: str | None, out: Path, args) -> dict:
    from gflownet.runner import compose_config, run_training

    overrides = ["task=prompt_inversion", "reward/backend=openai", f"reward.backend.base_url={url}", "reward.backend.api_key=local",
                 f"reward.backend.cache={cache if cache else 'null'}", "logger=csv", "callbacks=none", f"trainer.max_steps={steps}",
                 "trainer.val_check_interval=1000", "+trainer.limit_val_batches=0", f"gfn.n_samples={args.n_samples}",
                 f"task.max_len={args.max_len}", "final_probe_samples=0", "trainer.enable_progress_bar=false", "seed=7"]
    cfg = compose_config(overrides, out)
    t0 = time.perf_counter()
    run_training(cfg)
    seconds = time.perf_counter() - t0
    rows = list(csv.DictReader(open(next(out.glob("csv/version_*/metrics.csv")))))
    last = [r for r in rows if r.get("reward/requests")][-1]
    requests = float(last["reward/requests"]) - 1  # less the start-up check
    fresh = sum(1 for r in rows if r.get("train/fresh/avg_log_reward_unscaled"))
    hits = float(last.get("reward/cache_hits") or 0)
    misses = float(last.get("reward/cache_misses") or requests)
    return {"requests": requests, "per_step": requests / steps, "fresh_steps": fresh, "hit_rate": hits / max(1.0, hits + misses),
            "seconds_per_step": seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=12)
    args = parser.parse_args()
    from tests.conftest import LlamaServer

    work = Path(tempfile.mkdtemp(prefix="bench-inversion-"))
    server = LlamaServer(work)
    try:
        cache = str(work / "cache.sqlite")
        results = {"no cache": run(server.url, args.steps, None, work / "a", args),
                   "cache, cold": run(server.url, args.steps, cache, work / "b", args),
                   "cache, warm": run(server.url, args.steps, cache, work / "c", args)}
    finally:
        server.stop()
    base = results["no cache"]
    print(f"\n{args.steps} steps, {args.n_samples} inputs of at most {args.max_len} tokens per step, SmolLM2 served by llama-cpp-python")
    print("| run | API requests | per step | fresh steps | cache hit rate | s/step | requests vs no cache |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["requests"] / base["requests"] if base["requests"] else float("nan")
        print(f"| {name} | {r['requests']:.0f} | {r['per_step']:.1f} | {r['fresh_steps']} | {r['hit_rate']:.2f} | "
              f"{r['seconds_per_step']:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
