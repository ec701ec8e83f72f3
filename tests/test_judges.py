"""The offline judge on real answers: accuracy on the labelled SmolLM2 fixture, and its parts."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gflownet.tasks.contradiction.judges import FEATURES, FactJudge, evaluate, load_cases, mentions, split_facts, words

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "fixtures" / "judge_cases.jsonl"


def shipped_weights() -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "reward" / "judge" / "fact.yaml"))["weights"]


@pytest.fixture(scope="module")
def judge(models_dir):
    return FactJudge(shipped_weights(), models_dir=models_dir)


@pytest.fixture(scope="module")
def cases():
    return load_cases(CASES)


def test_fixture_is_real_labelled_and_balanced(cases):
    assert len(cases) >= 60
    assert {c["kind"] for c in cases} == {"direct", "leading", "other"}
    n_yes = sum(c["contradicts"] for c in cases)
    assert 0.3 < n_yes / len(cases) < 0.7
    assert len({c["case_id"] for c in cases}) == 30


def test_fixture_facts_come_from_the_shared_counterfact_records(cases, shared_data):
    import json

    raw = {r["case_id"]: r for r in json.loads((shared_data / "counterfact-val.json").read_text())}
    for c in cases:
        r = raw[c["case_id"]]
        assert c["edit_fact"] == f"{r['prompt'].rstrip()} {r['target_new']}"
        assert c["original_fact"] == f"{r['prompt'].rstrip()} {r['ground_truth']}"


def test_shipped_weights_accuracy_on_the_labelled_answers(judge, cases):
    log_c = judge([c["edit_fact"] for c in cases], [c["answer"] for c in cases], [c["original_fact"] for c in cases])
    assert log_c.shape == (len(cases),) and (log_c <= 0).all() and torch.isfinite(log_c).all()
    predicted = (log_c > torch.log(torch.tensor(0.5))).tolist()
    accuracy = sum(p == c["contradicts"] for p, c in zip(predicted, cases)) / len(cases)
    print(f"offline judge accuracy on {len(cases)} labelled SmolLM2 answers: {accuracy:.3f}")
    assert accuracy >= 0.85


def test_cross_validated_accuracy_and_weights_reproduce(judge, cases):
    """Refitting reproduces the shipped weights; accuracy on records held out of the fit is the
    honest figure (README, docs/offline_judge.md)."""
    feats = judge.features([c["edit_fact"] for c in cases], [c["answer"] for c in cases], [c["original_fact"] for c in cases])
    report = evaluate(cases, feats)
    print(f"leave-one-record-out accuracy {report['cross_validated_accuracy']:.3f}, fitted {report['fitted_accuracy']:.3f}")
    assert report["cross_validated_accuracy"] >= 0.85
    for name, value in shipped_weights().items():
        assert report["weights"][name] == pytest.approx(value, abs=0.02), name


def test_judge_orders_clear_cases(judge):
    """States the original > denies the edit > another fact about the subject > states the edit.
    (Another fact about the subject sits near p = 0.5: a documented limit.)"""
    edit = ["The Eiffel Tower is located in Rome."] * 4
    orig = ["The Eiffel Tower is located in Paris."] * 4
    answers = ["The Eiffel Tower is located in Paris, France.", "The Eiffel Tower is located in Rome.",
               "No, the Eiffel Tower is not in Rome.", "The Eiffel Tower was built in 1889."]
    p = judge(edit, answers, orig).exp()
    assert p[0] > 0.5 and p[2] > 0.5 and p[1] < 0.5
    assert p[1] < p[3] < min(p[0], p[2])


def test_feature_parts():
    shared, e, o = split_facts("Google Ads is owned by Sony", "Google Ads is owned by Google")
    assert (e, o) == (["sony"], ["google"]) and shared == ["google", "ads", "is", "owned", "by"]
    assert mentions(words("Google Ads are sold like Google Ads."), o, shared) == 0.0  # the subject's name
    assert mentions(words("Google Ads is run by Google."), o, shared) == 1.0
    assert words("He didn't play") == ["he", "did", "not", "play"]
    shared, e, o = split_facts("Joe plays soccer.", "Joe plays baseball.")
    assert (e, o) == (["soccer"], ["baseball"])


def test_configuration_errors(models_dir):
    with pytest.raises(ValueError, match="missing"):
        FactJudge({"bias": 0.0}, models_dir=models_dir)
    judge = FactJudge({**{f: 0.0 for f in FEATURES}, "bias": 0.0}, models_dir=models_dir)
    with pytest.raises(ValueError, match="needs the original facts"):
        judge(["a"], ["b"])
    with pytest.raises(ValueError, match="one premise per hypothesis"):
        judge(["a", "b"], ["c"], ["d", "e"])
    assert judge([], [], []).shape == (0,)


def test_empty_and_degenerate_answers_get_finite_scores(judge):
    edit, orig = ["Galata is in Naples"] * 3, ["Galata is in Istanbul"] * 3
    out = judge(edit, ["", "?", "The answer to this question is:"], orig)
    assert torch.isfinite(out).all() and (out < 0).all()
