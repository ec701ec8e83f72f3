"""The judge-free leak reward (reward=leak_margin): its margin against a direct computation, its relevance
guard, the edit's measured effect on it, and training steps with it."""

import math

import pytest
import torch

from gflownet.core.losses import SubTB
from gflownet.tasks.contradiction.answerer import Answerer
from gflownet.tasks.contradiction.leak_margin import LeakMarginTerm, asks, edit_parts, names_subject
from tests.conftest import trajectories

EIFFEL = ("The Eiffel Tower is located in Rome.", "The Eiffel Tower is located in Paris.", "The Eiffel Tower")


def test_an_edit_splits_into_its_relation_and_its_two_objects():
    assert edit_parts(EIFFEL[0], EIFFEL[1], "Rome", "Paris") == ("The Eiffel Tower is located in", "Paris", "Rome")
    # objects that share words (zsRE) come from the answers, not from where the facts differ
    assert edit_parts("The director of X is Lloyd Nolan", "The director of X is Lloyd Kaufman", "Lloyd Nolan",
                      "Lloyd Kaufman") == ("The director of X is", "Lloyd Kaufman", "Lloyd Nolan")
    # an answer that ends in a full stop keeps it
    assert edit_parts("Who released W? Paramount Pictures", "Who released W? Warner Bros.", "Paramount Pictures",
                      "Warner Bros.") == ("Who released W?", "Warner Bros.", "Paramount Pictures")
    with pytest.raises(ValueError, match="ends with its edited answer"):
        edit_parts("Mars is red.", "Mars is red.", "red", "red")
    with pytest.raises(ValueError, match="ends with its edited answer"):
        edit_parts("Rome hosts it.", "Paris hosts it.", "Rome", "Paris")


def test_the_guard_asks_that_the_question_names_the_subject():
    assert names_subject("Where is the Eiffel Tower?", "The Eiffel Tower")  # without its article, any case
    assert names_subject("what city holds THE EIFFEL TOWER?", "The Eiffel Tower")
    assert not names_subject("Which tower is the tallest in Europe?", "The Eiffel Tower")
    assert not names_subject("Where is it?", "  ")


def test_the_optional_guard_asks_for_a_question_s_wording(tiny_gpt2):
    """``require_question``: the statements the margin-trained samplers wrote ("The profession of X?",
    docs/results.md) earn the floor; questions, also behind a preposition, keep their margin."""
    for q in ["What is the profession of Arun Nehru?", "Is Arun Nehru an actor?", "In which field did Arun Nehru work?",
              '"Who was Arun Nehru?', "does Arun Nehru act?"]:
        assert asks(q), q
    for q in ["The profession of Arun Nehru?", "The profession of Arun Nehru is engineering. Edit your sentence?",
              "Arun Nehru: where?", "In Arun Nehru's career?", "?"]:
        assert not asks(q), q
    model, tok = tiny_gpt2
    questions = ["Where is the Eiffel Tower", "The Eiffel Tower is located"]
    ids, lengths = trajectories(tok, questions)
    scored = SubTB(score_every=100).scored_states(lengths, 2)  # terminal states only
    batch = dict(prompts=["p", "p"], sample_ids=ids, lengths=lengths, scored=scored, edit_fact=[EIFFEL[0]] * 2,
                 original_fact=[EIFFEL[1]] * 2, subject=[EIFFEL[2]] * 2, edited_answer=["Rome"] * 2,
                 original_answer=["Paris"] * 2)
    answerer = Answerer(model, tok, style="few_shot")
    plain = LeakMarginTerm(answerer, tok, unrelated_log_reward=-10.0)(**batch)
    strict = LeakMarginTerm(answerer, tok, unrelated_log_reward=-10.0, require_question=True)(**batch)
    assert plain.components["names_subject"].tolist() == [1.0, 1.0]
    assert strict.components["names_subject"].tolist() == [1.0, 0.0]
    end = lengths[:, None]
    assert float(strict.log_r.gather(1, end)[0]) == float(plain.log_r.gather(1, end)[0]) > -10.0
    assert float(strict.log_r.gather(1, end)[1]) == -10.0


