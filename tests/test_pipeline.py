"""train.py's wiring end to end on the tiny GPT-2: train, log, checkpoint, resume.

The core's mechanics (checkpoints, resume, the sample log, the update guard, replay, Redis, secrets)
run on the test task written as two functions (``FAST``: tests/function_task_example.py), so they
do not depend on any shipped task; ``EDIT_FAST`` runs the contradiction task, for the tests of what
only it has (its answerer and judge on rank 0, its hybrid reward phase) and for the scripts that
evaluate its runs."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from gflownet.runner import run_training
from tests.conftest import ROOT, compose
from tests.function_task_example import CORE

RUN = ["logger=csv", "gfn.n_samples=3", "task.min_len=2", "task.max_len=6", "+trainer.limit_val_batches=1",
       "trainer.val_check_interval=2", "final_probe_samples=2", "callbacks.model_checkpoint.every_n_train_steps=1"]
FAST = [*CORE, *RUN]
EDIT_FAST = ["model=tiny_gpt2", *RUN, "reward.answer.max_new_tokens=4", "data.val_size=2"]


def train_tiny_run(tmp_path, *overrides: str):
    """``train.py`` with ``EDIT_FAST`` (the contradiction task) and ``overrides`` in a subprocess, as a user runs it, into
    ``tmp_path/run``; the run's directory (the test fails with its stderr if training fails)."""
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), *EDIT_FAST, *overrides, f"hydra.run.dir={run}"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    return run


def metrics(output_dir):
    rows = list(csv.DictReader(open(next(output_dir.glob("csv/version_*/metrics.csv")))))
    return {k for r in rows for k, v in r.items() if v}


@pytest.mark.parametrize("loss", ["subtb", "tb", "subtb_no_root"])
def test_training_run_logs_checkpoints_and_resumes(loss, compose_cfg, tmp_path):
    extra = ["loss=subtb", "loss.root_flow=false"] if loss == "subtb_no_root" else [f"loss={loss}"]
    cfg = compose_cfg([*FAST, *extra, "trainer.max_steps=3"])
    summary = run_training(cfg)
    assert summary["global_step"] == 3
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "last.ckpt"
    assert summary["last_checkpoint"] == str(ckpt)
    state = torch.load(ckpt, weights_only=False)
    keys = set(state["state_dict"])
    assert keys and all("lora_" in k or k.startswith("log_z_head") for k in keys)  # trainable weights only
    assert any(k.startswith("log_z_head") for k in keys) == (loss != "subtb_no_root")
    if loss != "subtb_no_root":  # log Z started at the first batch's estimate (nats away from 0), not at 0:
        # 3 Adam steps at logz_lr 0.1 move the bias by about 0.3 at most
        assert state["gfn_state"]["log_z_ready"] and abs(float(state["state_dict"]["log_z_head.linear.bias"])) > 1.0
    saved = state["gfn_state"]["buffer"]  # the in-memory buffer is in the checkpoint, with its signatures
    assert saved["kind"] == "memory" and len(saved["per_rank"]) == 1
    tables = saved["per_rank"][0]["tables"]
    assert tables and all(sig and key and raws for sig, key, raws in tables)
    logged = metrics(out)
    for name in ["train/loss", "train/fresh/avg_log_reward_scaled", "train/fresh/avg_log_reward_unscaled", "train/fresh/avg_length",
                 "train/fresh/avg_reward_fn", "scheduled/reward_temperature", "scheduled/learning_rate",
                 "val/avg_log_reward_unscaled", "val/avg_length"]:
        assert name in logged, name

    resumed = compose_cfg([*FAST, *extra, "trainer.max_steps=5", f"ckpt_path={ckpt}"])
    assert run_training(resumed)["global_step"] == 5


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_meets_the_records_the_uninterrupted_run_met(tmp_path):
    """5 training records, resumed from step 2's checkpoint (mid-epoch): steps 2..6 take the same
    records and the same sources as in the run that was not stopped. (Before, with a plain DataLoader,
    the resumed run restarted the epoch's order: it met the first two records again and skipped two.)"""
    common = [*FAST, *TRACE, "gfn.use_buffer_prob=0.7", "trainer.val_check_interval=50", "trainer.max_steps=7"]

    def steps(name: str, *extra: str) -> list[dict]:
        d = tmp_path / name
        run_training(compose([*common, *extra, f"+callbacks.step_trace.dirpath={d}/trace"], output_dir=d))
        return [e for e in read_trace(d / "trace" / "rank0.jsonl") if e["event"] == "step"]

    whole = steps("whole")
    resumed = steps("resumed", f"ckpt_path={tmp_path}/whole/checkpoints/step_000002.ckpt")
    assert [e["global_step"] for e in resumed] == [2, 3, 4, 5, 6]
    assert len({r for e in whole[:5] for r in e["records"]}) == 5  # the first epoch: every record once
    for key in ("records", "source", "replay_draw"):
        assert [e[key] for e in resumed] == [e[key] for e in whole[2:]], key


