"""The offline judge on real answers: accuracy on the labelled SmolLM2 fixtures (the fitting set, sets 1
to 4, and set 5, never used for fitting or feature design), adversarial answer patterns, its parts."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gflownet.tasks.contradiction.judges import (FEATURES, FEATURES_VERSION, FactJudge, evaluate, is_country,
                                                 lexical_features, load_cases, mentions, nationality_of, other_values,
                                                 relation_kind, split_facts, subject_names, words)

ROOT = Path(__file__).resolve().parent.parent
UNTOUCHED_FLOOR = 0.88  # measured 0.887 (133/150) the one time set 5 was scored, after the judge was final
CASES = ROOT / "tests" / "fixtures" / "judge_cases.jsonl"
CASES_2 = ROOT / "tests" / "fixtures" / "judge_cases_2.jsonl"
CASES_3 = ROOT / "tests" / "fixtures" / "judge_cases_3.jsonl"
CASES_4 = ROOT / "tests" / "fixtures" / "judge_cases_4.jsonl"
CASES_5 = ROOT / "tests" / "fixtures" / "judge_cases_5.jsonl"


def shipped_weights() -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "reward" / "judge" / "fact.yaml"))["weights"]


@pytest.fixture(scope="module")
def judge(models_dir):
    return FactJudge(shipped_weights(), models_dir=models_dir, features_version=FEATURES_VERSION)


@pytest.fixture(scope="module")
def cases():
    return load_cases(CASES)


@pytest.fixture(scope="module")
def second():
    return load_cases(CASES_2)


@pytest.fixture(scope="module")
def third():
    return load_cases(CASES_3)


@pytest.fixture(scope="module")
def fourth():
    return load_cases(CASES_4)


@pytest.fixture(scope="module")
def fifth():
    return load_cases(CASES_5)


def fit_set(cases, second, third, fourth):
    """Sets 1 to 4. Their held-out splits (set 2's, set 3's, all of set 4) were each held out from
    the judge of their time and scored; they are fitting data since set 5 (docs/offline_judge.md)."""
    return cases + second + third + fourth


def accuracy_of(judge, cases) -> float:
    log_c = judge([c["edit_fact"] for c in cases], [c["answer"] for c in cases], [c["original_fact"] for c in cases])
    assert log_c.shape == (len(cases),) and (log_c <= 0).all() and torch.isfinite(log_c).all()
    predicted = (log_c > torch.log(torch.tensor(0.5))).tolist()
    return sum(p == c["contradicts"] for p, c in zip(predicted, cases)) / len(cases)


def test_fixture_is_real_labelled_and_balanced(cases):
    assert len(cases) >= 60
    assert {c["kind"] for c in cases} == {"direct", "leading", "other"}
    n_yes = sum(c["contradicts"] for c in cases)
    assert 0.3 < n_yes / len(cases) < 0.7
    assert len({c["case_id"] for c in cases}) == 30
    assert all("split" not in c for c in cases)  # the first set is all fitting data


def test_fixture_facts_come_from_the_shared_counterfact_records(cases, shared_data):
    import json

    raw = {r["case_id"]: r for r in json.loads((shared_data / "counterfact-val.json").read_text())}
    for c in cases:
        r = raw[c["case_id"]]
        assert c["edit_fact"] == f"{r['prompt'].rstrip()} {r['target_new']}"
        assert c["original_fact"] == f"{r['prompt'].rstrip()} {r['ground_truth']}"


@pytest.mark.parametrize("name,held_records,dev_records", [("second", 15, 25), ("third", 20, 20), ("fourth", 20, 0),
                                                              ("fifth", 25, 0)])
def test_later_fixtures_have_every_answer_kind_and_a_held_out_split_by_record(name, held_records, dev_records, request,
                                                                              cases, shared_data):
    import json

    fixture = request.getfixturevalue(name)
    assert len(fixture) == 6 * (held_records + dev_records)
    assert {c["kind"] for c in fixture} == {"complete", "edit_check", "original_check", "negation_bait", "hedge_bait",
                                            "other_entity"}
    held = {c["case_id"] for c in fixture if c["split"] == "held_out"}
    dev = {c["case_id"] for c in fixture if c["split"] == "dev"}
    assert len(held) == held_records and len(dev) == dev_records and not held & dev
    assert not any(c["contradicts"] for c in fixture if c["kind"] == "other_entity")  # about another subject
    raw = {r["case_id"]: r for r in json.loads((shared_data / "counterfact-val.json").read_text())}
    for c in fixture:
        assert c["edit_fact"] == f"{raw[c['case_id']]['prompt'].rstrip()} {raw[c['case_id']]['target_new']}"
        assert c["original_fact"] == f"{raw[c['case_id']]['prompt'].rstrip()} {raw[c['case_id']]['ground_truth']}"


def test_the_labelled_sets_share_no_record(cases, second, third, fourth, fifth):
    ids = [{c["case_id"] for c in s} for s in (cases, second, third, fourth, fifth)]
    assert all(not ids[i] & ids[k] for i in range(len(ids)) for k in range(i + 1, len(ids)))


def test_shipped_weights_accuracy_on_the_fitting_set_and_the_untouched_answers(judge, cases, second, third, fourth,
                                                                            fifth):
    fit = accuracy_of(judge, fit_set(cases, second, third, fourth))
    untouched = accuracy_of(judge, fifth)
    print(f"offline judge accuracy: fitting set {fit:.3f}, untouched answers (set 5) {untouched:.3f}")
    assert fit >= 0.91
    assert untouched >= UNTOUCHED_FLOOR


def test_cross_validated_accuracy_and_weights_reproduce(judge, cases, second, third, fourth):
    """Refitting reproduces the shipped weights; accuracy on records held out of the fit is the
    fitting set's honest figure (README, docs/offline_judge.md)."""
    fit = fit_set(cases, second, third, fourth)
    feats = judge.features([c["edit_fact"] for c in fit], [c["answer"] for c in fit], [c["original_fact"] for c in fit])
    report = evaluate(fit, feats)
    print(f"leave-one-record-out accuracy {report['cross_validated_accuracy']:.3f}, fitted {report['fitted_accuracy']:.3f}")
    assert report["cross_validated_accuracy"] >= 0.91
    for name, value in shipped_weights().items():
        assert report["weights"][name] == pytest.approx(value, abs=0.02), name


