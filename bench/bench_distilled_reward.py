"""The SubTB step with the contradiction reward at every scored state, against the same step with a
distilled reward model for the prefixes (``reward=contradiction_distilled``). Issue 16, item 3.

    python bench/bench_distilled_reward.py --checkpoint RM_RUN/checkpoints/last.ckpt
    python bench/bench_distilled_reward.py --checkpoint ... --rounds 6 --records 2

One process, the offline default (SmolLM2-135M sampler and answerer, offline judge, SubTB scoring
every ``loss.score_every``-th prefix). Each round samples one batch of questions (exploration off),
then scores the *same* trajectories with both rewards, in alternating order, and runs the loss and
backward pass on each: the reward's time and the whole step's (sampling included) are compared on
equal work, under the same machine drift. Besides time, it reports how far the learned log C of
the prefixes is from the answerer and judge's on those trajectories (the error the SubTB target
inherits). ``--overrides loss.score_every=1`` scores every prefix, as experiment=full_scale does.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the distilled reward model (checkpoints/last.ckpt)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--records", type=int, default=1, help="edit records per step (data.batch_size)")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides")
    args = ap.parse_args()

    import torch

    from gflownet.runner import build_module, quiet_libraries
    from tests.conftest import compose

    quiet_libraries()
    out = Path("/tmp/bench_distilled_reward")
    cfg = compose(["reward=contradiction_distilled", f"reward.checkpoint={args.checkpoint}", "logger=none",
                   f"data.batch_size={args.records}", *args.overrides], output_dir=out)
    import hydra

    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    module = build_module(cfg)
    module.build_reward()
    distilled = module.reward
    real = distilled.terminal  # the contradiction reward (answerer + judge + likelihood), given every scored state
    n = int(cfg.gfn.n_samples)
    records = list(dm.train_records)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.0)  # gradients computed, not applied

    def step(reward, batch, prompts, traj) -> tuple[float, float, object]:
        module.reward = reward
        t0 = time.perf_counter()
        rollout = module._rewarded(batch, prompts, n, traj, terminal_only=False, store=False, collective=False)
        t1 = time.perf_counter()
        ids, mask = module.encode(prompts, n)
        loss = module.gfn_loss(ids, mask, rollout, 1.0)
        loss.backward()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1, rollout

    times = {"real": {"sample": [], "reward": [], "loss": []}, "distilled": {"sample": [], "reward": [], "loss": []}}
    errors, pairs = [], []
    for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
        batch = [records[(r * args.records + i) % len(records)] for i in range(args.records)]
        prompts = module.prompts_for(batch)
        t0 = time.perf_counter()
        traj = module.sample(prompts, n, explore=False)
        sample_s = time.perf_counter() - t0
        order = ("real", "distilled") if r % 2 == 0 else ("distilled", "real")
        rolls = {}
        for name in order:
            reward_s, loss_s, rolls[name] = step(real if name == "real" else distilled, batch, prompts, traj)
            if r:
                times[name]["sample"].append(sample_s)
                times[name]["reward"].append(reward_s)
                times[name]["loss"].append(loss_s)
        if r:
            lengths = rolls["real"].lengths.cpu()
            scored = rolls["real"].scored.cpu().clone()
            scored[torch.arange(len(lengths)), lengths] = False  # the prefixes: where the two rewards differ
            # both rewards add the same likelihood term: take it out, leaving log C and its learned estimate
            weight, likelihood = real.terms["likelihood"]
            lik = weight * likelihood(prompts=rolls["real"].prompts, sample_ids=traj.sample_ids.cpu(), lengths=lengths,
                                      scored=rolls["real"].scored.cpu(), step=0).log_r.cpu()
            a, b = (rolls["real"].log_r.cpu() - lik)[scored], (rolls["distilled"].log_r.cpu() - lik)[scored]
            errors += (b - a).abs().tolist()
            pairs += list(zip(a.tolist(), b.tolist()))
        print(f"round {r}: {int(traj.lengths.float().mean())} tokens/sample, "
              f"{int(rolls['real'].scored.sum())} scored states", flush=True)

    med = {k: {p: statistics.median(v) for p, v in d.items()} for k, d in times.items()}
    print(f"\nSubTB step, offline default, {args.records} record(s) x {n} samples, {args.rounds} rounds (medians, s)")
    print("| reward | sample | reward | loss+backward | step |")
    print("|---|---|---|---|---|")
    for name in ("real", "distilled"):
        m = med[name]
        print(f"| {name} | {m['sample']:.2f} | {m['reward']:.2f} | {m['loss']:.2f} | {sum(m.values()):.2f} |")
    ratio_r = med["real"]["reward"] / med["distilled"]["reward"]
    ratio_s = sum(med["real"].values()) / sum(med["distilled"].values())
    print(f"reward time real/distilled: {ratio_r:.2f}x; step time real/distilled: {ratio_s:.2f}x")
    if pairs:
        real_v = torch.tensor([p[0] for p in pairs])
        dist_v = torch.tensor([p[1] for p in pairs])
        corr = float(torch.corrcoef(torch.stack([real_v, dist_v]))[0, 1]) if len(pairs) > 2 else float("nan")
        print(f"prefix log C, learned vs answerer+judge on {len(pairs)} prefixes: mean |error| {statistics.mean(errors):.2f} "
              f"nats, median {statistics.median(errors):.2f}, pearson {corr:.3f}; real log C mean {float(real_v.mean()):.2f}, "
              f"learned mean {float(dist_v.mean()):.2f}")


if __name__ == "__main__":
    main()
