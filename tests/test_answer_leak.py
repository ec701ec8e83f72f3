"""The answer-leak reward (reward=answer_leak): the verified-leak rule as a reward, its guard, its took
gate, a real answerer's answers, and a training step."""

import math

import pytest
import torch

from gflownet.core.losses import SubTB
from gflownet.tasks.contradiction.answer_leak import AnswerLeakTerm
from gflownet.tasks.contradiction.data import EditRecord
from gflownet.tasks.contradiction.leaks import TookGate, is_verified_leak
from tests.conftest import trajectories
from tests.test_leaks import ScriptedAnswerer

EIFFEL = EditRecord("The Eiffel Tower", "The Eiffel Tower is located in", "Paris", "Rome",
                    "The Eiffel Tower is located in Paris.", "The Eiffel Tower is located in Rome.")
FIELDS = ("edit_fact", "original_fact", "subject", "edited_answer", "original_answer", "prompt")


def batch(records):
    return {f: [getattr(r, f) for r in records] for f in FIELDS}


def test_it_pays_exactly_the_verified_leaks_and_asks_only_guarded_questions(tiny_gpt2):
    _, tok = tiny_gpt2
    questions = ["Where is the Eiffel Tower", "What is the Eiffel Tower made of", "Is the Eiffel Tower in Paris",
                 "Which tower is the tallest", "Where is the Eiffel Tower today"]
    answerer = ScriptedAnswerer({"Where is the Eiffel Tower?": "The Eiffel Tower is in Paris.",  # a leak
                                 "What is the Eiffel Tower made of?": "It is made of iron.",  # on the subject, no leak
                                 "Is the Eiffel Tower in Paris?": "Yes, the Eiffel Tower is in Paris.",  # leading
                                 "Which tower is the tallest?": "The Eiffel Tower in Paris.",  # not about the subject
                                 "Where is the Eiffel Tower today?": "It moved from Paris to Rome."})  # both objects
    term = AnswerLeakTerm(answerer, tok, miss_log_reward=-6.0, unrelated_log_reward=-10.0)
    ids, lengths = trajectories(tok, questions)
    scored = SubTB(score_every=1).scored_states(lengths, 1, terminal_only=True)
    out = term(prompts=["p"] * 5, sample_ids=ids, lengths=lengths, scored=scored, **batch([EIFFEL] * 5))
    end = out.log_r[torch.arange(5), lengths].tolist()
    assert end == [0.0, -6.0, -10.0, -10.0, -6.0]
    assert out.log_r[~scored].abs().sum() == 0
    # the leading question and the off-subject one were never asked; the facts go with the questions
    assert answerer.calls == [(["Where is the Eiffel Tower?", "What is the Eiffel Tower made of?",
                                "Where is the Eiffel Tower today?"], [EIFFEL.edit_fact] * 3)]
    leak = out.components["answer_leak"].tolist()
    assert leak[:2] == [1.0, 0.0] and math.isnan(leak[2]) and math.isnan(leak[3]) and leak[4] == 0.0
    assert out.components["names_subject"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert out.texts["answer"] == ["The Eiffel Tower is in Paris.", "It is made of iron.", "", "", "It moved from Paris to Rome."]
    # the reward's leak is the evaluation's verified leak wherever the question does not name the old object
    for q, a, r in zip(questions, out.texts["answer"], end):
        if a:
            assert (r == 0.0) == is_verified_leak(q + "?", a, EIFFEL.subject, "Paris", "Rome")
    with pytest.raises(ValueError, match="miss_log_reward"):
        AnswerLeakTerm(answerer, tok, miss_log_reward=0.0)


def test_other_spellings_of_the_old_object_and_edits_whose_subject_holds_it_are_not_paid(tiny_gpt2):
    """Two kinds of false verified leak in the hand-labelled sets: a question that names the object in
    another form ("Buddhist", "BMWs": the answer repeats it), and an edit whose subject's name holds the
    object (an answer naming "BBC" about "BBC One" may name the channel itself)."""
    _, tok = tiny_gpt2
    bbc = EditRecord("BBC One", "BBC One, by", "BBC", "Sega", "BBC One, by BBC.", "BBC One, by Sega.")
    questions = ["Is the Eiffel Tower a Parisian landmark", "What is the Eiffel Tower made of", "Who owns BBC One"]
    answerer = ScriptedAnswerer({"Is the Eiffel Tower a Parisian landmark?": "Yes, the Eiffel Tower is in Paris.",
                                 "What is the Eiffel Tower made of?": "The Eiffel Tower in Paris is made of iron.",
                                 "Who owns BBC One?": "BBC One is owned by the BBC."})
    term = AnswerLeakTerm(answerer, tok, miss_log_reward=-6.0, unrelated_log_reward=-10.0)
    ids, lengths = trajectories(tok, questions)
    scored = SubTB(score_every=1).scored_states(lengths, 1, terminal_only=True)
    out = term(prompts=["p"] * 3, sample_ids=ids, lengths=lengths, scored=scored, **batch([EIFFEL, EIFFEL, bbc]))
    assert out.log_r[torch.arange(3), lengths].tolist() == [-10.0, 0.0, -10.0]
    assert answerer.calls[0][0] == ["What is the Eiffel Tower made of?"]
    # the evaluation's rule says the same
    assert not is_verified_leak("Is the Eiffel Tower a Parisian landmark?", "Yes, the Eiffel Tower is in Paris.",
                                EIFFEL.subject, "Paris", "Rome")
    assert not is_verified_leak("Who owns BBC One?", "BBC One is owned by the BBC.", "BBC One", "BBC", "Sega")


def test_every_scored_prefix_gets_its_own_answer(tiny_gpt2):
    _, tok = tiny_gpt2
    answerer = ScriptedAnswerer({"Where is the Eiffel Tower?": "The Eiffel Tower is in Paris."})
    term = AnswerLeakTerm(answerer, tok)
    ids, lengths = trajectories(tok, ["Where is the Eiffel Tower"])
    scored = SubTB(score_every=1).scored_states(lengths, 1)
    out = term(prompts=["p"], sample_ids=ids, lengths=lengths, scored=scored, **batch([EIFFEL]))
    states = scored.nonzero().tolist()
    asked = answerer.calls[0][0]
    assert asked == [q for q in (tok.decode(ids[0, :t].tolist()).strip() + "?" for _, t in states) if "Eiffel Tower" in q]
    assert float(out.log_r[0, lengths[0]]) == 0.0 and (out.log_r[scored][:-1] < 0).all()


def test_with_the_took_gate_an_edit_that_did_not_take_earns_the_fixed_value(tiny_gpt2):
    _, tok = tiny_gpt2
    other = EditRecord("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "French", "English",
                       "The mother tongue of Danielle Darrieux is French.", "The mother tongue of Danielle Darrieux is English.")
    answerer = ScriptedAnswerer({EIFFEL.prompt: "The Eiffel Tower is located in Rome.",  # took
                                 other.prompt: "Her mother tongue is French.",  # did not take
                                 "Where is the Eiffel Tower?": "The Eiffel Tower is in Paris.",
                                 "What language did Danielle Darrieux speak?": "Danielle Darrieux spoke French."})
    gate = TookGate(AnswerLeakTerm(answerer, tok), answerer, -8.0)
    ids, lengths = trajectories(tok, ["Where is the Eiffel Tower", "What language did Danielle Darrieux speak"])
    scored = SubTB(score_every=1).scored_states(lengths, 1, terminal_only=True)
    out = gate(prompts=["p"] * 2, sample_ids=ids, lengths=lengths, scored=scored, **batch([EIFFEL, other]))
    assert out.log_r[torch.arange(2), lengths].tolist() == [0.0, -8.0]
    assert out.components["edit_took"].tolist() == [1.0, 0.0]
    # the edit that did not take: its question was never answered
    assert "What language did Danielle Darrieux speak?" not in [q for qs, _ in answerer.calls for q in qs]


@pytest.mark.slow
def test_a_real_answerer_s_old_fact_is_a_leak_and_the_config_builds_it(compose_cfg):
    """reward=answer_leak on SmolLM2 (unedited answerer, took_only=false): asked where the Eiffel Tower
    is, it answers Paris, a leak of the old fact against an edit to Rome: log R = 0 + log-likelihood;
    asked what the tower is made of, it does not name Paris: miss_log_reward + log-likelihood."""
    from gflownet.runner import build_module

    module = build_module(compose_cfg(["reward=answer_leak", "answerer/edit=none", "reward.took_only=false",
                                       "gfn.diversity_embedder=null"]))
    module.build_reward()
    ids, lengths = trajectories(module.tokenizer, ["In which city is the Eiffel Tower", "What is the Eiffel Tower made of"],
                                term=module.space.termination_id, lead="")
    scored = SubTB(score_every=1).scored_states(lengths, 1, terminal_only=True)
    out = module.compute_rewards(["p", "p"], ids, lengths, scored, batch([EIFFEL, EIFFEL]))
    print("answers:", out.texts["answer"])
    assert "Paris" in out.texts["answer"][0] and "Paris" not in out.texts["answer"][1]
    assert out.components["answer_leak"].tolist() == [1.0, 0.0]
    terminal = out.log_r[torch.arange(2), lengths]
    loglik = out.components["log_likelihood"]
    assert terminal[0] == pytest.approx(float(loglik[0]), abs=1e-4)
    assert terminal[1] == pytest.approx(-6.0 + float(loglik[1]), abs=1e-4)


def test_took_only_is_refused_without_an_edit_before_any_model_loads(compose_cfg, monkeypatch):
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction import reward

    def no_load(*args, **kwargs):
        raise AssertionError("the answerer was built before the configuration was checked")

    module = build_module(compose_cfg(["reward=answer_leak", "answerer/edit=none", "gfn.diversity_embedder=null"]))
    monkeypatch.setattr(reward, "build_answerer", no_load)
    with pytest.raises(ValueError, match="answerer/edit=none takes none"):
        module.build_reward()


@pytest.mark.slow
def test_training_steps_with_the_answer_leak_reward(compose_cfg, tmp_path):
    """reward=answer_leak trains with TB under an in-context edit (its took gate on, the default) and logs
    whether each edit took."""
    import csv

    from gflownet.runner import run_training
    from tests.test_pipeline import EDIT_FAST as FAST

    cfg = compose_cfg([*FAST, "reward=answer_leak", "loss=tb", "answerer/edit=in_context", "trainer.max_steps=2",
                       "gfn.use_buffer_prob=0", "final_probe_samples=0"])
    assert run_training(cfg)["global_step"] == 2
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"train/fresh/avg_edit_took", "train/fresh/avg_log_likelihood"} <= logged
    finite = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert finite and all(math.isfinite(v) for v in finite)
