"""The reward's formula, per-prefix scoring, likelihood masking, composition, and the judges' wiring."""

import math

import pytest
import torch

from gflownet.core.losses import SubTB, TB
from gflownet.core.schedules import linear_schedule
from gflownet.rewards.combine import WeightedSum
from gflownet.rewards.likelihood import LikelihoodReward
from gflownet.tasks.contradiction.answerer import Answerer
from gflownet.tasks.contradiction.data import EditRecord
from gflownet.tasks.contradiction.judges import NLIJudge, contradiction_index
from gflownet.tasks.contradiction.reward import ContradictionTerm
from gflownet.tasks.contradiction.task import ContradictionTask
from tests.conftest import trajectories


class LengthJudge:
    """A deterministic judge for checking the reward arithmetic: log C = -1 / (1 + len(answer))."""

    def __init__(self):
        self.calls = []

    def __call__(self, premises, hypotheses, originals=None):
        self.calls.append(list(hypotheses))
        return torch.tensor([-1.0 / (1 + len(h)) for h in hypotheses])


@pytest.fixture
def reward_parts(tiny_gpt2):
    model, tok = tiny_gpt2
    answerer = Answerer(model, tok, style="few_shot", max_new_tokens=4)
    return model, tok, answerer


def make_reward(reward_parts, likelihood_weight=1.0, **kw):
    """The contradiction reward as contradiction_reward composes it: log C term + w * likelihood term."""
    model, tok, answerer = reward_parts
    judge = kw.pop("judge", LengthJudge())
    term = ContradictionTerm(answerer, judge, tok, **{"min_question_len": 2, **kw})
    likelihood = LikelihoodReward(model, tok)
    return WeightedSum({"contradiction": (1.0, term), "likelihood": (likelihood_weight, likelihood)}), judge, term


def build_prompt(tok, subject):
    return ContradictionTask(prompt_format="subject").prompt(EditRecord(subject, "p", "a", "b", "f", "g"), tok)


def call(reward, prompts, edits, originals, ids, lengths, step=0, scored=None, every=1, min_len=2):
    scored = SubTB(score_every=every).scored_states(lengths, min_len) if scored is None else scored
    return reward(prompts=prompts, sample_ids=ids, lengths=lengths, scored=scored, step=step, edit_fact=edits,
                  original_fact=originals), scored


def test_scored_states_every_k_plus_terminal():
    loss = SubTB(score_every=3)
    scored = loss.scored_states(torch.tensor([7, 2, 4]), min_len=2)
    assert scored[0].nonzero().flatten().tolist() == [2, 5, 7]
    assert scored[1].nonzero().flatten().tolist() == [2]
    assert scored[2].nonzero().flatten().tolist() == [2, 4]
    assert loss.scored_states(torch.tensor([7, 3]), 2, terminal_only=True).nonzero().tolist() == [[0, 7], [1, 3]]
    assert TB().scored_states(torch.tensor([7, 3]), 2).nonzero().tolist() == [[0, 7], [1, 3]]  # TB: terminal only


def test_reward_formula_and_penalty(reward_parts):
    model, tok, _ = reward_parts
    reward, judge, term = make_reward(reward_parts, likelihood_weight=0.3, min_len_penalty=-99.0, min_question_len=3)
    prompt = build_prompt(tok, "Mars")
    ids, lengths = trajectories(tok, ["What is the red planet called", "Why"])
    # the caller asks for every state from 1 on (below min_question_len too) plus the terminal ones
    scored = (torch.arange(ids.size(1))[None] >= 1) & (torch.arange(ids.size(1))[None] <= lengths[:, None])
    scored &= (torch.arange(ids.size(1))[None] % 2 == 1) | (torch.arange(ids.size(1))[None] == lengths[:, None])
    out, _ = call(reward, [prompt] * 2, ["Mars is blue."] * 2, ["Mars is red."] * 2, ids, lengths, step=5, scored=scored)
    L0 = int(lengths[0])
    # terminal: log C + w log P, with log C from the judge on the answerer's answer
    expected_c = -1.0 / (1 + len(out.texts["answer"][0]))
    assert float(out.components["log_contradiction"][0]) == pytest.approx(expected_c)
    log_p = float(out.components["log_likelihood"][0])
    assert float(out.log_r[0, L0]) == pytest.approx(expected_c + 0.3 * log_p, rel=1e-6)
    # "Why" is one token: below min_question_len, so the penalty without any model call for it
    assert int(lengths[1]) == 1
    alone = term(prompts=[prompt] * 2, sample_ids=ids, lengths=lengths, scored=scored, step=5,
                 edit_fact=["Mars is blue."] * 2, original_fact=["Mars is red."] * 2)
    assert float(alone.log_r[1, 1]) == -99.0 and math.isnan(float(out.components["log_contradiction"][1]))
    assert all("Why?" != q for call_ in judge.calls for q in call_)
    # one batched judge call per reward call for all judged prefixes
    assert len(judge.calls) == 2 and len(judge.calls[0]) == int(scored[0, 3:].sum())
    assert float(out.log_r[0, 2]) == 0.0 and not scored[0, 2]  # unscored states carry nothing


