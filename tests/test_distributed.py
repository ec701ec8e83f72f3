"""The rank-0 exchange with 2 real gloo processes: results reach their ranks, failures reach every rank."""

import os
import time

import pytest
import torch.multiprocessing as mp


def _report(out: str, rank: int, call) -> None:
    """Write ``ok <result>`` or ``error <Rank0Error>`` of ``call()`` and the seconds it took to ``out.<rank>``."""
    from gflownet.core import distributed as D

    started = time.monotonic()
    try:
        result = f"ok {call()}"
    except D.Rank0Error as err:
        result = f"error {err}"
    with open(f"{out}.{rank}", "w") as f:
        f.write(f"{result}\n{time.monotonic() - started:.1f}")


def _worker(rank: int, world: int, store: str, out: str, fail: bool) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from gflownet.core import distributed as D

    # a short timeout: a rank left waiting in a collective fails the test in 20 s instead of hanging it
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=20))

    def compute(requests):
        if fail:
            raise ValueError("the judge ran out of memory")
        return [r * 10 for r in requests]

    _report(out, rank, lambda: D.compute_on_rank0(rank + 1, compute if rank == 0 else None))
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_rank0_results_and_failures_reach_every_rank(tmp_path, fail):
    store, out = str(tmp_path / "store"), str(tmp_path / "out")
    mp.spawn(_worker, args=(2, store, out, fail), nprocs=2, join=True)
    lines = [open(f"{out}.{r}").read().splitlines() for r in (0, 1)]
    if not fail:
        assert [l[0] for l in lines] == ["ok 10", "ok 20"]  # each rank gets its own result
        return
    for r, (result, seconds) in enumerate(lines):
        assert result.startswith("error rank 0 failed computing for every rank (ValueError: the judge ran out of memory)")
        assert f"this rank ({r}) stops too" in result
        assert float(seconds) < 30  # at once, not after the process group's timeout


def test_without_a_process_group_it_is_a_plain_call():
    from gflownet.core.distributed import compute_on_rank0

    assert compute_on_rank0(3, lambda reqs: [r + 1 for r in reqs]) == 4
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"


def _nonfinite_worker(rank: int, world: int, store: str, out: str, bad_ranks: tuple) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gflownet.core import distributed as D

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=20))
    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(3, 1))
    x = torch.arange(3.0) + 10 * rank
    loss = model(x).sum() * (rank + 1)
    if rank in bad_ranks:
        loss = loss * float("nan")
    backward_loss, finite = D.balance_nonfinite(loss, list(model.parameters()))
    backward_loss.backward()
    torch.save({"grad": [p.grad.clone() for p in model.parameters()], "finite": finite}, f"{out}.{rank}")
    del model, backward_loss, loss  # the DDP reducer's threads go before the group (else: "terminate called" at exit)
    dist.barrier()  # neither rank tears the group down while the other still talks to it
    dist.destroy_process_group()


@pytest.mark.parametrize("bad_ranks", [(), (1,), (0,)])
def test_a_nonfinite_loss_on_one_rank_leaves_the_others_update_whole(tmp_path, bad_ranks):
    """Real DDP over 2 gloo processes: the averaged gradient is the mean over the finite ranks'
    gradients. (Before: a skipped rank's zero gradient halved the other rank's update.)"""
    import torch

    store, out = str(tmp_path / "store"), str(tmp_path / "out")
    mp.spawn(_nonfinite_worker, args=(2, store, out, bad_ranks), nprocs=2, join=True)
    got = [torch.load(f"{out}.{r}") for r in (0, 1)]
    # d/dw of (w.x + b) * (rank + 1) is (x * (rank + 1), rank + 1)
    own = {r: [(torch.arange(3.0) + 10 * r) * (r + 1), torch.tensor([float(r + 1)])] for r in (0, 1)}
    good = [r for r in (0, 1) if r not in bad_ranks]
    expect = [sum(own[r][i] for r in good) / len(good) for i in range(2)]
    for g in got:
        assert g["finite"] == len(good)
        for actual, wanted in zip(g["grad"], expect):
            torch.testing.assert_close(actual.reshape(wanted.shape), wanted)


def _exact_worker(rank: int, world: int, store: str, out: str, fail: bool, models_dir: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from gflownet.runner import build_module
    from tests.conftest import compose

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=20))
    module = build_module(compose(["task=toy", "logger=none", f"paths.models_dir={models_dir}"]))
    if rank == 0:
        module.build_reward()  # as setup does: the reward lives on rank 0
        if fail:
            def down(*args, **kwargs):
                raise ConnectionError("the reward endpoint is down")
            module.reward = down
    def names():
        got = module.exact_values()
        return sorted(got) if got is not None else None

    _report(out, rank, names)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_exact_metrics_run_on_rank0_and_its_failure_reaches_every_rank(tmp_path, models_dir, fail):
    """Validation's exact metrics (the toy's L1 to R/Z) go through the training exchange: rank 0
    computes, and a reward that fails there raises on both ranks at once. (Before: rank 0 alone ran
    them, so its failure left rank 1 waiting in the next collective until the group's timeout.)"""
    store, out = str(tmp_path / "store"), str(tmp_path / "out")
    mp.spawn(_exact_worker, args=(2, store, out, fail, str(models_dir)), nprocs=2, join=True)
    lines = [open(f"{out}.{r}").read().splitlines() for r in (0, 1)]
    if not fail:
        assert [l[0] for l in lines] == ["ok ['kl_to_target', 'l1_to_target', 'log_z_error']", "ok None"]
        return
    for r, (result, seconds) in enumerate(lines):
        assert result.startswith("error rank 0 failed computing for every rank (ConnectionError: the reward endpoint is down)")
        assert float(seconds) < 15


