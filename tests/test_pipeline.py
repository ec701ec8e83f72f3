"""train.py's wiring end to end on the tiny GPT-2: train, log, checkpoint, resume."""

import csv
import subprocess
import sys

import pytest
import torch

from gflownet.runner import run_training
from tests.conftest import ROOT

FAST = [
    "model=tiny_gpt2", "logger=csv", "task.n_samples=3", "task.min_question_len=2", "task.max_question_len=6",
    "+trainer.limit_val_batches=1", "trainer.val_check_interval=2", "final_probe_questions=2",
    "callbacks.model_checkpoint.every_n_train_steps=1", "reward.answer.max_new_tokens=4", "data.val_size=2",
]


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
    assert state["gfn_state"]["buffer"] == {"kind": "memory"}
    logged = metrics(out)
    for name in ["train/loss", "train/avg_log_reward_scaled", "train/avg_log_reward_unscaled", "train/avg_question_len",
                 "train/avg_log_contradiction", "train/avg_log_likelihood", "scheduled/reward_temperature",
                 "scheduled/learning_rate", "val/contradiction_rate", "val/avg_question_len"]:
        assert name in logged, name

    resumed = compose_cfg([*FAST, *extra, "trainer.max_steps=5", f"ckpt_path={ckpt}"])
    assert run_training(resumed)["global_step"] == 5


def test_missing_checkpoint_is_a_clear_error(compose_cfg, tmp_path):
    cfg = compose_cfg([*FAST, f"ckpt_path={tmp_path}/nope.ckpt"])
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        run_training(cfg)


def test_train_py_runs_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Sampled questions after 2 steps" in proc.stdout
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_buffer_replay_across_epochs_logs_a_true_hit_rate(compose_cfg, tmp_path):
    """3 training records: several epochs; half the steps replay from the in-memory buffer."""
    cfg = compose_cfg([*FAST, "data.max_records=5", "task.use_buffer_prob=0.5", "trainer.max_steps=9"])
    run_training(cfg)
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    hit = [float(r["buffer/hit_rate"]) for r in rows if r.get("buffer/hit_rate")]
    epochs = {r["epoch"] for r in rows if r.get("epoch")}
    assert len(hit) == 9 and len(epochs) >= 3
    assert 0.0 < hit[-1] < 1.0 and all(0.0 <= h <= 1.0 for h in hit)
    sizes = [float(r["buffer/size"]) for r in rows if r.get("buffer/size")]
    assert max(sizes) > 0


def test_ddp_two_cpu_processes_smoke(tmp_path):
    """trainer=ddp_sim: 2 gloo processes take part in every rank-0 reward exchange without deadlock.
    (A smoke test: the per-rank assertions of the DDP issue are not here yet.)"""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST, "trainer=ddp_sim", "trainer.max_steps=3", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out
    assert "GLOBAL_RANK: 1" in out
    assert "global_step: 3" in out
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