@pytest.mark.slow
def test_a_resumed_run_writes_each_steps_sample_log_rows_once(tmp_path):
    """Run B stops after step 4 (its last write cut short) and resumes from step 2's checkpoint: its
    sample log then holds the same rows per (stage, step) as run A, which ran the 4 steps at once.
    Before, the resumed run appended: steps 2 and 3, step 4's validation and the probe rows twice."""
    import collections

    common = [*FAST, "trainer.max_steps=4", "gfn.sample_log=samples.jsonl", "gfn.use_buffer_prob=0"]

    def counts(run_dir):
        rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        return collections.Counter((r["stage"], r["step"]) for r in rows)

    run_training(compose(common, output_dir=tmp_path / "a"))
    b = tmp_path / "b"
    run_training(compose(common, output_dir=b))
    with open(b / "samples.jsonl", "a") as f:
        f.write('{"step": 4, "stage": "tra')  # the interrupted run's last write, cut short
    run_training(compose([*common, f"ckpt_path={b}/checkpoints/step_000002.ckpt"], output_dir=b))
    expected = counts(tmp_path / "a")
    assert {stage for stage, _ in expected} == {"train", "val", "probe"} and expected[("train", 3)] > 0
    assert counts(b) == expected


def test_an_update_with_no_finite_loss_leaves_weights_and_optimizer_state_alone(tmp_path, monkeypatch):
    """Step 2's loss is NaN (on the only rank): its gradient is zero, but AdamW would still move the
    weights by its momentum and weight decay. Checkpoints of steps 1 and 2 then hold the same
    weights and optimizer state; step 3 trains again."""
    from gflownet.core.module import LMGFlowNet

    original = LMGFlowNet.gfn_loss

    def nan_at_step_1(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.global_step == 1 else loss

    monkeypatch.setattr(LMGFlowNet, "gfn_loss", nan_at_step_1)
    run_training(compose([*FAST, "trainer.max_steps=3", "gfn.use_buffer_prob=0"], output_dir=tmp_path / "run"))
    ckpt = [torch.load(tmp_path / "run" / "checkpoints" / f"step_{s:06d}.ckpt", weights_only=False) for s in (1, 2, 3)]
    assert ckpt[1]["gfn_state"]["skipped_nonfinite"] == 1
    for name, value in ckpt[0]["state_dict"].items():
        assert torch.equal(ckpt[1]["state_dict"][name], value), name
    assert any(not torch.equal(ckpt[2]["state_dict"][n], v) for n, v in ckpt[1]["state_dict"].items())
    states = [c["optimizer_states"][0]["state"] for c in ckpt[:2]]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        for field, value in states[0][k].items():
            assert torch.equal(torch.as_tensor(states[1][k][field]), torch.as_tensor(value)), (k, field)


STEP = ["logger=csv", "callbacks=none", "trainer.max_steps=1", "++trainer.limit_val_batches=1", "trainer.val_check_interval=1",
        "final_probe_samples=1", "trainer.enable_progress_bar=false"]


# one training step per task config (configs/task/*.yaml; a new one without a run here fails
# test_every_task_config_has_a_training_step_run) and per experiment that sets up more than a task
TASK_RUNS = {
    "next_sentence": ["task=next_sentence", "model=tiny_gpt2", "gfn.n_samples=2", "task.max_len=6", "data.val_size=2"],
    "toy": ["task=toy", "gfn.n_samples=4"],
    "contradiction": ["experiment=demo", *EDIT_FAST],
    "function_task": FAST,
    "prompt_inversion": ["experiment=inversion_toy", "gfn.n_samples=4"],
}


def test_every_task_config_has_a_training_step_run():
    assert set(TASK_RUNS) == {p.stem for p in (ROOT / "configs" / "task").glob("*.yaml")}


@pytest.mark.parametrize("overrides", [
    *TASK_RUNS.values(),
    # the original setup with the offline pieces in place of hub models, GPUs and converted zsRE data
    ["experiment=full_scale", *EDIT_FAST, "reward=contradiction", "trainer=cpu", "data=example", "buffer=memory",
     "trainer.accumulate_grad_batches=1"],
    # a ROME-edited answerer (every example edit, on the tiny GPT-2, few steps), the object mask, the near-duplicate buffer
    pytest.param(["experiment=edit_probe", *EDIT_FAST, "data.max_records=12", "answerer.edit.stats.n_tokens=2000",
                  "+answerer.edit.settings.v_steps=3", "gfn.use_buffer_prob=0.0"], marks=pytest.mark.slow),
], ids=[*TASK_RUNS, "full_scale", "edit_probe"])
def test_every_task_and_experiment_runs_a_training_step(overrides, compose_cfg, tmp_path):
    drop = ("+trainer.limit_val_batches", "callbacks.")  # set by STEP
    extra = [f"answerer.edit.cache_dir={tmp_path}/edits"] if "experiment=edit_probe" in overrides else []
    cfg = compose_cfg([*[o for o in overrides if not o.startswith(drop)], *STEP, *extra])
    assert run_training(cfg)["global_step"] == 1
    logged = metrics(tmp_path / "run")
    assert {"train/loss", "train/fresh/avg_log_reward_unscaled", "val/avg_log_reward_unscaled"} <= logged
    if "task=next_sentence" in overrides:
        assert {"train/fresh/avg_log_likelihood", "val/mean_log_likelihood", "val/max_log_likelihood"} <= logged
    if "task=toy" in overrides:
        assert "val/l1_to_target" in logged
    if "experiment=edit_probe" in overrides:
        saved = torch.load(next((tmp_path / "edits").glob("rome-*.pt")), weights_only=True)["manifest"]
        assert saved["edits"] == 12 and saved["method"] == "rome"  # every record of the data, train and validation


def test_missing_checkpoint_is_a_clear_error(compose_cfg, tmp_path):
    cfg = compose_cfg([*FAST, f"ckpt_path={tmp_path}/nope.ckpt"])
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        run_training(cfg)


def test_train_py_runs_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, "trainer.max_steps=2", "callbacks.progress_log.every_n_steps=1",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # progress lines where there is no terminal: in the run's log file, one per step here
    progress = [l for l in (tmp_path / "train.log").read_text().splitlines() if "gflownet.progress" in l]
    assert len(progress) == 2 and "step 2/2 | loss " in progress[1] and "mean log R (fresh) -" in progress[1] and "s/step" in progress[1]
    assert "Samples after 2 steps" in proc.stdout
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_buffer_replay_across_epochs_logs_a_true_hit_rate(compose_cfg, tmp_path):
    """3 training records: several epochs; half the steps replay from the in-memory buffer."""
    cfg = compose_cfg([*FAST, *TRACE, f"+callbacks.step_trace.dirpath={tmp_path}/trace",
                       "data.val_size=4", "gfn.use_buffer_prob=0.5", "trainer.max_steps=9"])
    run_training(cfg)
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    hit = [float(r["buffer/hit_rate"]) for r in rows if r.get("buffer/hit_rate")]
    epochs = {r["epoch"] for r in rows if r.get("epoch")}
    assert len(hit) == 9 and len(epochs) >= 3
    assert 0.0 < hit[-1] < 1.0 and all(0.0 <= h <= 1.0 for h in hit)
    sizes = [float(r["buffer/size"]) for r in rows if r.get("buffer/size")]
    assert max(sizes) > 0
    # fresh and replayed trajectories are reported apart, each step under its own source, never mixed
    steps = [e for e in read_trace(tmp_path / "trace" / "rank0.jsonl") if e["event"] == "step"]
    by_step = {}
    for r in rows:
        for source in ("fresh", "replay"):
            if r.get(f"train/{source}/avg_log_reward_unscaled"):
                by_step.setdefault(int(r["step"]), {})[source] = float(r[f"train/{source}/avg_log_reward_unscaled"])
    assert {e["source"] for e in steps} == {"fresh", "replay"}
    for e in steps:
        assert by_step[e["global_step"]] == {e["source"]: pytest.approx(e["mean_log_reward"], abs=1e-4)}
    assert not any(k.startswith("train/avg_") for r in rows for k, v in r.items() if v)
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"train/replay/avg_length", "train/replay/avg_reward_fn", "train/fresh/avg_reward_fn"} <= logged