def test_prefix_likelihood_matches_a_direct_computation(reward_parts):
    model, tok, _ = reward_parts
    likelihood = LikelihoodReward(model, tok)
    prompts = [build_prompt(tok, "Mars"), build_prompt(tok, "The Eiffel Tower")]
    ids, lengths = trajectories(tok, ["What is the red planet called", "Where is it"])
    got = likelihood.prefix_log_likelihood(prompts, ids, lengths)
    for b, prompt in enumerate(prompts):
        for t in range(int(lengths[b]) + 1):
            p_ids = tok.encode(prompt)
            x = ids[b, :t].tolist() + [30]
            full = torch.tensor([p_ids + x])
            lp = model(full).logits[0, len(p_ids) - 1 : -1].log_softmax(-1)
            want = lp.gather(-1, torch.tensor(x)[:, None]).sum()
            assert float(got[b, t]) == pytest.approx(float(want), abs=1e-4)


def test_likelihood_penalty_lowers_banned_tokens_by_about_the_penalty(reward_parts):
    model, tok, _ = reward_parts
    prompts = [build_prompt(tok, "Mars")]
    ids, lengths = trajectories(tok, ["What is the red planet called"])
    banned = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    banned[int(ids[0, 1])] = True  # the second token of the question
    plain = LikelihoodReward(model, tok).prefix_log_likelihood(prompts, ids, lengths)
    penalised = LikelihoodReward(model, tok, penalized=banned, penalty=50.0).prefix_log_likelihood(prompts, ids, lengths)
    diff = (plain - penalised)[0]
    assert float(diff[1]) == pytest.approx(0.0, abs=0.05)  # prefix without the banned token: only renormalised
    assert 49.0 < float(diff[int(lengths[0])]) < 51.0  # each occurrence costs about the penalty


def test_likelihood_components_report_the_plain_log_likelihood_and_the_penalised_reward_apart(reward_parts):
    """``log_likelihood`` (fluency, val/mean_log_likelihood) is the LM's own log-likelihood; the reward and
    ``penalized_log_likelihood`` carry the banned-token penalty. (Before: ``log_likelihood`` was the
    penalised value, e.g. -83.65 for a sentence the LM scores -34.01.)"""
    model, tok, _ = reward_parts
    prompts = [build_prompt(tok, "Mars")]
    ids, lengths = trajectories(tok, ["What is the red planet called"])
    banned = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    banned[int(ids[0, 1])] = True
    reward = LikelihoodReward(model, tok, penalized=banned, penalty=50.0)
    plain = LikelihoodReward(model, tok).prefix_log_likelihood(prompts, ids, lengths)
    L = int(lengths[0])
    scored = torch.zeros(1, ids.size(1), dtype=torch.bool)
    scored[0, [1, L]] = True
    out = reward(prompts=prompts, sample_ids=ids, lengths=lengths, scored=scored)
    assert float(out.components["log_likelihood"][0]) == pytest.approx(float(plain[0, L]), abs=1e-4)
    assert float(out.components["penalized_log_likelihood"][0]) == pytest.approx(float(out.log_r[0, L]), abs=1e-6)
    assert 49.0 < float(out.components["log_likelihood"][0] - out.log_r[0, L]) < 51.0
    assert set(LikelihoodReward(model, tok)(prompts=prompts, sample_ids=ids, lengths=lengths, scored=scored).components) == {"log_likelihood"}


