"""The training step with the judge-free leak reward (``reward=leak_margin``) beside the same step with the
answerer-plus-judge reward (``reward=contradiction``): same trajectories, alternating. Issue 27, item 1.

    python bench/bench_leak_reward.py                              # SubTB (the offline default's sparse scoring)
    python bench/bench_leak_reward.py --overrides loss=tb          # TB: terminal states only
    python bench/bench_leak_reward.py --rounds 6 --records 2 --overrides answerer/edit=in_context

One process, the offline default (SmolLM2-135M sampler and answerer). Each round samples one batch
of questions (exploration off), then scores the *same* trajectories with both rewards in
alternating order and runs the loss and backward pass on each, so both rewards are timed on equal
work under the same machine drift (this machine's speed drifts 20-40% between minutes). Reports
medians of the sampling, the reward call, the loss with backward, and the whole step, and the
ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REWARDS = ("contradiction", "leak_margin")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--records", type=int, default=1, help="edit records per step (data.batch_size)")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides, for both rewards")
    args = ap.parse_args()

    import hydra
    import torch

    from gflownet.runner import build_module, quiet_libraries
    from tests.conftest import compose

    quiet_libraries()
    torch.manual_seed(0)
    modules = {}
    for name in REWARDS:
        cfg = compose([f"reward={name}", "logger=none", "gfn.diversity_embedder=null", f"data.batch_size={args.records}",
                       *args.overrides], output_dir=Path("/tmp/bench_leak_reward") / name)
        modules[name] = build_module(cfg)
        modules[name].build_reward()
        modules[name].log_z_ready = True  # no first-batch estimate: both steps start from the same log Z
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    records = list(dm.train_records)
    n = int(cfg.gfn.n_samples)
    sampler = modules["contradiction"]
    other = modules["leak_margin"]
    other.sampler.load_state_dict(sampler.sampler.state_dict())  # one policy: the untrained LoRA of the first

    def step(module, batch, prompts, traj) -> tuple[float, float]:
        t0 = time.perf_counter()
        rollout = module._rewarded(batch, prompts, n, traj, terminal_only=False, store=False, collective=False)
        t1 = time.perf_counter()
        ids, mask = module.encode(prompts, n)
        module.gfn_loss(ids, mask, rollout, 1.0).backward()
        module.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1

    times = {k: {"sample": [], "reward": [], "loss": []} for k in REWARDS}
    scored_states = []
    for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
        batch = [records[(r * args.records + i) % len(records)] for i in range(args.records)]
        prompts = sampler.prompts_for(batch)
        other.prompts_for(batch)
        sampler.rng.manual_seed(r)
        t0 = time.perf_counter()
        traj = sampler.sample(prompts, n, explore=False)
        sample_s = time.perf_counter() - t0
        order = REWARDS if r % 2 == 0 else REWARDS[::-1]
        for name in order:
            reward_s, loss_s = step(modules[name], batch, prompts, traj)
            if r:
                times[name]["sample"].append(sample_s)
                times[name]["reward"].append(reward_s)
                times[name]["loss"].append(loss_s)
        if r:
            scored = sampler.loss.scored_states(traj.lengths.cpu(), sampler.space.min_len)
            scored_states.append(int(scored.sum()))
            print(f"round {r}: {float(traj.lengths.float().mean()):.1f} tokens/sample, {scored_states[-1]} scored states",
                  flush=True)

    med = {k: {p: statistics.median(v) for p, v in d.items()} for k, d in times.items()}
    loss_name = type(sampler.loss).__name__
    print(f"\n{loss_name} step, offline default, {args.records} record(s) x {n} samples, {args.rounds} rounds "
          f"(medians, s; {statistics.median(scored_states)} scored states per step); overrides: {args.overrides or 'none'}")
    print("| reward | sample | reward | loss+backward | step |")
    print("|---|---|---|---|---|")
    for name in REWARDS:
        m = med[name]
        print(f"| {name} | {m['sample']:.2f} | {m['reward']:.2f} | {m['loss']:.2f} | {sum(m.values()):.2f} |")
    a, b = med["contradiction"], med["leak_margin"]
    print(f"reward time contradiction/leak_margin: {a['reward'] / b['reward']:.2f}x; "
          f"step time: {sum(a.values()) / sum(b.values()):.2f}x")


if __name__ == "__main__":
    main()