def read_trace(path):
    return [json.loads(line) for line in open(path)]


TRACE = ["+callbacks.step_trace._target_=gflownet.core.callbacks.StepTrace"]


@pytest.mark.slow
@pytest.mark.parametrize("buffer", ["memory", "redis"])
def test_ddp_two_gloo_processes_train_on_their_own_records(tmp_path, buffer, redis_server):
    """trainer=ddp_sim (2 gloo processes): per step the ranks take different records, each rank's
    trajectories are rewarded for its own prompts and edits and scored after its own prompt, only
    rank 0 holds the reward models, both ranks end with identical trainable weights, and rank-0-only
    metrics are logged once per step. With Redis, rank 0 stores every rank's trajectories."""
    extra = ["buffer=redis", f"buffer.url={redis_server.url}", f"buffer.namespace=ddp-{tmp_path.name}"] if buffer == "redis" else []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *EDIT_FAST, *extra, *TRACE, f"+callbacks.step_trace.dirpath={tmp_path}/trace",
         "trainer=ddp_sim", "trainer.max_steps=4", "gfn.use_buffer_prob=0.0", "data.max_records=16",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out
    ranks = [read_trace(tmp_path / "trace" / f"rank{r}.jsonl") for r in (0, 1)]
    steps = [[e for e in t if e["event"] == "step"] for t in ranks]
    ends = [next(e for e in t if e["event"] == "end") for t in ranks]
    assert [len(s) for s in steps] == [4, 4]
    for s0, s1 in zip(*steps):
        assert s0["global_step"] == s1["global_step"]
        assert not set(s0["records"]) & set(s1["records"])  # different records in the same step
        assert s0["scored_prompts"] != s1["scored_prompts"]
        for s in (s0, s1):
            assert s["source"] == "fresh"
            assert s["reward_prompts"] == s["scored_prompts"]  # rewarded for, and scored after, its own prompt
            assert s["reward_context"] == s["context"]  # and for its own edits
            assert s["context"]["edit_fact"] == [s["records"][0]] * 3  # describe() of an edit record is its edit fact
    assert ends[0]["weights"] == ends[1]["weights"]  # DDP averaged the gradients: one model
    assert ends[0]["reward_models_loaded"] and ends[0]["embedder_loaded"]
    assert not ends[1]["reward_models_loaded"] and not ends[1]["embedder_loaded"]
    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv")))))
    for name in ("train/fresh/semantic_diversity", "train/loss", "scheduled/reward_temperature"):
        logged = [int(r["step"]) for r in rows if r.get(name)]
        assert len(logged) == 4 and len(set(logged)) == 4, (name, logged)  # once per step, by rank 0 only
    assert len(list(tmp_path.glob("csv/version_*"))) == 1
    if buffer == "redis":
        import redis

        client = redis.Redis.from_url(redis_server.url)
        stored = sum(client.zcard(k) for k in client.scan_iter(f"ddp-{tmp_path.name}:z:*"))
        prompts = {p for s in steps for e in s for p in e["scored_prompts"]}
        assert len(list(client.scan_iter(f"ddp-{tmp_path.name}:z:*"))) == len(prompts) and stored > 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_continues_the_run(tmp_path, redis_server):
    """A run killed with SIGKILL mid-epoch and restarted from last.ckpt continues at the step of
    that checkpoint, with the learning rate and reward temperature the schedules give there, and
    with its Redis buffer (a separate process) intact."""
    import os
    import signal
    import time

    import redis

    from gflownet.core.schedules import linear_schedule

    ns = f"kill-{tmp_path.name}"
    common = [
        *FAST, *TRACE, "buffer=redis", f"buffer.url={redis_server.url}", f"buffer.namespace={ns}",
        "gfn.use_buffer_prob=0.5", "scheduler.warmup_steps=6", "optimizer.lr=0.001", "gfn.reward_temperature.start=1.0",
        "gfn.reward_temperature.end=3.0", "gfn.reward_temperature.horizon=10", "trainer.val_check_interval=50",
    ]
    first = tmp_path / "first"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *common, "trainer.max_steps=40", f"+callbacks.step_trace.dirpath={first}/trace",
         f"hydra.run.dir={first}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    target = first / "checkpoints" / "step_000004.ckpt"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), (proc.poll(), proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    at_kill = {k: set(client.zrange(k, 0, -1)) for k in client.scan_iter(f"{ns}:z:*")}
    assert at_kill and all(at_kill.values())

    last = first / "checkpoints" / "last.ckpt"
    k = torch.load(last, weights_only=False)["global_step"]
    assert 3 <= k < 40  # step 4 was saved; last.ckpt follows it (atomic writes: never a torn file)
    assert torch.load(last, weights_only=False)["gfn_state"]["buffer"] == {"kind": "redis", "namespace": ns}
    second = tmp_path / "second"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *common, f"trainer.max_steps={k + 3}", f"ckpt_path={last}",
         f"+callbacks.step_trace.dirpath={second}/trace", f"hydra.run.dir={second}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    steps = [e for e in read_trace(second / "trace" / "rank0.jsonl") if e["event"] == "step"]
    assert [e["global_step"] for e in steps] == [k, k + 1, k + 2]
    for e in steps:
        s = e["global_step"]
        assert e["reward_temperature"] == pytest.approx(linear_schedule(1.0, 3.0, 10, s))
        assert e["learning_rate"] == pytest.approx(0.001 * min(1.0, (s + 1) / 6))
    before = {e["global_step"]: e for e in read_trace(first / "trace" / "rank0.jsonl") if e["event"] == "step"}
    if k in before:  # the killed run got to step k too: the same schedules there
        assert before[k]["reward_temperature"] == steps[0]["reward_temperature"]
        assert before[k]["learning_rate"] == steps[0]["learning_rate"]
    after = {k2: set(client.zrange(k2, 0, -1)) for k2 in client.scan_iter(f"{ns}:z:*")}
    assert all(members <= after[key] for key, members in at_kill.items())  # nothing stored before the kill was lost