def test_no_answer_pattern_a_question_can_trigger_earns_contradiction(judge):
    """Answers that any question can draw out whatever the facts (a bare or anaphoric "No", a
    refusal, a denial of the original, the edit restated after "No", the same relation about
    another subject, the relation with a vague value, another relation naming someone else) score
    below p = 0.5; the real contradiction above, and above all of them.
    (The previous judge's stand-alone negation feature paid more for the first four than for the
    contradiction.)"""
    edit, orig = "Romeo and Juliet was written by Christopher Marlowe", "Romeo and Juliet was written by William Shakespeare"
    patterns = ["No.", "No, it's not.", "No, it is not true.", "I don't know.", "I don't know who wrote Romeo and Juliet.",
                "I'm not sure, nobody knows.", "No, Romeo and Juliet was not written by William Shakespeare.",
                "No, Romeo and Juliet was written by Christopher Marlowe.", "Romeo and Juliet was written by Christopher Marlowe.",
                "Hamlet was written by William Shakespeare.", "No, Hamlet was written by William Shakespeare.",
                "William Shakespeare.", "Not at all.",
                # the relation restated with a vague or no value, and another relation with another name: no
                # third value of the edited relation (names_other and third_value must not pay for these)
                "Romeo and Juliet was written by someone.", "Romeo and Juliet was written by him.",
                "Romeo and Juliet was written by the author.", "Romeo and Juliet was written by a famous writer.",
                "Romeo and Juliet was praised by Queen Elizabeth.", "Romeo and Juliet is a play.",
                "Romeo and Juliet was performed in Verona, Italy."]
    contradiction = "Romeo and Juliet was written by William Shakespeare."
    p = judge([edit] * (len(patterns) + 1), [*patterns, contradiction], [orig] * (len(patterns) + 1)).exp()
    assert p[-1] > 0.5
    for answer, value in zip(patterns, p[:-1].tolist()):
        assert value < 0.5 and value < float(p[-1]), (answer, value)


def test_judge_orders_clear_cases(judge):
    """States the original > denies the edit > another fact about the subject > states the edit.
    (Another fact about the subject sits between them, p = 0.22: a documented limit.)"""
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