def _placement_worker(rank: int, world: int, store: str, out: str, placement: str, fail_rank: int, models_dir: str) -> None:
    """Both ranks reward their own fixed trajectories through the exchange under ``placement``; each
    writes what it got (rewards, components, answers, the pooled diversity) to ``out.<rank>.pt``."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from gflownet.core import distributed as D
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.data import EditRecord
    from tests.conftest import compose

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    module = build_module(compose(["model=tiny_gpt2", "reward.answer.max_new_tokens=4", "task.max_len=6",
                                   f"gfn.reward_placement={placement}", f"gfn.sample_log={out}.{placement}.log.jsonl",
                                   f"paths.models_dir={models_dir}"]))
    if module.exchange.builds_reward_on(rank):  # as setup does
        module.build_reward()
    assert (module.reward is not None) == (placement == "per_rank" or rank == 0)
    if rank == fail_rank:
        def down(**kwargs):
            raise ConnectionError("the answerer endpoint is down")
        module.reward = down
    records = [[EditRecord("The Eiffel Tower", "Where is the Eiffel Tower?", "Paris", "Rome",
                           "The Eiffel Tower is in Paris.", "The Eiffel Tower is in Rome.")],
               [EditRecord("Hamlet", "Who wrote Hamlet?", "William Shakespeare", "Christopher Marlowe",
                           "Hamlet was written by William Shakespeare.", "Hamlet was written by Christopher Marlowe."),
                EditRecord("Mount Everest", "Where is Mount Everest?", "Nepal", "Peru",
                           "Mount Everest is in Nepal.", "Mount Everest is in Peru.")]][rank]
    prompts = module.prompts_for(records)
    module.rng.manual_seed(100 + rank)  # the same trajectories under either placement
    traj = module.sample(prompts, 3)
    started = time.monotonic()
    try:
        ro = module._rewarded(records, prompts, 3, traj, terminal_only=False, store=False)
        got = {"log_r": ro.log_r.cpu(), "scored": ro.scored.cpu(), "components": ro.components, "texts": ro.texts,
               "samples": ro.samples, "diversity": ro.pooled_diversity, "ids": traj.sample_ids}
    except D.Rank0Error as err:
        got = {"error": str(err), "seconds": time.monotonic() - started}
    torch.save(got, f"{out}.{placement}.{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank0_and_per_rank_placements_give_every_rank_the_same_rewards(tmp_path, models_dir):
    """gfn.reward_placement: for the same trajectories (2 gloo ranks, the contradiction reward on the
    tiny GPT-2), rank 0 scoring both ranks' trajectories and each rank scoring its own give each rank
    the same log R at every scored state, the same components and answers, the same pooled diversity,
    and the same sample-log rows (rank 0 writes every rank's under either placement)."""
    import json

    import torch

    out = str(tmp_path / "out")
    got = {}
    for placement in ("rank0", "per_rank"):
        mp.spawn(_placement_worker, args=(2, str(tmp_path / f"store-{placement}"), out, placement, -1, str(models_dir)),
                 nprocs=2, join=True)
        got[placement] = [torch.load(f"{out}.{placement}.{r}.pt", weights_only=False) for r in (0, 1)]
    for a, b in zip(got["rank0"], got["per_rank"]):
        assert torch.equal(a["ids"], b["ids"]) and a["samples"] == b["samples"]
        assert torch.isfinite(a["log_r"][a["scored"]]).all()
        torch.testing.assert_close(a["log_r"][a["scored"]], b["log_r"][b["scored"]], rtol=0, atol=1e-5)
        assert a["components"].keys() == b["components"].keys() and a["texts"] == b["texts"]
        for k in a["components"]:
            torch.testing.assert_close(a["components"][k], b["components"][k], rtol=0, atol=1e-5, equal_nan=True)
        assert a["diversity"] is not None and a["diversity"] == pytest.approx(b["diversity"], abs=1e-6)
    rows = {p: [json.loads(line) for line in open(f"{out}.{p}.log.jsonl")] for p in ("rank0", "per_rank")}
    assert len(rows["rank0"]) == 9 and [r["sample"] for r in rows["rank0"]] == [r["sample"] for r in rows["per_rank"]]
    for a, b in zip(*rows.values()):
        assert a.keys() == b.keys() and a["log_r"] == pytest.approx(b["log_r"], abs=1e-5)


@pytest.mark.parametrize("placement,fail_rank", [pytest.param("per_rank", 1, marks=pytest.mark.slow),
                                                pytest.param("rank0", 0, marks=pytest.mark.slow)])
def test_a_reward_that_fails_on_any_rank_fails_the_step_on_every_rank(tmp_path, models_dir, placement, fail_rank):
    """A reward that raises on one rank (here an endpoint that is down) raises on both ranks at once,
    naming the rank, instead of leaving the other waiting in a collective until the group's timeout."""
    import torch

    out = str(tmp_path / "out")
    mp.spawn(_placement_worker, args=(2, str(tmp_path / "store"), out, placement, fail_rank, str(models_dir)),
             nprocs=2, join=True)
    for r in (0, 1):
        got = torch.load(f"{out}.{placement}.{r}.pt", weights_only=False)
        assert "the answerer endpoint is down" in got["error"] and got["seconds"] < 20, got
        if placement == "per_rank":
            assert f"rank {fail_rank}'s reward failed" in got["error"]