@pytest.mark.slow
def test_validation_means_count_each_record_once_on_an_odd_number_of_ranks(tmp_path):
    """8 validation records on 3 ranks (one rank gets a repeated record to keep the ranks in step):
    the logged validation mean is the mean over the 8 distinct records. The reward is the record's
    value, so the exact mean is known. (Before: the repeated record counted twice, and the ranks'
    means were averaged unweighted.)"""
    from gflownet.core.function_task import FunctionRecords

    records = [{"topic": t, "value": float(2 ** i)} for i, t in enumerate(["a", "b", "c", "d", "e", "f", "g", "h", "i"])]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, val = FunctionRecords(path=str(data), val_size=8).load()
    overrides = [o for o in CORE if not o.startswith(("reward.fn=", "data.records=", "data.val_size="))]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, "reward.fn=tests.function_task_example.value_reward",
         "task.context_fields=[value]", f"data.path={data}", "data.val_size=8", "trainer=ddp_sim", "trainer.devices=3",
         "trainer.max_steps=1", "trainer.val_check_interval=1", "gfn.n_samples=2", "task.max_len=4", "logger=csv",
         "final_probe_samples=0", "callbacks=none", "trainer.num_sanity_val_steps=0", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    logged = [float(r["val/avg_log_reward_unscaled"]) for r in rows if r.get("val/avg_log_reward_unscaled")]
    exact = sum(r["value"] for r in val) / len(val)
    repeated = (sum(r["value"] for r in val) + val[0]["value"]) / 9  # record 0 counted twice
    assert logged == [pytest.approx(exact, rel=1e-6)] and abs(exact - repeated) > 1.0