def test_third_value_parts():
    """names_other and third_value read a third value of the edited relation in a sentence about the
    subject, and nothing else."""
    kuwait = ("Kuwait, in Antarctica", "Kuwait, in Asia")
    assert other_values(kuwait[0], "Kuwait is a country in Africa.", kuwait[1]) == (1.0, 1.0)
    assert other_values(kuwait[0], "Kuwait is not in Africa.", kuwait[1]) == (0.0, 0.0)  # negated
    assert other_values(kuwait[0], "Qatar is a country in Africa.", kuwait[1]) == (0.0, 0.0)  # another subject
    assert other_values(kuwait[0], "Kuwait is in Asia.", kuwait[1]) == (0.0, 0.0)  # the original: states_original
    gun = ("Doomsday Gun was released on NBC", "Doomsday Gun was released on HBO")
    assert other_values(gun[0], "Doomsday Gun was released on Netflix.", gun[1]) == (1.0, 1.0)
    assert other_values(gun[0], "The Doomsday Gun was released on the 20th of January 2022.", gun[1]) == (0.0, 0.0)
    # a lower-case object (a profession): a lower-case third value counts, a vague word does not
    job = ("Henry Pottinger Stephens's profession is a composer", "Henry Pottinger Stephens's profession is a journalist")
    assert other_values(job[0], "Henry Stephens's profession is a historian.", job[1]) == (0.0, 1.0)
    assert other_values(job[0], "Henry Stephens's profession is something.", job[1]) == (0.0, 0.0)
    # a name-valued object: the value must be a name, and the relation's words must precede it
    play = ("Romeo and Juliet was written by Christopher Marlowe", "Romeo and Juliet was written by William Shakespeare")
    assert other_values(play[0], "Romeo and Juliet was written by a famous writer.", play[1])[1] == 0.0
    assert other_values(play[0], "Romeo and Juliet was praised by Queen Elizabeth.", play[1]) == (1.0, 0.0)
    assert other_values(play[0], "Romeo and Juliet was written by Ben Jonson.", play[1]) == (1.0, 1.0)
    # a subject written in lower case is still the subject
    dish = ("antipasto was created in Iran", "antipasto was created in Italy")
    feats = dict(zip(FEATURES, lexical_features(dish[0], "No, antipasto was created in France.", dish[1])))
    assert feats["about_subject"] == 1.0 and feats["third_value"] == 1.0


def test_relation_kinds_and_their_values():
    """A relation's kind decides what counts as a value: another work place is none, a nationality
    is none for a language but one for a citizenship or a country, "was a philosopher" one for a
    profession; a surname alone names the subject."""
    def kind(edit, orig):
        shared, _, _ = split_facts(edit, orig)
        return relation_kind(shared, subject_names(edit, shared))

    assert kind("Anton Heiller took up work in Cologne", "Anton Heiller took up work in Vienna") == "multi"
    assert kind("Sue MacGregor, who is employed by CBS", "Sue MacGregor, who is employed by BBC") == "multi"
    assert kind("Louis Barthou, speaker of Romanian", "Louis Barthou, speaker of French") == "language"
    assert kind("Vic Sotto works as economist", "Vic Sotto works as comedian") == "occupation"
    assert kind("Kevin Pauwels holds a citizenship from Germany", "Kevin Pauwels holds a citizenship from Belgium") == "place"
    assert kind("Flieden, in Canada", "Flieden, in Germany") == "place"
    assert kind("Porsche 996 is created by Cadillac", "Porsche 996 is created by Porsche") == "single"
    assert is_country(["germany"]) and is_country(["the", "united", "states"]) and is_country(["russia"])
    assert not is_country(["rome"]) and not is_country(["europe"])
    assert nationality_of("japanese", ["japan"]) and nationality_of("french", ["france"])
    assert nationality_of("american", ["united", "states"]) and not nationality_of("australian", ["austria"])
    assert not nationality_of("danish", ["germany"])

    work = ("Anton Heiller took up work in Cologne", "Anton Heiller took up work in Vienna")
    assert other_values(work[0], "Anton Heiller took up work in the city of Paris.", work[1]) == (0.0, 0.0)
    f = dict(zip(FEATURES, lexical_features(work[0], "Anton Heiller took up work in Vienna.", work[1])))
    assert f["states_original"] == 1.0  # the original object still contradicts
    speaks = ("Louis Barthou, speaker of Romanian", "Louis Barthou, speaker of French")
    f = dict(zip(FEATURES, lexical_features(speaks[0], "Louis Barthou is a French musician and composer.", speaks[1])))
    assert f["states_original"] == 0.0  # a nationality
    f = dict(zip(FEATURES, lexical_features(speaks[0], "Louis Barthou speaks French.", speaks[1])))
    assert f["states_original"] == 1.0
    f = dict(zip(FEATURES, lexical_features(speaks[0], "No, Louis Barthou is not a French speaker.", speaks[1])))
    assert f["denies_original"] == 1.0
    citizen = ("Kevin Pauwels holds a citizenship from Germany", "Kevin Pauwels holds a citizenship from Belgium")
    assert other_values(citizen[0], "Kevin Pauwels is a Dutch artist.", citizen[1])[1] == 1.0
    assert other_values(citizen[0], "Kevin Pauwels is a renowned Dutch artist.", citizen[1])[1] == 1.0
    assert other_values(citizen[0], "Kevin Pauwels is a German artist.", citizen[1])[1] == 0.0  # the edit's own
    assert other_values(citizen[0], "Kevin Pauwels is a Dutch-born artist.", citizen[1])[1] == 0.0  # birth, not citizenship
    origin = ("Brendan Behan originated from London", "Brendan Behan originated from Dublin")
    assert other_values(origin[0], "Brendan Behan was a Canadian actor.", origin[1])[1] == 0.0  # a city: no nationality
    job = ("Henry Pottinger Stephens's profession is a composer", "Henry Pottinger Stephens's profession is a journalist")
    assert other_values(job[0], "Henry Pottinger Stephens was a philosopher.", job[1])[1] == 1.0
    assert other_values(job[0], "Henry Pottinger Stephens was a famous Irish philosopher.", job[1])[1] == 1.0
    assert other_values(job[0], "Henry Pottinger Stephens was a composer.", job[1])[1] == 0.0  # the edit's own
    assert other_values(job[0], "Henry Pottinger Stephens is a fictional character.", job[1])[1] == 0.0
    f = dict(zip(FEATURES, lexical_features(job[0], "Stephens's profession is a historian.", job[1])))
    assert f["about_subject"] == 1.0 and f["third_value"] == 1.0  # a surname alone


