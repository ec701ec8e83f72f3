"""Training matches R/Z on a problem small enough to enumerate (docs/design.md, "The GFlowNet").

The known-target task (``task=toy``: 84 sequences of 1-3 words then "?", fixed random log-rewards)
is trained by the same module, Lightning Trainer, replay buffer, log Z initialisation, reward
temperature and rank-0 exchange as every task; its validation logs the exact L1 distance between
the sampler's distribution (every sequence scored) and R/Z.
"""

import csv

import pytest
import torch

from gflownet.runner import run_training
from gflownet.tasks.toy.problem import ToyProblem

COMMON = ["task=toy", "logger=csv", "callbacks=none", "trainer.enable_progress_bar=false"]


def l1_curve(run_dir):
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    return [(int(r["step"]), float(r["val/l1_to_target"])) for r in rows if r.get("val/l1_to_target")], rows


def test_untrained_sampler_is_far_from_the_target_and_distributions_sum_to_one(compose_cfg):
    from gflownet.runner import build_module

    module = build_module(compose_cfg(COMMON))
    problem = module.task.problem
    ids, lengths = problem.batch_of_all()
    log_p = module.sequence_log_prob(["<s>"] * len(ids), ids, lengths)
    assert float(log_p.double().exp().sum()) == pytest.approx(1.0, abs=1e-6)  # the enumeration is complete
    assert problem.l1(log_p) > 1.0
    assert float(problem.target.sum()) == pytest.approx(1.0)