@pytest.mark.slow
def test_ddp_resume_keeps_each_rank_on_its_own_random_stream(tmp_path):
    """Lightning writes the checkpoint from rank 0. After a 2-process resume the ranks still draw
    different random numbers (replay choices, tokens), and the same ones the uninterrupted run drew
    at those steps (before: every rank restored rank 0's generator and drew what rank 0 drew); each
    rank's in-memory buffer is restored, so replay continues as it would have (before: the buffer
    was lost on resume)."""
    common = [*FAST, *TRACE, "trainer=ddp_sim", "gfn.use_buffer_prob=0.7",
              "trainer.val_check_interval=50"]

    def run(name: str, *extra: str) -> list[list[dict]]:
        d = tmp_path / name
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *common, *extra, f"+callbacks.step_trace.dirpath={d}/trace",
                               f"hydra.run.dir={d}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return [[e for e in read_trace(d / "trace" / f"rank{r}.jsonl") if e["event"] == "step"] for r in (0, 1)]

    whole = run("whole", "trainer.max_steps=4")
    resumed = run("resumed", "trainer.max_steps=4", f"ckpt_path={tmp_path}/whole/checkpoints/step_000002.ckpt")
    assert [len(s) for s in resumed] == [2, 2] and [s["global_step"] for s in resumed[0]] == [2, 3]
    for r in (0, 1):
        assert [s["replay_draw"] for s in resumed[r]] == [s["replay_draw"] for s in whole[r][2:]]
        assert [s["source"] for s in resumed[r]] == [s["source"] for s in whole[r][2:]]
        assert [s["records"] for s in resumed[r]] == [s["records"] for s in whole[r][2:]]  # mid-epoch: 5 records, 2 ranks
        assert [s["mean_log_reward"] for s in resumed[r]] == pytest.approx([s["mean_log_reward"] for s in whole[r][2:]], abs=1e-4)
    assert "replay" in [s["source"] for r in (0, 1) for s in resumed[r]]  # the restored buffers were replayed
    for s0, s1 in zip(*resumed):
        assert s0["replay_draw"] != s1["replay_draw"]