def test_margin_is_the_teacher_forced_object_log_probability_difference_and_unrelated_questions_earn_nothing(tiny_gpt2):
    model, tok = tiny_gpt2
    answerer = Answerer(model, tok, style="few_shot")
    term = LeakMarginTerm(answerer, tok, tau=2.0, unrelated_log_reward=-10.0, batch_size=3)  # batches split the rows
    questions = ["Where is the Eiffel Tower", "Which tower is the tallest"]
    ids, lengths = trajectories(tok, questions)
    scored = SubTB(score_every=2).scored_states(lengths, 2)
    out = term(prompts=["p", "p"], sample_ids=ids, lengths=lengths, scored=scored, edit_fact=[EIFFEL[0]] * 2,
               original_fact=[EIFFEL[1]] * 2, subject=[EIFFEL[2]] * 2, edited_answer=["Rome"] * 2,
               original_answer=["Paris"] * 2)

    def direct(question, obj):
        ctx = answerer.prompt(question) + "The Eiffel Tower is located in"
        head, full = tok.encode(ctx), tok.encode(ctx + " " + obj)
        with torch.no_grad():
            lp = model(torch.tensor([full])).logits[0].log_softmax(-1)
        return sum(float(lp[j - 1, full[j]]) for j in range(len(head), len(full)))

    for b, t in scored.nonzero().tolist():
        q = tok.decode(ids[b, :t].tolist()).strip() + "?"
        want = direct(q, "Paris") - direct(q, "Rome")
        assert float(out.per_state["leak_margin"][b, t]) == pytest.approx(want, abs=1e-3)
        if names_subject(q, EIFFEL[2]):
            assert float(out.log_r[b, t]) == pytest.approx(math.log(1 / (1 + math.exp(-want / 2.0))), abs=1e-3)
        else:  # not about the edit: the fixed floor, whatever its margin
            assert float(out.log_r[b, t]) == -10.0
    assert float(out.log_r[~scored].abs().sum()) == 0.0
    # objects of several tokens and of different lengths in one batch, contexts of different lengths
    ctxs = [answerer.prompt(q) + "The Eiffel Tower is located in" for q in ("Where is it?", "In which city is the tower today?")]
    objects = ["Paris", "the Kingdom of Denmark and Norway"]
    assert len(tok.encode(" " + objects[1])) > 3
    got = term.object_log_probs([ctxs[0], ctxs[1], ctxs[1]], [objects[1], objects[0], objects[1]])
    for g, (ctx, obj) in zip(got.tolist(), [(ctxs[0], objects[1]), (ctxs[1], objects[0]), (ctxs[1], objects[1])]):
        head, full = tok.encode(ctx), tok.encode(ctx + " " + obj)
        with torch.no_grad():
            lp = model(torch.tensor([full])).logits[0].log_softmax(-1)
        assert g == pytest.approx(sum(float(lp[j - 1, full[j]]) for j in range(len(head), len(full))), abs=1e-3)
    assert out.components["names_subject"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="tau"):
        LeakMarginTerm(answerer, tok, tau=0.0)


@pytest.mark.slow
def test_the_margin_reads_the_edit_an_in_context_answerer_carries(compose_cfg):
    """On SmolLM2 the unedited answerer prefers the true object after a question about the fact (m about
    +10.8 nats), and stating the edit in context lowers the margin on every question (to about +7.9: the
    135M model's prior for Paris is strong, so the in-context edit does not take here; the margin says so,
    where a judge of generated answers would only say "no leak" or "leak"). Both answerers are built from
    the config (reward=leak_margin, answerer/edit=...)."""
    from gflownet.runner import build_module

    margins = {}
    for method in ("none", "in_context"):
        module = build_module(compose_cfg(["reward=leak_margin", f"answerer/edit={method}", "gfn.diversity_embedder=null"]))
        module.build_reward()
        tok = module.tokenizer
        ids, lengths = trajectories(tok, ["In which city is the Eiffel Tower", "What is the Eiffel Tower known for"],
                                    term=module.space.termination_id, lead="")
        scored = SubTB(score_every=1).scored_states(lengths, 1, terminal_only=True)
        out = module.compute_rewards(["p", "p"], ids, lengths, scored,
                                   {"edit_fact": [EIFFEL[0]] * 2, "original_fact": [EIFFEL[1]] * 2, "subject": [EIFFEL[2]] * 2,
                                    "edited_answer": ["Rome"] * 2, "original_answer": ["Paris"] * 2})
        margins[method] = out.components["leak_margin"].tolist()
        assert "log_likelihood" in out.components  # the shared likelihood term
    print("leak margins:", margins)
    assert all(m > 1.0 for m in margins["none"]), margins
    assert all(e < n - 1.0 for e, n in zip(margins["in_context"], margins["none"])), margins


