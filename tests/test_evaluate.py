"""scripts/evaluate.py end to end on a 2-step tiny GPT-2 run, and its glitch screen."""

import json
import subprocess
import sys

from tests.conftest import ROOT
from tests.test_pipeline import FAST

sys.path.insert(0, str(ROOT / "scripts"))
from evaluate import is_glitchy  # noqa: E402


def test_glitch_screen():
    assert not is_glitchy("Who wrote Romeo and Juliet... and why?")
    assert is_glitchy("@theunaemotive@theunaemotive@3am?")
    assert is_glitchy("available.renciesillrunetteseralance Rewards?")
    assert is_glitchy("bad \ufffd byte?")


def test_evaluate_writes_json_and_markdown_for_three_variants(tmp_path):
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), *FAST, "trainer.max_steps=2", f"hydra.run.dir={run}"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "2",
                           "--max-records", "2", "--out", str(tmp_path / "eval")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(report["results"]) == {"trained", "untrained", "plain_prompting"}
    for res in report["results"].values():
        assert res["questions"] == 4 and 0.0 <= res["contradiction_rate"] <= 1.0 and res["mean_length"] > 0
    assert report["meta"]["judge"].endswith("FactJudge")
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| trained |" in table and "| plain_prompting |" in table
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "must be a training run's output directory" in bad.stderr