def test_hybrid_phase_and_answer_quality(reward_parts):
    model, tok, _ = reward_parts
    reward, _, _ = make_reward(reward_parts, use_hybrid_reward=True, penalized_reward_end_step=10, failure_penalty=-5.0,
                               contradiction_threshold=-0.05, likelihood_weight=0.5)
    prompt = build_prompt(tok, "Mars")
    ids, lengths = trajectories(tok, ["What is the red planet called"])
    early, _ = call(reward, [prompt], ["e"], ["o"], ids, lengths, step=3)
    late, _ = call(reward, [prompt], ["e"], ["o"], ids, lengths, step=10)
    L = int(lengths[0])
    fail = float(early.components["log_contradiction"][0]) < -0.05
    assert float(early.log_r[0, L]) == pytest.approx(0.5 * float(early.components["log_likelihood"][0]) + (-5.0 if fail else 0.0), rel=1e-6)
    assert float(late.log_r[0, L]) == pytest.approx(
        float(late.components["log_contradiction"][0]) + 0.5 * float(late.components["log_likelihood"][0]), rel=1e-6)

    q_reward, _, _ = make_reward(reward_parts, answer_quality_weight=1.0, answer_quality_threshold=100.0, answer_quality_penalty=-7.0)
    plain, _, _ = make_reward(reward_parts)
    a, _ = call(q_reward, [prompt], ["e"], ["o"], ids, lengths)
    b, _ = call(plain, [prompt], ["e"], ["o"], ids, lengths)
    diff = float(a.log_r[0, L] - b.log_r[0, L])
    assert diff < -7.0  # penalty (threshold unreachable) plus a negative mean log-prob


def test_took_only_asks_the_answerer_and_judge_only_on_edits_that_took(reward_parts, compose_cfg):
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.leaks import TookGate

    model, tok, answerer = reward_parts
    _, judge, term = make_reward(reward_parts, use_hybrid_reward=True, penalized_reward_end_step=10)
    took = {"Mars's colour is": "Mars's colour is blue.", "Venus's colour is": "Venus's colour is yellow."}
    gate = TookGate(term, lambda questions, facts: [took[q] for q in questions], failed_log_reward=-10.0)
    ids, lengths = trajectories(tok, ["What colour is Mars", "What colour is Venus"])
    scored = SubTB(score_every=1).scored_states(lengths, 2)
    out = gate(prompts=["p", "p"], sample_ids=ids, lengths=lengths, scored=scored, step=20,
               edit_fact=["Mars's colour is blue.", "Venus's colour is green."], original_fact=["Mars's colour is red.", "Venus's colour is yellow."],
               prompt=list(took), subject=["Mars", "Venus"], original_answer=["red", "yellow"], edited_answer=["blue", "green"])
    assert out.components["edit_took"].tolist() == [1.0, 0.0]
    judged = sum(len(c) for c in judge.calls)
    assert judged == int(scored[0, 2:].sum()) > 0  # Mars's scored states of 2 tokens or more (min_question_len), only
    assert torch.all(out.log_r[1][scored[1]] == -10.0) and out.texts["answer"][1] == ""
    assert gate.phase(3) == "hybrid" and gate.phase(10) == ""
    with pytest.raises(ValueError, match="answerer/edit=none takes none"):
        build_module(compose_cfg(["reward=contradiction", "reward.took_only=true", "answerer/edit=none"])).build_reward()


def test_weighted_sum_refuses_clashing_component_names(reward_parts):
    model, tok, _ = reward_parts
    twice = WeightedSum({"a": (1.0, LikelihoodReward(model, tok)), "b": (2.0, LikelihoodReward(model, tok))})
    ids, lengths = trajectories(tok, ["Why is it red"])
    with pytest.raises(ValueError, match="component 'log_likelihood'"):
        call(twice, [build_prompt(tok, "Mars")], ["e"], ["o"], ids, lengths)
    with pytest.raises(ValueError, match="at least one term"):
        WeightedSum({})


def test_linear_schedule():
    assert linear_schedule(1.0, 2.0, 2000, 0) == 1.0
    assert linear_schedule(1.0, 2.0, 2000, 1000) == 1.5
    assert linear_schedule(1.0, 2.0, 2000, 5000) == 2.0
    assert linear_schedule(1.0, 2.0, 0, 0) == 2.0


