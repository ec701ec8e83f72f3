"""The sampler against a teacher-forced recomputation, and the action constraints."""

import pytest
import torch

from gflownet.core.function_task import FunctionTask
from gflownet.core.sampling import (
    ActionSpace, encode_prompts, forbidden_token_mask, sample_texts, sample, score, termination_token_id,
)


def build_prompt(tok, topic: str, style: str) -> str:
    """The test task's prompt (tests/function_task_example.py), plain or as a chat turn."""
    return FunctionTask("tests.function_task_example.topic_prompt", chat=style == "chat").prompt({"topic": topic}, tok)


@pytest.fixture(scope="module")
def gpt2_space(tiny_gpt2):
    model, tok = tiny_gpt2
    term = termination_token_id(tok, "?")
    forbidden = forbidden_token_mask(tok, model.config.vocab_size, ["eos", "newline", "termination"], term)
    return ActionSpace(term, forbidden, min_len=3, max_len=9)


def test_termination_token_comes_from_the_tokenizer(tiny_gpt2):
    _, tok = tiny_gpt2
    assert termination_token_id(tok, "?") == 30 == tok.convert_tokens_to_ids("?")
    with pytest.raises(ValueError, match="no single token"):
        termination_token_id(tok, "?!?!?!")


def test_forbidden_sets(tiny_gpt2, gpt2_space):
    _, tok = tiny_gpt2
    f = gpt2_space.forbidden
    assert f[tok.eos_token_id] and f[tok.encode("\n")[0]] and f[tok.encode("?\"")[0]]
    assert not f[gpt2_space.termination_id] and not f[tok.encode(" What")[0]]
    with pytest.raises(ValueError, match="unknown forbidden token set"):
        forbidden_token_mask(tok, 50257, ["emoji"], 30)
    # the termination class follows the task's termination text: "." for the next-sentence task
    dot = termination_token_id(tok, ".")
    f = forbidden_token_mask(tok, 50257, ["termination"], dot)
    assert not f[dot] and f[tok.encode("..")[0]] and f[tok.encode(" .")[0]] and f[tok.encode(".\"")[0]]
    assert not f[tok.encode(" Mr")[0]] and not f[30]  # "?" is no termination here
    # both text tasks forbid it by default: no "??" or " ?" inside a question
    from gflownet.tasks.contradiction.task import ContradictionTask
    from gflownet.tasks.next_sentence.task import NextSentenceTask

    assert "termination" in ContradictionTask().limits.forbidden and "termination" in NextSentenceTask().limits.forbidden


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (1.5, None, None), (0.7, 20, None), (1.0, None, 0.9)])
def test_sampled_logprobs_match_teacher_forced_scoring(tiny_gpt2, gpt2_space, temperature, top_k, top_p):
    model, tok = tiny_gpt2
    prompts = [build_prompt(tok, s, "plain") for s in ["Paris", "The Eiffel Tower in France", "X", "Albert Einstein"]]
    ids, mask = encode_prompts(tok, [p for p in prompts for _ in range(3)])  # left padding, different lengths
    g = torch.Generator().manual_seed(1)
    traj = sample(model, ids, mask, gpt2_space, tok.pad_token_id, temperature, top_k, top_p, generator=g)
    log_pf, log_pterm = score(model, ids, mask, traj.sample_ids, traj.lengths, gpt2_space)
    torch.testing.assert_close(log_pf, traj.log_pf, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_pterm, traj.log_pterm, rtol=0, atol=1e-5)  # -inf below min_len on both sides


def test_constraints_hold_on_every_sample(tiny_gpt2, gpt2_space):
    model, tok = tiny_gpt2
    ids, mask = encode_prompts(tok, [build_prompt(tok, "Mars", "plain")] * 64)
    traj = sample(model, ids, mask, gpt2_space, tok.pad_token_id, temperature=2.0, generator=torch.Generator().manual_seed(0))
    L = traj.lengths
    assert ((L >= gpt2_space.min_len) & (L <= gpt2_space.max_len)).all()
    rows = torch.arange(64)
    assert (traj.sample_ids[rows, L] == gpt2_space.termination_id).all()
    assert torch.equal(traj.termination_mask, traj.sample_ids == gpt2_space.termination_id)
    for b in range(64):
        body = traj.sample_ids[b, : L[b]]
        assert not gpt2_space.forbidden[body].any()
        assert not (body == gpt2_space.termination_id).any()
    texts = sample_texts(tok, traj.sample_ids, L, "?")
    assert all(t.endswith("?") and "\n" not in t for t in texts)
    # a random 2-layer model rarely stops early: max_len is where termination is forced
    assert (L == gpt2_space.max_len).any()
    assert (traj.log_pterm[rows, L] <= 0).all() and torch.isfinite(traj.log_pterm[rows, L]).all()


def test_sampling_is_reproducible_from_the_generator_and_restores_train_mode(tiny_gpt2, gpt2_space):
    model, tok = tiny_gpt2
    ids, mask = encode_prompts(tok, [build_prompt(tok, "Mars", "plain")] * 4)
    model.train()
    try:
        a = sample(model, ids, mask, gpt2_space, tok.pad_token_id, generator=torch.Generator().manual_seed(5))
        assert model.training
        b = sample(model, ids, mask, gpt2_space, tok.pad_token_id, generator=torch.Generator().manual_seed(5))
    finally:
        model.eval()
    assert torch.equal(a.sample_ids, b.sample_ids)