@pytest.mark.slow
def test_a_run_with_other_settings_ignores_the_entries_of_the_last_on_a_shared_redis(compose_cfg, redis_server, caplog, tmp_path):
    """Entries carry the signature of what scored them: a second run on the same namespace with a
    changed reward replays none of the first run's entries and says how many it ignored; a run
    with the first run's settings replays them."""
    import logging
    import uuid

    import redis

    ns = f"sig-{uuid.uuid4().hex[:8]}"
    base = [*FAST, "buffer=redis", f"buffer.url={redis_server.url}", f"buffer.namespace={ns}", "trainer.max_steps=2",
            "data.val_size=4", "trainer.val_check_interval=50", "final_probe_samples=0"]

    def hit_rates(version: int) -> list[float]:
        rows = list(csv.DictReader(open(tmp_path / f"run/csv/version_{version}/metrics.csv")))
        return [float(r["buffer/hit_rate"]) for r in rows if r.get("buffer/hit_rate")]

    run_training(compose_cfg([*base, "gfn.use_buffer_prob=0.0"]))
    client = redis.Redis.from_url(redis_server.url)
    stored = sum(client.zcard(k) for k in client.scan_iter(f"{ns}:z:*"))
    assert stored > 0
    caplog.set_level(logging.WARNING, logger="gflownet.core.module")
    run_training(compose_cfg([*base, "gfn.use_buffer_prob=1.0", "reward.fn=tests.function_task_example.topic_reward_by_length"]))
    assert f"replay buffer: {stored} stored entries under namespace '{ns}' were scored by other settings" in caplog.text
    assert hit_rates(1) == [0.0, 0.0]  # nothing of the first run's was replayed
    run_training(compose_cfg([*base, "gfn.use_buffer_prob=1.0"]))  # the first run's settings: its entries replay
    assert hit_rates(2)[0] == 1.0