@pytest.mark.slow
def test_with_took_only_the_margin_pays_only_on_the_edit_that_took_by_the_evaluation_s_rule(compose_cfg):
    """reward.took_only=true on SmolLM2 told each edit in context: Edwin of Northumbria's religion edited to
    Islam takes (its greedy answer to the edit prompt names Islam), the Eiffel Tower moved to Rome does not
    (it still answers Paris). The first trajectory earns its margin, the second the fixed value, each
    plus its likelihood, and whether an edit took is what the verified-leak figures say too."""
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.data import EditRecord
    from gflownet.tasks.contradiction.leaks import TookGate, find_answerer, leak_metrics

    module = build_module(compose_cfg(["reward=leak_margin", "answerer/edit=in_context", "reward.took_only=true",
                                       "reward.failed_log_reward=-33", "gfn.diversity_embedder=null"]))
    module.build_reward()
    assert isinstance(module.reward.terms["leak"][1], TookGate)
    edwin = EditRecord("Edwin of Northumbria", "The official religion of Edwin of Northumbria is", "Christianity", "Islam",
                       "The official religion of Edwin of Northumbria is Christianity.",
                       "The official religion of Edwin of Northumbria is Islam.")
    eiffel = EditRecord("The Eiffel Tower", "The Eiffel Tower is located in", "Paris", "Rome", EIFFEL[1], EIFFEL[0])
    records = [edwin, eiffel]
    ids, lengths = trajectories(module.tokenizer, ["Which faith did Edwin of Northumbria follow",
                                                   "In which city is the Eiffel Tower"], term=module.space.termination_id, lead="")
    scored = SubTB(score_every=1).scored_states(lengths, 1, terminal_only=True)
    fields = ("edit_fact", "original_fact", "subject", "edited_answer", "original_answer", "prompt")
    out = module.compute_rewards(["p", "p"], ids, lengths, scored, {f: [getattr(r, f) for r in records] for f in fields})
    assert out.components["edit_took"].tolist() == [1.0, 0.0]
    assert [leak_metrics(find_answerer(module.reward), r, [])["edit_took"] for r in records] == [1.0, 0.0]
    margin, loglik = out.components["leak_margin"], out.components["log_likelihood"]
    assert math.isfinite(margin[0]) and math.isnan(margin[1])  # the second edit's margin was never computed
    terminal = out.log_r[torch.arange(2), lengths]
    assert terminal[0] == pytest.approx(float(torch.nn.functional.logsigmoid(margin[0]) + loglik[0]), abs=1e-4)
    assert terminal[1] == pytest.approx(-33.0 + float(loglik[1]), abs=1e-4)


@pytest.mark.parametrize("loss,took_only", [("tb", False), ("subtb", False), ("tb", True)])
def test_training_steps_with_the_leak_margin_reward(loss, took_only, compose_cfg, tmp_path):
    """reward=leak_margin trains with TB and with SubTB (every scored prefix gets its margin), logs its
    components, and an in-context edit needs no other setting; so does its took_only gate."""
    import csv

    from gflownet.runner import run_training
    from tests.test_pipeline import EDIT_FAST as FAST

    cfg = compose_cfg([*FAST, "reward=leak_margin", f"loss={loss}", "answerer/edit=in_context", "trainer.max_steps=2",
                       "gfn.use_buffer_prob=0", "final_probe_samples=0", f"reward.took_only={took_only}"])
    assert run_training(cfg)["global_step"] == 2
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    logged = {k for r in rows for k, v in r.items() if v}
    if took_only:  # no edit takes in the tiny GPT-2's context: no margin is computed, every question earns the same
        assert {"train/fresh/avg_edit_took", "train/fresh/avg_log_likelihood"} <= logged
        assert not {"train/fresh/avg_leak_margin", "train/fresh/avg_names_subject"} & logged
        assert {float(r["train/fresh/avg_edit_took"]) for r in rows if r.get("train/fresh/avg_edit_took")} == {0.0}
    else:
        assert {"train/fresh/avg_leak_margin", "train/fresh/avg_names_subject", "train/fresh/avg_log_likelihood"} <= logged
        assert "train/fresh/avg_edit_took" not in logged
    finite = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert finite and all(math.isfinite(v) for v in finite)
