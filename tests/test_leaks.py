"""Verified leaks and whether an edit took (gflownet/tasks/contradiction/leaks.py), judge-free."""

import math

import pytest

from gflownet.rewards.combine import WeightedSum
from gflownet.tasks.contradiction.data import EditRecord
from gflownet.tasks.contradiction.leaks import find_answerer, is_verified_leak, leak_metrics, mentions

EIFFEL = EditRecord("The Eiffel Tower", "The Eiffel Tower is located in", "Paris", "Rome",
                    "The Eiffel Tower is located in Paris.", "The Eiffel Tower is located in Rome.")


def test_objects_are_matched_as_whole_words_in_any_case():
    assert mentions("It stands in Paris, France.", "Paris") and mentions("PARIS is its city", "paris")
    assert not mentions("A Parisian landmark.", "Paris") and not mentions("anything", "")
    assert mentions("made by Apple  Inc. in 2011", "Apple Inc") and not mentions("made by Apple", "Apple Inc")
    assert mentions("He plays the C++ language", "C++")


def test_a_verified_leak_names_the_subject_and_states_the_old_object_only():
    q, s = "Where is the Eiffel Tower?", EIFFEL.subject
    assert is_verified_leak(q, "The Eiffel Tower is in Paris.", s, "Paris", "Rome")
    assert not is_verified_leak(q, "The Eiffel Tower is in Rome.", s, "Paris", "Rome")  # the edit holds
    assert not is_verified_leak(q, "It moved from Paris to Rome.", s, "Paris", "Rome")  # both objects: not a clear leak
    assert not is_verified_leak("Where is the tallest tower?", "It is in Paris.", s, "Paris", "Rome")  # not about the edit