def test_the_hybrid_reward_phase_signs_its_entries_apart():
    from gflownet.rewards.combine import WeightedSum
    from gflownet.tasks.contradiction.reward import ContradictionTerm

    term = ContradictionTerm(answerer=None, judge=None, tokenizer=None, min_question_len=2, use_hybrid_reward=True,
                             penalized_reward_end_step=10)
    reward = WeightedSum({"contradiction": (1.0, term), "other": (0.5, lambda **kw: None)})
    assert [reward.phase(s) for s in (0, 9, 10, 50)] == ["contradiction:hybrid"] * 2 + [""] * 2
    term.use_hybrid_reward = False
    assert reward.phase(0) == ""


def test_entries_stored_in_the_hybrid_phase_are_signed_apart_from_later_ones(compose_cfg, redis_server):
    import uuid

    import redis

    ns = f"hyb-{uuid.uuid4().hex[:8]}"
    run_training(compose_cfg([*EDIT_FAST, "buffer=redis", f"buffer.url={redis_server.url}", f"buffer.namespace={ns}",
                              "trainer.max_steps=3", "gfn.use_buffer_prob=0.0", "reward.use_hybrid_reward=true",
                              "reward.penalized_reward_end_step=1", "trainer.val_check_interval=50", "final_probe_samples=0"]))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    signatures = {k.split(":")[2] for k in client.scan_iter(f"{ns}:z:*")}
    assert len(signatures) == 2  # step 0 (hybrid) and steps 1-2 (the contradiction reward)


@pytest.mark.slow
def test_the_redis_password_never_reaches_the_run_directory_or_the_console(tmp_path):
    """A password given on the command line (in buffer.url or buffer.password) or in REDIS_URL is
    used, and is in none of the run's files (Hydra's saved configs, hparams, checkpoints, metrics,
    logs, the W&B offline run) nor in its console output."""
    import os

    import redis

    from tests.conftest import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    secret = "Zq9-not-in-files"
    try:
        redis.Redis(port=server.port).config_set("requirepass", secret)
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        runs = {"url": ([f"buffer.url={url}"], {}), "password": ([f"buffer.port={server.port}", f"buffer.password={secret}"], {}),
                "env": ([], {"REDIS_URL": url}),
                # W&B offline records the command line in its run file: it got the password before
                "wandb": ([f"buffer.port={server.port}", f"buffer.password={secret}", "logger=wandb"], {})}
        for name, (extra, env) in runs.items():
            run_dir = tmp_path / name
            proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST, "trainer.max_steps=1", "buffer=redis", *extra,
                                   "final_probe_samples=0", "trainer.val_check_interval=50", f"hydra.run.dir={run_dir}"],
                                  capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ, **env})
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
            assert secret not in proc.stdout + proc.stderr
            files = [p for p in run_dir.rglob("*") if p.is_file()]
            assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "config.yaml" for p in files)
            leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
            assert not leaked, (name, leaked)
        assert redis.Redis(port=server.port, password=secret).dbsize() > 0  # the password was used
    finally:
        server.stop()