def test_score_has_gradients_only_through_taken_actions(models_dir, gpt2_space):
    from gflownet.core.modeling import load_sampler, load_tokenizer

    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    sampler = load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.0}, models_dir)
    ids, mask = encode_prompts(tok, [build_prompt(tok, "Mars", "plain")] * 3)
    traj = sample(sampler, ids, mask, gpt2_space, tok.pad_token_id, generator=torch.Generator().manual_seed(2))
    sampler.train()
    log_pf, log_pterm = score(sampler, ids, mask, traj.sample_ids, traj.lengths, gpt2_space)
    (log_pf.sum() + log_pterm[torch.arange(3), traj.lengths].sum()).backward()
    grads = [p.grad for n, p in sampler.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_chat_prompt_needs_a_chat_template(tiny_gpt2):
    _, tok = tiny_gpt2
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(tok, "Mars", "chat")
    assert build_prompt(tok, "Mars", "plain") == "A question about Mars:"


def test_action_space_validation(gpt2_space):
    with pytest.raises(ValueError, match="task.min_len <= task.max_len"):
        ActionSpace(30, gpt2_space.forbidden, 5, 3)


def test_draw_matches_the_distribution_and_never_picks_zero_probability():
    from gflownet.core.sampling import draw

    p = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05])
    logw = p.log().expand(20000, 5)
    picks = draw(logw, torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=5).float() / 20000
    assert freq[1] == 0
    torch.testing.assert_close(freq, p, atol=0.012, rtol=0)
    only_last = torch.full((3, 5), float("-inf"))
    only_last[:, 4] = 0.0
    assert draw(only_last, None).tolist() == [4, 4, 4]


def test_shared_prompt_scoring_equals_one_full_pass_in_values_and_gradients(models_dir, gpt2_space):
    """prompt_pass encodes each distinct prompt once; the checkpointing fallback does one full pass."""
    from gflownet.core.modeling import load_sampler, load_tokenizer

    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    prompts = [build_prompt(tok, s, "plain") for s in ["Mars", "The Eiffel Tower in Paris"]]
    ids, mask = encode_prompts(tok, [p for p in prompts for _ in range(3)])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        sampler = load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.0}, models_dir, gradient_checkpointing=checkpointing)
        for n, p in sampler.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)  # non-zero adapters so their gradients are informative
        traj = sample(sampler, ids, mask, gpt2_space, tok.pad_token_id, generator=torch.Generator().manual_seed(3))
        sampler.train()
        from gflownet.core.sampling import checkpointing_active

        assert checkpointing_active(sampler) == checkpointing
        log_pf, log_pterm, hidden = score(sampler, ids, mask, traj.sample_ids, traj.lengths, gpt2_space, return_prompt_hidden=True)
        torch.testing.assert_close(log_pf, traj.log_pf, rtol=0, atol=1e-5)
        (log_pf.sum() + log_pterm[torch.arange(6), traj.lengths].sum() + hidden.sum()).backward()
        grads = {n: p.grad.clone() for n, p in sampler.named_parameters() if p.requires_grad}
        results.append((traj.sample_ids, log_pf.detach(), hidden.detach(), grads))
    (q0, pf0, h0, g0), (q1, pf1, h1, g1) = results
    assert torch.equal(q0, q1)
    torch.testing.assert_close(pf0, pf1, rtol=0, atol=1e-5)
    torch.testing.assert_close(h0, h1, rtol=0, atol=1e-5)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-9), ("float32", 5e-5)])
def test_smollm2_sampled_logprobs_match_scoring(models_dir, dtype, atol):
    """On the real 30-layer model: exact in float64, so the float32 gap (about 2e-5 nats, 2e-6
    relative) is GEMM rounding between one-token cached steps and the batched pass, not logic."""
    from gflownet.core.modeling import load_sampler, load_tokenizer

    ref = "packaged:smollm2-135m-instruct"
    tok = load_tokenizer(ref, models_dir)
    model = load_sampler(ref, {"r": 4, "alpha": 8, "dropout": 0.0}, models_dir, dtype=dtype)
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    term = termination_token_id(tok, "?")
    V = model.get_output_embeddings().weight.size(0)
    space = ActionSpace(term, forbidden_token_mask(tok, V, ["eos", "newline", "termination"], term), 3, 10)
    prompts = [build_prompt(tok, s, "chat") for s in ["The Eiffel Tower", "Marie Curie"]]
    ids, mask = encode_prompts(tok, [p for p in prompts for _ in range(2)])
    traj = sample(model, ids, mask, space, tok.pad_token_id, temperature=1.3, generator=torch.Generator().manual_seed(0))
    model.train()
    log_pf, log_pterm = score(model, ids, mask, traj.sample_ids, traj.lengths, space)
    assert log_pf.dtype == getattr(torch, dtype)
    torch.testing.assert_close(log_pf, traj.log_pf, rtol=0, atol=atol)
    torch.testing.assert_close(log_pterm, traj.log_pterm, rtol=0, atol=atol)
