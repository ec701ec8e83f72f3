"""The shell entry points: run_experiments.sh (+ scripts/summarize.py), run_4gpu_ddp.sh,
scripts/clean.sh and scripts/slurm_multinode.sbatch, run as a user would run them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT, _free_port
from tests.test_pipeline import EDIT_FAST as FAST

TINY = [o for o in FAST if not o.startswith("logger=")]


def script_env(**extra) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def tail_mean(csv_path: Path, key: str, n: int) -> float:
    vals = [float(r[key]) for r in csv.DictReader(open(csv_path)) if r.get(key)]
    return sum(vals[-n:]) / len(vals[-n:])


@pytest.mark.slow
def test_sweep_runs_every_line_records_a_failure_and_summarises_from_the_runs_logs(tmp_path):
    exp = tmp_path / "sweep.txt"
    exp.write_text("# lw,pt,ubp\n0.2,1.5,0.5\n0.2,1.5,1.5   # not a probability: this run fails\n0.1,2.0,0.0\n")
    env = script_env(OUT_ROOT=tmp_path, SWEEP="t1", SUMMARY=tmp_path / "summary", LOGGER="many")
    proc = subprocess.run(["bash", str(ROOT / "run_experiments.sh"), "-f", str(exp), *TINY, "trainer.max_steps=3"],
                          capture_output=True, text=True, env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "2 of 3 runs ok" in out and "FAILED with exit status 1" in out

    rows = list(csv.DictReader(open(tmp_path / "logs/sweeps/t1/runs.tsv"), delimiter="\t"))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert [(r["likelihood_weight"], r["pf_temp_high"], r["use_buffer_prob"]) for r in rows] == [
        ("0.2", "1.5", "0.5"), ("0.2", "1.5", "1.5"), ("0.1", "2.0", "0.0")]
    assert "gfn.use_buffer_prob=1.5 is a probability" in (tmp_path / "training_logs/t1" / f"{rows[1]['name']}.log").read_text()

    md = (tmp_path / "summary.md").read_text()
    for r in (rows[0], rows[2]):
        name, run_dir = r["name"], Path(r["run_dir"])
        assert (tmp_path / "checkpoints/t1" / name / "last.ckpt").is_file()
        cfg = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
        assert cfg["reward"]["likelihood_weight"] == float(r["likelihood_weight"])
        assert cfg["gfn"]["pf_temp_high"] == float(r["pf_temp_high"]) and cfg["gfn"]["use_buffer_prob"] == float(r["use_buffer_prob"])
        assert cfg["logger"]["wandb"]["name"] == name and cfg["logger"]["wandb"]["group"] == "t1"
        assert list(run_dir.glob("wandb/offline-run-*"))
        metrics = next(run_dir.glob("csv/version_*/metrics.csv"))
        log_r = tail_mean(metrics, "train/fresh/avg_log_reward_unscaled", 10)
        val = [float(x["val/contradiction_rate"]) for x in csv.DictReader(open(metrics)) if x.get("val/contradiction_rate")]
        line = next(l for l in md.splitlines() if l.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == "ok" and float(cells[5]) == pytest.approx(log_r, abs=0.006)  # the run's own numbers
        assert float(cells[6]) == pytest.approx(val[-1], abs=0.006) and cells[9] == "3"
    assert "failed (exit 1)" in md
    tex = (tmp_path / "summary.tex").read_text()
    assert r"\begin{tabular}" in tex and r"exp2\_lw0.2\_pt1.5\_ubp1.5" in tex
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_rejects_a_malformed_line_before_running_anything(tmp_path):
    exp = tmp_path / "sweep.txt"
    exp.write_text("0.2,1.5\n")
    proc = subprocess.run(["bash", str(ROOT / "run_experiments.sh"), "-f", str(exp)], capture_output=True, text=True,
                          env=script_env(OUT_ROOT=tmp_path), timeout=60)
    assert proc.returncode == 1 and "bad experiment line '0.2,1.5'" in proc.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_summarize_reads_a_hydra_multirun(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "logger=csv", "trainer.max_steps=2",
         "reward.likelihood_weight=0.1,0.3", f"hydra.sweep.dir={tmp_path}/multi"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env=script_env(),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/summarize.py"), str(tmp_path / "multi"), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "s.md").read_text()
    for job, lw in (("0", "0.1"), ("1", "0.3")):
        line = next(l for l in md.splitlines() if l.startswith(f"| job{job} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == lw
        metrics = next((tmp_path / "multi" / job).glob("csv/version_*/metrics.csv"))
        assert float(cells[3]) == pytest.approx(tail_mean(metrics, "train/fresh/avg_log_reward_unscaled", 10), abs=0.006)


@pytest.mark.slow
def test_ddp_launcher_refuses_bad_settings_with_the_fix(tmp_path):
    run = lambda **env: subprocess.run(["bash", str(ROOT / "run_4gpu_ddp.sh")], capture_output=True, text=True,
                                       env=script_env(LOG_FILE=tmp_path / "l.log", **env), timeout=120)
    bad = run(NPROC="four")
    assert bad.returncode == 1 and "NPROC must be a positive integer" in bad.stderr
    down = run(NPROC=2, REDIS_URL=f"redis://:Zq9-not-shown@127.0.0.1:{_free_port()}/0")
    assert down.returncode == 1 and "Redis not reachable" in down.stderr and "buffer=memory" in down.stderr
    assert "Zq9-not-shown" not in down.stderr and ":<redacted>@127.0.0.1" in down.stderr  # the URL, password out
    assert not (tmp_path / "l.log").exists()


@pytest.mark.slow
def test_ddp_launcher_runs_the_offline_config_on_two_cpu_processes_and_resumes(tmp_path):
    """NPROC=2 with trainer=ddp_sim: torchrun, the Redis it starts itself, the production checkpoint
    directory; a second launch resumes from its last.ckpt. A token given on the command line (W&B
    offline on) is in neither the launch log nor any file of the runs, nor the console."""
    port = _free_port()
    env = script_env(NPROC=2, EXPERIMENT="", CKPT_DIR=tmp_path / "ckpt", LOG_FILE=tmp_path / "prod.log",
                     REDIS_PORT=port, REDIS_DATA_DIR=tmp_path / "redis", REDIS_PERSIST="no", MASTER_PORT=_free_port())
    secret = "hf_Zq9launchsecret"
    small = ["trainer=ddp_sim", "logger=many", f"+extra.hf_token={secret}", "gfn.n_samples=2", "task.max_len=8", "reward.answer.max_new_tokens=8",
             "+trainer.limit_val_batches=0", "final_probe_samples=0", "callbacks.model_checkpoint.every_n_train_steps=1",
             f"buffer.namespace=launch-{tmp_path.name}"]
    try:
        for i, steps in enumerate((2, 3)):
            env["RUN_DIR"] = str(tmp_path / f"run{i}")
            proc = subprocess.run(["bash", str(ROOT / "run_4gpu_ddp.sh"), *small, f"trainer.max_steps={steps}"],
                                  capture_output=True, text=True, env=env, timeout=1200)
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
            assert secret not in proc.stdout + proc.stderr
            assert torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)["global_step"] == steps
        files = [p for p in tmp_path.rglob("*") if p.is_file() and "redis" not in p.parts]
        assert (tmp_path / "prod.log") in files and any(p.suffix == ".wandb" for p in files)
        assert not [str(p) for p in files if secret.encode() in p.read_bytes()]
        log = (tmp_path / "prod.log").read_text()
        assert "starting fresh" in log and f"resuming from {tmp_path}/ckpt/last.ckpt" in log
        assert log.count("Starting with 2 processes") == 2 and "distributed_backend=gloo" in log
        assert log.count("exit status 0") == 2
        import redis

        client = redis.Redis(port=port)
        assert list(client.scan_iter(f"launch-{tmp_path.name}:z:*"))  # the buffer was the Redis the script started
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)


def make_artifacts(root: Path) -> None:
    for d in ("checkpoints/s/exp1", "training_logs/s", "logs/sweeps/s", "logs/demo/runs/x", "production_checkpoints",
              "gflownet_copy/__pycache__", "data", "models"):
        (root / d).mkdir(parents=True)
    for f in ("checkpoints/s/exp1/last.ckpt", "experiment_summary.md", "experiment_summary.tex", "experiment_summary.png",
              "training_production.log", "production_checkpoints/last.ckpt", "data/edits.jsonl", "models/w.bin"):
        (root / f).write_text("x")


def test_clean_targeted_keeps_production_full_removes_all_generated(tmp_path, redis_server):
    make_artifacts(tmp_path)
    clean = lambda *a, **env: subprocess.run(["bash", str(ROOT / "scripts/clean.sh"), *a], capture_output=True, text=True,
                                             env=script_env(OUT_ROOT=tmp_path, **env), stdin=subprocess.DEVNULL, timeout=60)
    dry = clean("--full", "--dry-run")
    assert dry.returncode == 0 and "nothing removed" in dry.stdout and (tmp_path / "production_checkpoints").exists()
    refused = clean()
    assert refused.returncode == 1 and "--yes" in refused.stderr and (tmp_path / "checkpoints").exists()

    assert clean("--yes").returncode == 0
    gone = ["checkpoints", "training_logs", "logs/sweeps", "experiment_summary.md", "experiment_summary.tex", "experiment_summary.png"]
    assert not any((tmp_path / g).exists() for g in gone)
    kept = ["production_checkpoints/last.ckpt", "training_production.log", "logs/demo/runs/x", "data/edits.jsonl", "models/w.bin"]
    assert all((tmp_path / k).exists() for k in kept)

    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set("gfncleantest:z:1", "a")
    only = clean("--redis", "--yes", REDIS_URL=redis_server.url, REDIS_NAMESPACE="gfncleantest:")  # keys only, no files
    assert only.returncode == 0 and "removed 1 Redis keys" in only.stdout and "Redis keys only" in only.stdout
    assert (tmp_path / "production_checkpoints/last.ckpt").exists() and (tmp_path / "logs/demo/runs/x").exists()
    assert clean("--targeted", "--redis").returncode == 2
    client.set("gfncleantest:z:1", "a")
    client.set("gfncleantest:e:1", "b")
    client.set("other:key", "c")
    full = clean("--full", "--redis", "--yes", REDIS_URL=redis_server.url, REDIS_NAMESPACE="gfncleantest:")
    assert full.returncode == 0, full.stderr
    assert "removed 2 Redis keys" in full.stdout and client.get("other:key") == b"c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "gflownet_copy", "models"]
    assert not (tmp_path / "gflownet_copy/__pycache__").exists()


@pytest.mark.slow
def test_sbatch_script_launches_one_task_per_gpu_with_a_shared_password_protected_redis(tmp_path):
    """Run outside SLURM with SLURM's variables and a recording `srun`: the job's command line,
    the Redis it starts for all nodes, and resume from the production last.ckpt."""
    (tmp_path / "bin").mkdir()
    record = tmp_path / "srun.args"
    (tmp_path / "bin/srun").write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {record}\nenv | grep ^REDIS_URL= >> {record}\n")
    (tmp_path / "bin/srun").chmod(0o755)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/last.ckpt").write_text("x")
    port = _free_port()
    env = script_env(SLURM_JOB_ID=77, SLURM_JOB_NUM_NODES=2, SLURM_NTASKS_PER_NODE="4(x2)", SLURM_SUBMIT_DIR=ROOT,
                     SRUN=tmp_path / "bin/srun", CKPT_DIR=tmp_path / "ckpt", REDIS_PORT=port)
    try:
        proc = subprocess.run(["bash", str(ROOT / "scripts/slurm_multinode.sbatch"), "optimizer.lr=5e-5"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        args = record.read_text().splitlines()
        assert args[:2] == ["--kill-on-bad-exit=1", sys.executable]
        for a in ("train.py", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4", "experiment=full_scale",
                  f"ckpt_path={tmp_path}/ckpt/last.ckpt", "optimizer.lr=5e-5", f"hydra.run.dir={ROOT}/logs/slurm/77"):
            assert a in args, a
        url = next(a for a in args if a.startswith("REDIS_URL="))[len("REDIS_URL="):]
        import redis

        assert redis.Redis.from_url(url).ping()  # reachable with the generated password ...
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()  # ... and not without it
    finally:
        subprocess.run(["bash", "-c", f"REDISCLI_AUTH=$(grep -o ':[0-9a-f]\\{{32\\}}@' {record} | tr -d ':@') redis-cli -p {port} shutdown nosave"],
                       capture_output=True)
        import shutil

        shutil.rmtree(ROOT / ".redis-slurm" / "77", ignore_errors=True)


def test_summary_curves_show_each_tasks_own_figures(tmp_path):
    """The curve panels are the generic four (log R trained and held out, diversity, length) and the
    task's own first two: a contradiction run shows its held-out contradiction rate and log C, a
    function-task run its reward component; a panel without data is not drawn."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from summarize import Run, curve_panels, plot

    pts = [(0, 1.0), (1, 2.0)]
    edit = Run("edit", tmp_path, {})
    edit.curves = {k: pts for k in ("train/fresh/avg_log_reward_unscaled", "val/avg_log_reward_unscaled", "val/semantic_diversity",
                                    "train/fresh/avg_length", "val/contradiction_rate", "train/fresh/avg_log_contradiction",
                                    "train/fresh/avg_log_likelihood")}
    keys = [k for k, _, _ in curve_panels([edit], 5)]
    assert keys == ["train/fresh/avg_log_reward_unscaled", "val/avg_log_reward_unscaled", "val/semantic_diversity",
                    "train/fresh/avg_length", "val/contradiction_rate", "train/fresh/avg_log_contradiction"]
    fn = Run("fn", tmp_path, {})
    fn.curves = {k: pts for k in ("train/fresh/avg_log_reward_unscaled", "train/fresh/semantic_diversity", "train/fresh/avg_reward_fn")}
    keys = [k for k, _, _ in curve_panels([fn], 5)]
    assert keys[2] == "train/fresh/semantic_diversity" and keys[4:] == ["train/fresh/avg_reward_fn"]
    plot([fn], tmp_path / "curves.png", 5)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