# ------------------------------------------------------------------ judges


@pytest.fixture(scope="module")
def tiny_nli_dir(tmp_path_factory, models_dir):
    """A small randomly initialised DeBERTa-v2 classifier with a real WordPiece tokenizer."""
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    from gflownet.core.modeling import resolve

    path = tmp_path_factory.mktemp("tiny-nli")
    tok = AutoTokenizer.from_pretrained(resolve("packaged:all-minilm-l6-v2", models_dir)[1])
    tok.model_max_length = 64
    labels = {0: "CONTRADICTION", 1: "neutral", 2: "entailment"}  # contradiction not at index 2
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, num_labels=3, id2label=labels,
                          label2id={v: k for k, v in labels.items()}, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_nli_judge_label_mapping_batching_truncation(tiny_nli_dir):
    judge = NLIJudge(str(tiny_nli_dir), batch_size=2, max_length=512)
    assert judge.contradiction == 0 and judge.max_length == 64  # capped at the model's own limit
    premises = ["Paris is in France.", "Water is wet.", "The sky is green."]
    hyps = ["Paris is in Italy.", "Water is dry.", "word " * 500]  # the last one needs truncation
    out = judge(premises, hyps)
    assert out.shape == (3,) and (out <= 0).all() and torch.isfinite(out).all()
    one_by_one = torch.cat([NLIJudge(str(tiny_nli_dir), batch_size=1)([p], [h]) for p, h in zip(premises, hyps)])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=0)
    enc = judge.tokenizer(premises, hyps, padding=True, truncation=True, max_length=judge.max_length, return_tensors="pt")
    want = judge.model(**enc).logits.log_softmax(-1)[:, 0]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_contradiction_index_from_id2label():
    assert contradiction_index({0: "entailment", 1: "neutral", 2: "contradiction"}) == 2
    assert contradiction_index({"0": "Contradiction", "1": "neutral"}) == 0
    with pytest.raises(ValueError, match="cannot find the contradiction label"):
        contradiction_index({0: "LABEL_0", 1: "LABEL_1"})


@pytest.mark.slow
def test_real_nli_judge_on_real_pairs(models_dir):
    """With a local copy of the full-scale judge (``python download_models.py experiment=full_scale``
    on a machine with hub access), contradictions score above entailments."""
    from gflownet.core.modeling import ModelNotAvailableError

    try:
        judge = NLIJudge("NDugar/v3-Large-mnli", models_dir, batch_size=4)
    except ModelNotAvailableError as err:
        pytest.skip(f"no local copy of the NLI judge: {err}")
    edit = ["The Eiffel Tower is located in Rome."] * 3
    out = judge(edit, ["The Eiffel Tower is in Paris.", "The Eiffel Tower is located in Rome, Italy.",
                       "The Eiffel Tower stands in Rome."])
    assert float(out[0]) > math.log(0.5) and float(out[1]) < math.log(0.5) and float(out[2]) < math.log(0.5)


def test_weighted_sum_factory_builds_terms_from_config(models_dir):
    """``weighted_sum`` (rewards composed from config, each term a reward factory and a weight)."""
    from gflownet.core.modeling import load_sampler, load_tokenizer
    from gflownet.core.protocols import ActionLimits, RewardEnv
    from gflownet.rewards.combine import weighted_sum

    sampler = load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.0}, models_dir)
    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    env = RewardEnv(sampler, tok, torch.device("cpu"), str(models_dir), ActionLimits("?", 2, 8), 30)
    terms = {"lik": {"weight": 2.5, "reward": {"_target_": "gflownet.rewards.likelihood.likelihood_reward", "_partial_": True}}}
    reward = weighted_sum(env, terms)
    ids, lengths = trajectories(tok, ["What is the red planet called"])
    out, scored = call(reward, [build_prompt(tok, "Mars")], ["e"], ["o"], ids, lengths)
    with sampler.disable_adapter():
        want = LikelihoodReward(sampler, tok).prefix_log_likelihood([build_prompt(tok, "Mars")], ids, lengths)
    torch.testing.assert_close(out.log_r, torch.where(scored, 2.5 * want, 0.0))
    with pytest.raises(ValueError, match="needs a 'reward' factory"):
        weighted_sum(env, {"lik": {"weight": 1.0}})