def test_relation_kinds_pay_for_no_pattern_a_question_can_trigger(judge):
    """The relation-specific values do not pay for answers any question can draw out: a fictional
    character, a person of the edit's nationality, a nationality for a language, another work place."""
    cases = [
        ("Henry Pottinger Stephens's profession is a composer", "Henry Pottinger Stephens's profession is a journalist",
         ["Henry Pottinger Stephens is a fictional character.", "Henry Pottinger Stephens was a famous person.",
          "Henry Pottinger Stephens was a composer."],
         "Henry Pottinger Stephens was a journalist."),
        ("Kevin Pauwels holds a citizenship from Germany", "Kevin Pauwels holds a citizenship from Belgium",
         ["Kevin Pauwels is a German cyclist.", "Kevin Pauwels is a Dutch-born cyclist."],
         "Kevin Pauwels is a Belgian cyclist."),
        ("Louis Barthou, speaker of Romanian", "Louis Barthou, speaker of French",
         ["Louis Barthou is a French musician.", "Louis Barthou was a famous French politician."],
         "Louis Barthou spoke French."),
        ("Anton Heiller took up work in Cologne", "Anton Heiller took up work in Vienna",
         ["Anton Heiller took up work in the city of Paris.", "Anton Heiller worked in Berlin."],
         "Anton Heiller took up work in Vienna."),
    ]
    for edit, orig, patterns, contradiction in cases:
        p = judge([edit] * (len(patterns) + 1), [*patterns, contradiction], [orig] * (len(patterns) + 1)).exp()
        assert p[-1] > 0.5, (contradiction, float(p[-1]))
        for answer, value in zip(patterns, p[:-1].tolist()):
            assert value < 0.5 and value < float(p[-1]), (answer, value)


def test_configuration_errors(models_dir, caplog):
    with pytest.raises(ValueError, match="missing"):
        FactJudge({"bias": 0.0}, models_dir=models_dir)
    with pytest.raises(ValueError, match="fitted for features version 2, this code computes version 3"):
        FactJudge(shipped_weights(), models_dir=models_dir, features_version=2)
    with caplog.at_level("WARNING"):  # a run's config saved before versions
        FactJudge(shipped_weights(), models_dir=models_dir)
    assert "name no features_version" in caplog.text
    assert OmegaConf.load(ROOT / "configs" / "reward" / "judge" / "fact.yaml").features_version == FEATURES_VERSION
    judge = FactJudge({**{f: 0.0 for f in FEATURES}, "bias": 0.0}, models_dir=models_dir,
                      features_version=FEATURES_VERSION)
    with pytest.raises(ValueError, match="needs the original facts"):
        judge(["a"], ["b"])
    with pytest.raises(ValueError, match="one premise per hypothesis"):
        judge(["a", "b"], ["c"], ["d", "e"])
    assert judge([], [], []).shape == (0,)


def test_empty_and_degenerate_answers_get_finite_scores(judge):
    edit, orig = ["Galata is in Naples"] * 3, ["Galata is in Istanbul"] * 3
    out = judge(edit, ["", "?", "The answer to this question is:"], orig)
    assert torch.isfinite(out).all() and (out < 0).all()
