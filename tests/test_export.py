"""scripts/export.py and scripts/sample.py: the trained sampler as a PEFT adapter directory or a merged
model, and scored samples from it for any records."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


@pytest.mark.slow
def test_export_writes_an_adapter_and_a_merged_model_that_load_as_the_trained_sampler(tmp_path):
    """scripts/export.py: PeftModel.from_pretrained(base, DIR) and, with --merged, a plain
    from_pretrained give the trained sampler's logits (which differ from the base model's)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gflownet.core.modeling import load_causal_lm
    from gflownet.runner import build_module
    from omegaconf import OmegaConf
    from tests.test_pipeline import train_tiny_run

    run = train_tiny_run(tmp_path, "trainer.max_steps=3", "optimizer.lr=1e-2")
    script = [sys.executable, str(ROOT / "scripts" / "export.py"), "--run-dir", str(run)]
    for extra, out in [([], tmp_path / "adapter"), (["--merged"], tmp_path / "merged")]:
        proc = subprocess.run([*script, "--out", str(out), *extra], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    module = build_module(cfg)
    module.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"], strict=False)
    ids = torch.tensor([[464, 3290, 318, 257, 1332, 30]])
    with torch.no_grad():
        trained = module.sampler(input_ids=ids).logits
        base = load_causal_lm("packaged:tiny-gpt2", cfg.paths.models_dir)
        plain = base(input_ids=ids).logits
        adapter = PeftModel.from_pretrained(base, tmp_path / "adapter")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
    assert (trained - plain).abs().max() > 1e-4  # training moved the sampler
    torch.testing.assert_close(adapter, trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=1e-4)
    info = json.loads((tmp_path / "adapter" / "sampler.json").read_text())
    assert info["kind"] == "adapter" and info["global_step"] == 3 and info["termination_text"] == "?"
    again = subprocess.run([*script, "--out", str(tmp_path / "adapter")], capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "is not empty" in again.stderr


@pytest.mark.slow
def test_sample_script_draws_scored_samples_for_the_runs_records_and_for_other_records(tmp_path):
    """scripts/sample.py: n samples per record with the run's reward (log R = log C + w log P for the
    contradiction reward, checked per sample), as JSON lines and CSV; --data reads other records."""
    import csv

    from omegaconf import OmegaConf

    from tests.test_pipeline import train_tiny_run

    run = train_tiny_run(tmp_path, "trainer.max_steps=2")
    script = [sys.executable, str(ROOT / "scripts" / "sample.py"), "--run-dir", str(run), "--n", "3"]
    proc = subprocess.run([*script, "--out", str(tmp_path / "s.jsonl"), "--csv", str(tmp_path / "s.csv")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    w = OmegaConf.load(run / ".hydra" / "config.yaml").reward.likelihood_weight
    assert len(rows) == 2 * 3 and len({r["record"] for r in rows}) == 2  # data.val_size=2 held-out records
    for r in rows:
        assert r["sample"].endswith("?") and r["log_prob"] < 0 and "answer" in r
        assert r["log_r"] == pytest.approx(r["log_contradiction"] + w * r["log_likelihood"], abs=1e-4)
    assert len(list(csv.DictReader(open(tmp_path / "s.csv")))) == 6
    other = tmp_path / "other.jsonl"
    other.write_text("".join((ROOT / "data" / "example_edits.jsonl").read_text().splitlines(True)[:4]))
    proc = subprocess.run([*script, "--data", str(other), "--out", str(tmp_path / "o.jsonl")], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 4 * 3