# (name, overrides, steps, bound on every seed's final L1, bound on their mean); docs/results.md, "Known target:
# sparse scoring" has each setting's figures on seeds 42, 0, 1 and what was tried.
SETTINGS = {
    # every state scored (the toy's reward costs nothing): L1 0.003, 0.001, 0.004 at step 799
    "subtb": (["loss=subtb", "loss.score_every=1"], 800, 0.1, 0.1),
    # the offline default's sparse scoring (score_every 4: on 1-3 token sequences, state 1 and the terminal
    # one): exact (tests/test_losses.py, tabular) but slower on this network; 0.160, 0.133, 0.172 at step 799 of
    # an 800-step schedule, 0.069, 0.054, 0.151 at 1600 steps, under 0.001 on every seed at 2400
    "subtb_sparse": (["loss=subtb"], 2400, 0.1, 0.1),
    # 0.030, 0.077, 0.018 at step 799
    "tb": (["loss=tb"], 800, 0.2, 0.1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_training_matches_reward_distribution(name, tmp_path):
    """Three seeds (the config's 42, then 0 and 1) per setting; each run's final L1 and the mean must be
    within the setting's bounds, and log Z within 0.1 nats of the truth. Every run is far below the
    untrained sampler (1.1) and the broadcast control (1.16). The learning rate decays linearly over
    each run's own length (``scheduler.decay_steps``)."""
    from tests.conftest import compose

    overrides, steps, each, mean = SETTINGS[name]
    finals = []
    for seed in (42, 0, 1):
        cfg = compose([*COMMON, *overrides, f"seed={seed}", f"trainer.max_steps={steps}", f"scheduler.decay_steps={steps}"],
                      output_dir=tmp_path / f"run{seed}")
        assert cfg.gfn.use_buffer_prob > 0 and cfg.loss.logz_init == "auto"  # replay and log Z init are part of the proof
        run_training(cfg)
        curve, rows = l1_curve(tmp_path / f"run{seed}")
        assert curve[-1][0] == steps - 1 and curve[-1][1] <= each, (seed, curve)
        finals.append(curve[-1][1])
        hit = [float(r["buffer/hit_rate"]) for r in rows if r.get("buffer/hit_rate")]
        assert 0.1 < hit[-1] < 0.4  # a quarter of the steps replayed
        log_z_error = [float(r["val/log_z_error"]) for r in rows if r.get("val/log_z_error")]
        assert abs(log_z_error[-1]) < 0.1, (seed, log_z_error)  # the learned log Z is the true one
    print(f"{name}: L1 to R/Z at step {steps - 1} for seeds 42, 0, 1: {finals}")
    assert sum(finals) / len(finals) <= mean, finals


@pytest.mark.slow
def test_broadcast_reward_negative_control_does_not_learn(compose_cfg, tmp_path):
    """The original's bug: with the final reward at every scored state the target is never approached."""
    run_training(compose_cfg([*COMMON, "loss.root_flow=false", "reward.broadcast_terminal=true"]))
    curve, _ = l1_curve(tmp_path / "run")
    assert len(curve) == 16 and min(l1 for _, l1 in curve) > 0.5, curve


def test_toy_problem_table_and_target():
    problem = ToyProblem(seed=0)
    assert len(problem.sequences) == 4 + 16 + 64
    ids, lengths = problem.batch_of_all()
    assert ids.shape == (84, 4) and bool((ids[torch.arange(84), lengths] == problem.term).all())
    assert problem.log_z == pytest.approx(float(torch.logsumexp(problem.log_r_tensor(), 0)))


def test_evaluation_samples_the_untruncated_policy_whose_log_probs_they_carry(compose_cfg):
    """``gfn.top_k``/``top_p`` shape exploration only: a draw with ``explore=False`` (validation,
    evaluation, importance estimates) is the temperature-1 policy, so its importance estimate of
    log Z matches the exact one. (Before: top_k=2 truncated it too; 2000 samples saw 6 of 84
    sequences and estimated log Z 3.55 against an exact 5.54.)"""
    from gflownet.core import exact
    from gflownet.runner import build_module

    module = build_module(compose_cfg([*COMMON, "gfn.top_k=1"]))
    module.build_reward()
    module.rng.manual_seed(0)
    prompt = module.prompts_for([{"prompt": "<s>"}])[0]
    traj = module.sample([prompt], 2000, explore=False)
    seen = {tuple(traj.sample_ids[b, : int(traj.lengths[b])].tolist()) for b in range(2000)}
    assert len(seen) > 60  # the untrained toy sampler spreads over most of the 84 sequences
    log_pf = module.sequence_log_prob([prompt] * 2000, traj.sample_ids, traj.lengths)
    torch.testing.assert_close(log_pf.double(), (traj.log_pf.sum(1) + traj.log_pterm.gather(1, traj.lengths[:, None]).squeeze(1)).double(),
                               atol=1e-4, rtol=0)
    log_r = module.compute_rewards([prompt] * 2000, traj.sample_ids, traj.lengths,
                                 exact.terminal_mask(traj.lengths, traj.sample_ids.size(1)), {}).log_r
    est = exact.importance_metrics(log_pf, log_r.gather(1, traj.lengths[:, None]).squeeze(1), 1.0)
    assert est["log_z_estimate"] == pytest.approx(module.task.problem.log_z, abs=0.1)
    explored = module.sample([prompt], 200, explore=True)  # exploration is truncated: top_k=1 is greedy
    assert len({tuple(explored.sample_ids[b, : int(explored.lengths[b])].tolist()) for b in range(200)}) == 1


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_toy_metrics_compare_with_the_tempered_target(compose_cfg, temperature):
    """The toy's L1 and log Z error are against R^(1/T)/Z_T with Z_T = sum R^(1/T) (before: against
    R/Z and log Z / T; at T = 0.5 the L1 read 1.870 for 1.931 and the reference log Z 11.07 for 8.76)."""
    from gflownet.runner import build_module

    cfg = compose_cfg([*COMMON, f"gfn.reward_temperature.start={temperature}", f"gfn.reward_temperature.end={temperature}"])
    module = build_module(cfg)
    module.build_reward()
    module.log_z_head.set_constant(3.0)
    problem = module.task.problem
    ids, lengths = problem.batch_of_all()
    log_p = module.sequence_log_prob(["<s>"] * len(ids), ids, lengths).double().cpu()
    log_r = problem.log_r_tensor().double() / temperature
    target = (log_r - torch.logsumexp(log_r, 0)).exp()
    got = module.task.exact_metrics(module)
    assert got["l1_to_target"] == pytest.approx(float((log_p.exp() - target).abs().sum()), abs=1e-6)
    assert got["log_z_error"] == pytest.approx(3.0 - float(torch.logsumexp(log_r, 0)), abs=1e-5)
    if temperature != 1.0:  # the untempered target is another distribution
        assert abs(got["l1_to_target"] - problem.l1(log_p)) > 0.01


def test_an_empty_sample_beside_subtbs_root_flow_is_refused_at_start_up(compose_cfg):
    """task.min_len=0 would score state 0, the root whose flow is log Z (before: the first step raised
    'state 0 must not also be scored'). Refused with the fix when the module is built; the other
    two settings it names build."""
    from gflownet.runner import build_module

    base = ["task=next_sentence", "model=tiny_gpt2", "task.min_len=0", "gfn.diversity_embedder=null"]
    with pytest.raises(Exception, match=r"task.min_len=0 with loss=subtb and loss.root_flow=true.*task.min_len=1.*loss=tb"):
        build_module(compose_cfg(base))
    for fix in ("loss.root_flow=false", "loss=tb"):
        build_module(compose_cfg([*base, fix]))