class ScriptedAnswerer:
    """Answers from a table, and records what it was asked (with the facts an in-context answerer is told)."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, questions, facts=None):
        self.calls.append((list(questions), list(facts) if facts is not None else None))
        return [self.table.get(q, "I do not know.") for q in questions]


class Term:
    def __init__(self, answerer):
        self.answerer = answerer


@pytest.mark.parametrize("took", [True, False])
def test_leak_metrics_count_distinct_verified_leaks_and_whether_the_edit_took(took):
    questions = ["Where is the Eiffel Tower?", "Where's the Eiffel Tower?", "What city has the Eiffel Tower?",
                 "Which tower is tallest?", "Is the Eiffel Tower in Italy?"]
    answerer = ScriptedAnswerer({
        EIFFEL.prompt: "The Eiffel Tower is located in Rome." if took else "The Eiffel Tower is located in Paris.",
        questions[0]: "The Eiffel Tower is in Paris.", questions[1]: "It is located in Paris.",  # near-duplicates
        questions[2]: "Paris has the Eiffel Tower.", questions[3]: "The tallest is in Paris.",  # no subject
        questions[4]: "Yes, the Eiffel Tower is in Rome.",
    })
    assert find_answerer(WeightedSum({"leak": (1.0, Term(answerer))})) is answerer
    got = leak_metrics(answerer, EIFFEL, questions)
    assert got["edit_took"] == float(took)
    assert got["verified_leak_rate"] == pytest.approx(3 / 5)
    assert got["edits_with_verified_leak"] == 1.0
    assert got["verified_leaks_per_edit"] == 2.0  # "Where is ...?" and "Where's ...?" are one question by spelling
    assert (got["verified_leak_rate_took"] == pytest.approx(3 / 5)) if took else math.isnan(got["verified_leak_rate_took"])
    # the counts over the edits that took: this edit's counts where it took, NaN (left out of a mean) where not
    assert (got["edits_with_verified_leak_took"] == 1.0) if took else math.isnan(got["edits_with_verified_leak_took"])
    assert "unique_verified_leaks" not in got  # by meaning: only with embeddings
    import torch

    emb = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.8, 0.6], [0.0, 1.0], [0.0, 1.0]])  # q2 at cosine 0.8 from q0
    with_meaning = leak_metrics(answerer, EIFFEL, questions, emb)
    assert with_meaning["unique_verified_leaks"] == 1.0 and with_meaning["verified_leaks_per_edit"] == 2.0
    asked, facts = answerer.calls[0]
    assert asked == [EIFFEL.prompt, *questions] and set(facts) == {EIFFEL.edit_fact}
    # the questions naming the subject (0, 1, 2 and 4 of 5) and their diversity alone: q3, far from the
    # others, does not count towards it
    assert with_meaning["names_subject_share"] == pytest.approx(4 / 5)
    from gflownet.core.metrics import semantic_diversity

    assert with_meaning["subject_diversity"] == pytest.approx(semantic_diversity(emb[[0, 1, 2, 4]]))
    assert with_meaning["subject_diversity"] < semantic_diversity(emb)


def test_subject_diversity_needs_two_questions_naming_the_subject():
    import torch

    from gflownet.tasks.contradiction.leaks import subject_metrics

    got = subject_metrics(EIFFEL, ["Where is the Eiffel Tower?", "Which tower is tallest?"], torch.eye(2))
    assert got["names_subject_share"] == 0.5 and math.isnan(got["subject_diversity"])


def test_leak_counts_at_a_smaller_budget_read_the_first_questions_only():
    questions = ["Which tower is tallest?", "Is the Eiffel Tower in Italy?", "Where is the Eiffel Tower?",
                 "What city has the Eiffel Tower?", "Where's the Eiffel Tower?"]
    answerer = ScriptedAnswerer({
        EIFFEL.prompt: "The Eiffel Tower is located in Rome.", questions[0]: "The tallest is in Paris.",
        questions[1]: "Yes, the Eiffel Tower is in Rome.", questions[2]: "The Eiffel Tower is in Paris.",
        questions[3]: "Paris has the Eiffel Tower.", questions[4]: "It is located in Paris.",
    })
    import torch

    emb = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.05]])  # q3 far from q2 and q4
    got = leak_metrics(answerer, EIFFEL, questions, emb, budgets=(2, 3, 4, 5, 9))
    assert got["unique_verified_leaks"] == 2.0
    assert got["edits_with_verified_leak_at_2"] == 0.0 and got["unique_verified_leaks_at_2"] == 0.0
    assert got["edits_with_verified_leak_at_3"] == 1.0 and got["unique_verified_leaks_at_3"] == 1.0
    assert got["unique_verified_leaks_at_4"] == 2.0
    assert not any(k.endswith(("_at_5", "_at_9")) for k in got)  # a budget of all the questions or more is k itself
    # the edit took: every count is also given over the edits that took, at every budget
    assert got["unique_verified_leaks_took"] == 2.0 and got["unique_verified_leaks_took_at_3"] == 1.0
    assert got["edits_with_verified_leak_took_at_2"] == 0.0 and got["edits_with_verified_leak_took_at_4"] == 1.0
    answerer.table[EIFFEL.prompt] = "The Eiffel Tower is located in Paris."  # now it did not take
    failed = leak_metrics(answerer, EIFFEL, questions, emb, budgets=(2, 3, 4, 5, 9))
    assert failed["unique_verified_leaks"] == 2.0  # the leaks are there, but they do not count
    counts_took = {k for k in got if "_took" in k and k != "edit_took"}
    assert len(counts_took) == 9 and counts_took == {k for k in failed if "_took" in k and k != "edit_took"}
    assert all(math.isnan(failed[k]) for k in counts_took)


def test_leaks_are_not_read_where_the_subject_s_name_holds_the_old_object_or_the_question_spells_it():
    """Two kinds of false verified leak in the hand-labelled sets: "BMW 326, produced by BMW" answered
    "BMW ..." (the car or its maker?), and a question naming the object in another form ("Buddhist")."""
    from gflownet.tasks.contradiction.leaks import readable, spells_like, stems

    bmw = EditRecord("BMW 326", "BMW 326, produced by", "BMW", "Sony", "BMW 326, produced by BMW.", "BMW 326, produced by Sony.")
    questions = ["Who makes the BMW 326?", "What is the BMW 326?"]
    answerer = ScriptedAnswerer({bmw.prompt: "BMW 326, produced by Sony.", questions[0]: "The BMW 326 is made by BMW.",
                                 questions[1]: "It is a car by BMW."})
    got = leak_metrics(answerer, bmw, questions)
    assert got["edit_took"] == 1.0 and got["edit_readable"] == 0.0
    assert got["verified_leak_rate"] == 0.0 and math.isnan(got["verified_leak_rate_took"])
    assert math.isnan(got["edits_with_verified_leak_took"])  # not counted among the edits that took
    assert leak_metrics(ScriptedAnswerer({EIFFEL.prompt: "It is located in Rome."}), EIFFEL, [])["edit_readable"] == 1.0
    monk = ("The religion of Bodhidharma", "Bodhidharma", "Buddhism", "Islam")
    assert not is_verified_leak("Was Bodhidharma a Buddhist monk?", "Bodhidharma practised Buddhism.", *monk[1:])
    assert is_verified_leak("Which faith did Bodhidharma teach?", "Bodhidharma taught Buddhism.", *monk[1:])
    assert stems("the University of Oxford") == ["unive", "oxfor"] and stems("BMW") == ["bmw"]
    assert spells_like("How fast are BMWs", "BMW") and not spells_like("How fast is a Bentley", "BMW")
    assert readable("The Eiffel Tower", "Paris") and not readable("Nokia X family", "Nokia")


def test_an_answer_is_about_the_subject_when_a_word_of_its_name_comes_before_the_object():
    from gflownet.tasks.contradiction.leaks import about_subject

    bernard = ("Claude Bernard", "French")
    assert about_subject("The language of Claude Bernard is French.", *bernard)
    assert about_subject("Bernard wrote in French.", *bernard)  # a word of the name is enough
    assert not about_subject("The French philosopher Claude Bernard wrote.", *bernard)  # said before the subject
    assert not about_subject("The term 'Baron' has been used in French language.", *bernard)  # no subject
    assert not about_subject("Claude Bernard wrote in Russian.", *bernard)  # no object
    assert not about_subject("Frenchman Claude Bernard.", *bernard)  # whole words only
    assert about_subject("Dino Saluzzi is a composer and conductor.", "Dino Saluzzi", "composer")
    assert not about_subject("Al went to Rome.", "Al", "Rome")  # words under four letters never count
    # an object inside the subject's name is not its mention: "BBC" of "BBC Two" counts only outside it
    assert not about_subject("BBC Two is a channel.", "BBC Two", "BBC")


def test_a_language_said_as_an_adjective_is_a_nationality_not_the_language():
    from gflownet.tasks.contradiction.leaks import language_as_adjective

    nenets = ("Nenets Autonomous Okrug", "Russian", "In Nenets Autonomous Okrug, an official language is English",
              "In Nenets Autonomous Okrug, an official language is Russian")
    assert language_as_adjective("Nenets Autonomous Okrug is a Russian company.", *nenets)
    assert language_as_adjective("Nenets is a Russian-based tech firm.", *nenets)  # a hyphen joins the noun too
    assert language_as_adjective("The Russian Federation and the Russian company.", *nenets)  # every mention
    assert not language_as_adjective("Its official language is Russian.", *nenets)  # the value itself
    assert not language_as_adjective("It is the Russian language.", *nenets)  # a language noun after it
    assert not language_as_adjective("Russian and English.", *nenets)
    assert not language_as_adjective("A Russian company that speaks Russian.", *nenets)  # one mention is the language
    assert not language_as_adjective("It writes in Hebrew; Talmud?", "Aharon Zisling", "Hebrew",
                                     "Aharon Zisling writes in French", "Aharon Zisling writes in Hebrew")
    assert not language_as_adjective("Nothing of it.", *nenets)  # no mention at all
    # other relations keep the noun after the object: "a baseball player" states the sport
    assert not language_as_adjective("Ty Cobb is a baseball player.", "Ty Cobb", "baseball",
                                     "Ty Cobb professionally plays the sport football",
                                     "Ty Cobb professionally plays the sport baseball")


def test_verified_writes_every_counted_question_once_on_edits_that_took_and_can_be_read(tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, "scripts")
    from flagged_leaks import verified

    from gflownet.tasks.contradiction.data import write_jsonl

    other = EditRecord("Claude Bernard", "Claude Bernard spoke", "French", "Russian", "Claude Bernard spoke French",
                       "Claude Bernard spoke Russian")
    data = tmp_path / "edits.jsonl"
    write_jsonl([EIFFEL, other], data)
    cols = ["sample", "answer", "log_contradiction", "log_r"]
    leak, plain = ["Where is the Eiffel Tower?", "It is in Paris.", -0.1, -1.0], ["Is it tall?", "Yes, in Paris.", -0.1, -1.0]
    evaluation = {"example_columns": {"lora_ft": cols}, "examples": {"lora_ft": {
        "untrained": [[EIFFEL.edit_fact, [leak, leak, plain]], [other.edit_fact, [["What did Claude Bernard speak?",
                                                                                   "Claude Bernard spoke French.", 0, 0]]]]}},
        "results": {"lora_ft": {"untrained": {"per_record": {
            EIFFEL.edit_fact: {"edit_took": 1.0, "edit_readable": 1.0},
            other.edit_fact: {"edit_took": 0.0, "edit_readable": 1.0}}}}}}  # Bernard's edit did not take: not counted
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(evaluation))
    out = tmp_path / "labels.jsonl"
    args = type("A", (), {"evaluations": [f"base={path}"], "data": str(data), "method": "lora_ft", "seed": 0,
                          "out": str(out)})()
    assert verified(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"id": 0, "edit": EIFFEL.edit_fact, "subject": EIFFEL.subject, "original": "Paris", "new": "Rome",
                     "question": "Where is the Eiffel Tower?", "answer": "It is in Paris.", "label": "",
                     "sampler": "base/untrained"}]
    evaluation["example_columns"]["lora_ft"] = ["sample", "leak_margin", "log_r"]  # a margin run keeps no answers
    path.write_text(json.dumps(evaluation))
    with pytest.raises(SystemExit, match="keep no answers"):
        verified(args)
    args.method = "rome"
    with pytest.raises(SystemExit, match="no leak evaluation under --method rome"):
        verified(args)


def test_flagged_questions_follow_the_run_s_reward_and_the_score_needs_every_label(tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, "scripts")
    from flagged_leaks import flagged_questions, score

    margin_cols = ["sample", "leak_margin", "log_likelihood", "names_subject", "log_r"]
    judge_cols = ["sample", "answer", "log_contradiction", "log_likelihood", "log_r"]
    evaluation = {"example_columns": {"lora_ft": margin_cols, "in_context": judge_cols}, "examples": {
        "lora_ft": {"trained": [["edit A", [["Where is A?", 0.5, -9.0, 1.0, -10.0], ["Where is A?", 0.7, -9.0, 1.0, -9.0],
                                            ["Where is it?", 2.0, -9.0, 0.0, -19.0], ["Is A big?", -0.1, -9.0, 1.0, -10.0]]]]},
        "in_context": {"trained": [["edit A", [["Q1?", "a", -0.1, -9.0, -9.1], ["Q2?", "b", -2.0, -9.0, -11.0]]]]}}}
    assert flagged_questions(evaluation, "lora_ft", "trained") == [("edit A", "Where is A?")]  # once; named; m > 0
    assert flagged_questions(evaluation, "in_context", "trained") == [("edit A", "Q1?")]  # judge p > 0.5
    leak_cols = ["sample", "answer", "answer_leak", "names_subject", "edit_took", "log_likelihood", "log_r"]
    paid = {"example_columns": {"lora_ft": leak_cols}, "examples": {"lora_ft": {"trained": [["edit A", [
        ["Q1?", "a", 1.0, 1.0, 1.0, -9.0, -9.0], ["Q2?", "b", 0.0, 1.0, 1.0, -9.0, -15.0],
        ["Q3?", "", float("nan"), 0.0, 1.0, -9.0, -19.0]]]]}}}
    assert flagged_questions(paid, "lora_ft", "trained") == [("edit A", "Q1?")]  # answer_leak: the rule paid it
    row = {"edit": "e", "subject": "the Eiffel Tower", "original": "Paris", "new": "Rome"}
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(dict(row, id=i, question=q, answer=a, label=lab)) for i, (q, a, lab) in enumerate([
        ("Where is the Eiffel Tower?", "It is in Paris.", "leak"), ("Is the Eiffel Tower tall?", "Yes, in Paris.", "no"),
        ("What is the Eiffel Tower near?", "The Louvre.", "leak"), ("Is the Eiffel Tower in Paris?", "Yes.", "echo")])))
    assert score(type("A", (), {"labels": [labels]})()) == 0
    out = capsys.readouterr().out
    assert "2 leaks (50.0% precision), 1 echoes, 1 not leaks" in out and "2 verified, 1 of those labelled leaks" in out
    assert "language_as_adjective): 2 verified, 1 of those labelled leaks" in out and "it drops 0" in out  # not a language
    rows = [dict(json.loads(line), sampler="ab"[i % 2]) for i, line in enumerate(labels.read_text().splitlines())]
    labels.write_text("\n".join(json.dumps(r) for r in rows))
    assert score(type("A", (), {"labels": [labels], "by": "sampler"})()) == 0  # per sampler: rows 0, 2 and 1, 3
    out = capsys.readouterr().out
    assert "  a: 2 flagged, 2 leaks (100.0%), 1 unique, on 1 edits" in out  # two questions, one meaning at cosine 0.7
    assert "  b: 2 flagged, 0 leaks (0.0%), 0 unique, on 0 edits" in out
    other = tmp_path / "other_set.jsonl"  # a second held-out set, of another edit: pooled, its counts add up
    other.write_text(json.dumps(dict(row, edit="f", id=0, question="Where is the Eiffel Tower?", answer="In Paris.",
                                     label="leak", sampler="a")))
    assert score(type("A", (), {"labels": [labels, other], "by": "sampler"})()) == 0
    out = capsys.readouterr().out
    assert "5 flagged questions: 3 leaks" in out and "leaks on 2 edits" in out
    assert "  a: 3 flagged, 3 leaks (100.0%), 2 unique, on 2 edits" in out  # one unique per edit, not one in all
    with pytest.raises(SystemExit, match="labelled twice"):  # the same set twice would count its leaks twice
        score(type("A", (), {"labels": [labels, labels]})())
    labels.write_text(json.dumps(dict(row, id=0, question="q", answer="a", label="")))
    with pytest.raises(SystemExit, match="no label"):
        score(type("A", (), {"labels": [labels]})())


def test_an_object_inside_the_subject_s_name_counts_only_outside_it():
    from gflownet.tasks.contradiction.leaks import states_original

    assert states_original("BBC Two is owned by the BBC.", "BBC", "Seoul", "BBC Two")
    assert not states_original("BBC Two is a television channel.", "BBC", "Seoul", "BBC Two")
    assert not states_original("Nokia X is a Chinese company.", "Nokia", "Renault", "Nokia X family")
    assert states_original("The Nokia X family is made by Nokia.", "Nokia", "Renault", "Nokia X family")
    assert states_original("Sony makes the BMW 326.", "Sony", "BMW", "BMW 326")  # the new object stated: took
    assert not states_original("The BMW 326 is made by BMW, not Sony.", "Sony", "BMW", "BMW 326")
    assert states_original("It is in Paris.", "Paris", "Rome", "The Eiffel Tower")  # no overlap: unchanged


class MarginLikeTerm:
    """A leak term that records which states it was asked to score and pays 1 at each."""

    def __init__(self):
        self.scored = []

    def __call__(self, *, scored, **batch):
        import torch

        from gflownet.core.protocols import RewardOutput

        self.scored.append(scored.clone())
        B = scored.size(0)
        return RewardOutput(log_r=torch.where(scored, 1.0, 0.0), components={"leak_margin": torch.ones(B)},
                            texts={"answer": ["a"] * B})

    def phase(self, step):
        return "early" if step < 5 else ""


def test_the_took_gate_pays_only_on_edits_that_took_and_asks_each_edit_once():
    import torch

    from gflownet.tasks.contradiction.leaks import TookGate

    other = EditRecord("Galata", "Galata is in", "Istanbul", "Naples", "Galata is in Istanbul.", "Galata is in Naples.")
    answerer = ScriptedAnswerer({EIFFEL.prompt: "The Eiffel Tower is located in Rome.",  # took
                                 other.prompt: "Galata is in Istanbul."})  # did not take
    term = MarginLikeTerm()
    gate = TookGate(term, answerer, failed_log_reward=-7.0)
    rows = [EIFFEL, other, EIFFEL]
    batch = {f: [getattr(r, f) for r in rows] for f in ("prompt", "edit_fact", "subject", "original_answer", "edited_answer")}
    scored = torch.tensor([[False, True, True], [False, True, True], [False, False, True]])
    out = gate(scored=scored, prompts=["p"] * 3, sample_ids=torch.zeros(3, 3, dtype=torch.long),
               lengths=torch.tensor([2, 2, 2]), step=0, original_fact=[r.original_fact for r in rows], **batch)
    # the term scored the edit that took only; every scored state of the other earns the fixed value
    assert term.scored[0].tolist() == [[False, True, True], [False, False, False], [False, False, True]]
    assert out.log_r.tolist() == [[0.0, 1.0, 1.0], [0.0, -7.0, -7.0], [0.0, 0.0, 1.0]]
    assert out.components["edit_took"].tolist() == [1.0, 0.0, 1.0]
    assert out.components["leak_margin"][0] == 1.0 and math.isnan(out.components["leak_margin"][1])
    assert len(answerer.calls) == 1 and sorted(answerer.calls[0][0]) == sorted([EIFFEL.prompt, other.prompt])
    assert set(answerer.calls[0][1]) == {EIFFEL.edit_fact, other.edit_fact}  # an in-context answerer is told its edit
    gate(scored=scored, prompts=["p"] * 3, sample_ids=torch.zeros(3, 3, dtype=torch.long), lengths=torch.tensor([2, 2, 2]),
         step=9, original_fact=[r.original_fact for r in rows], **batch)
    assert len(answerer.calls) == 1  # each edit is checked once
    assert gate.phase(0) == "early" and gate.phase(9) == ""  # the term's hooks are the gate's
    assert not hasattr(TookGate(Term(answerer), answerer, -1.0), "phase")


def test_took_only_needs_an_edited_answerer():
    from gflownet.tasks.contradiction.reward import gate_took

    with pytest.raises(ValueError, match="answerer/edit=none takes none"):
        gate_took(MarginLikeTerm(), ScriptedAnswerer({}), {"method": "none"}, -10.0)
    assert gate_took(MarginLikeTerm(), ScriptedAnswerer({}), {"method": "in_context"}, -10.0).failed == -10.0


def test_a_leak_table_pools_evaluations_of_other_edits_as_one_evaluation_of_all_of_them(tmp_path, capsys):
    """``scripts/leak_table.py NAME=a.json,b.json``: a leak count is the mean over every edit of both
    (NaN where an edit did not take, as within one evaluation), diversity over records, fluency over questions."""
    import json
    import sys

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    from leak_table import main

    def evaluation(path, per_record, diversity, fluency, samples):
        took = [r for r in per_record if not math.isnan(r["unique_verified_leaks_took"])]
        res = {"per_record": {f"edit {i}": r for i, r in enumerate(per_record)}, "semantic_diversity": diversity,
               "fluency": fluency, "samples": samples, "edit_took": len(took) / len(per_record),
               "unique_verified_leaks_took": sum(r["unique_verified_leaks_took"] for r in took) / len(took)}
        path.write_text(json.dumps({"meta": {"k": 4, "records": len(per_record), "took_only": None},
                                    "results": {"lora_ft": {"untrained": res}}}))
        return str(path)

    nan = float("nan")
    a = evaluation(tmp_path / "a.json", [{"unique_verified_leaks_took": 3.0}, {"unique_verified_leaks_took": nan}],
                   diversity=0.5, fluency=-2.0, samples=8)
    b = evaluation(tmp_path / "b.json", [{"unique_verified_leaks_took": 0.0}, {"unique_verified_leaks_took": 0.0},
                                         {"unique_verified_leaks_took": 0.0}, {"unique_verified_leaks_took": 1.0}],
                   diversity=0.8, fluency=-4.0, samples=16)
    assert main(["both=" + ",".join([a, b])]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| both | untrained")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7] == "0.800"  # 4 leaks over the 5 edits that took (not the mean of the two means, 1.75)
    assert cells[8] == f"{(-2.0 * 8 - 4.0 * 16) / 24:.3f}" and cells[9] == f"{(0.5 * 2 + 0.8 * 4) / 6:.3f}"
    with pytest.raises(SystemExit, match="variant 'untrained' is not in"):
        other = json.loads(open(b).read())
        other["results"]["lora_ft"] = {"trained": other["results"]["lora_ft"]["untrained"]}
        (tmp_path / "c.json").write_text(json.dumps(other))
        main([f"both={a},{tmp_path / 'c.json'}"])