def test_a_checkpoint_that_cannot_be_written_leaves_nothing_that_looks_like_one(compose_cfg, tmp_path, monkeypatch):
    """The checkpoint directory's disk fills up after 4 kB of a checkpoint: the run stops with an
    error naming the directory, and no step_*.ckpt (truncated or not) and no partial file remain.
    (Lightning's default staged the file in the system temporary directory and copied it over; a
    copy that ran out of space left a truncated checkpoint under its final name.)"""
    import builtins
    import errno

    from gflownet.core.checkpointing import CheckpointWriteError

    ckpt_dir = tmp_path / "run" / "checkpoints"
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 4096:
                self.f.write(bytes(data)[: 4096 - self.written])
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        in_ckpt_dir = isinstance(file, (str, os.PathLike)) and str(ckpt_dir) in os.fspath(file)
        return FullDisk(f) if in_ckpt_dir and "w" in mode else f

    import os

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint step_000001.ckpt in {ckpt_dir} "
                                                   r"\(No space left on device\).*free space there"):
        run_training(compose_cfg([*FAST, "trainer.max_steps=2"]))
    monkeypatch.setattr(builtins, "open", real_open)
    assert ckpt_dir.is_dir() and list(ckpt_dir.iterdir()) == []


@pytest.mark.slow
def test_a_refusal_prints_its_message_without_a_traceback(tmp_path):
    """Bad input stops train.py with `error: <message>` and status 1, not a page of Lightning and Hydra
    traceback (which also echoed the command-line overrides); HYDRA_FULL_ERROR=1 keeps the traceback."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    args = [sys.executable, str(ROOT / "train.py"), "model=tiny_gpt2", "logger=csv", "data.path=/nonexistent/edits.jsonl",
            f"hydra.run.dir={tmp_path / 'run'}"]
    plain = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert plain.returncode == 1
    assert "error: edit data /nonexistent/edits.jsonl not found" in plain.stderr
    assert "Traceback" not in plain.stderr + plain.stdout and "overrides" not in plain.stderr
    full = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "FileNotFoundError" in full.stderr


@pytest.mark.slow
def test_an_unexpected_error_keeps_its_traceback_but_not_the_secrets_of_the_command_line(tmp_path):
    """An error that is not a refusal (here a TypeError from AdamW given a list as learning rate) prints
    its traceback and exits with status 1, without Hydra's "Error executing job with overrides: [...]"
    echo, which printed the command line's secrets."""
    import os

    secret = "Zq9-bug-path-secret"
    args = [sys.executable, str(ROOT / "train.py"), *FAST, "optimizer.lr=[1,2]", f"+extra.api_key={secret}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    for env in ({}, {"HYDRA_FULL_ERROR": "1"}):
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, **env})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out[-2000:]
        assert "Traceback" in proc.stderr and "TypeError" in proc.stderr and "unexpected TypeError stopped the run" in proc.stderr
        assert secret not in out and "Error executing job with overrides" not in out


def test_secrets_are_found_under_secret_named_keys_and_in_urls_anywhere_in_the_config():
    from omegaconf import OmegaConf

    from gflownet.runner import secrets_in

    cfg = OmegaConf.create({
        "buffer": {"password": "Zq9secretXY", "url": "redis://:urlpass1234@host:1/0"},
        "reward": {"backend": {"api_key": "sk-abcdefgh123", "base_url": "http://127.0.0.1:8080/v1"},
                   "max_new_tokens": 24, "pad_token": "<|endoftext|>"},
        "other": {"hf_token": "hf_0123456789", "api_key": "local"},  # "local": too short to be a secret
        "unset": "${oc.env:GFN_TEST_NOT_SET_ANYWHERE}",
        "hydra": {"password": "not-a-run-value"},
    })
    assert set(secrets_in(cfg)) == {"Zq9secretXY", "urlpass1234", "sk-abcdefgh123", "hf_0123456789"}
