"""The answerer: same answers as greedy ``model.generate`` on the full prompts, shared prefix
computed once, repeated questions answered once, stops at end tokens and newlines."""

import pytest
import torch

from gflownet.tasks.contradiction.answerer import Answerer, _common_prefix
from gflownet.core.sampling import encode_prompts

QUESTIONS = [
    "What is the mother tongue of Danielle Darrieux?",
    "Who is the developer of Windows 10?",
    "Which country is Toko Yasuda a citizen of?",
    "Who wrote Romeo and Juliet?",
    "What is the mother tongue of Danielle Darrieux?",  # repeated
    "Who",
    "In which city is the Eiffel Tower located, and who designed it?",
]


def generate_reference(answerer: Answerer, questions) -> list[str]:
    """Plain batched greedy generate on the full (left-padded) prompts, cut at the first newline."""
    model, tok = answerer.model, answerer.tokenizer
    ids, mask = encode_prompts(tok, [answerer.prompt(q) for q in questions])
    eos = [i for i in {tok.eos_token_id, *tok.all_special_ids} if i is not None]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=answerer.max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
    return [tok.decode(r.tolist(), skip_special_tokens=True).split("\n", 1)[0].strip() for r in out[:, ids.size(1):]]


def count_forward_inputs(model):
    """Record the (rows, tokens) shape of every forward's input ids."""
    shapes = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    return shapes, handle


@pytest.mark.parametrize("batch_size", [64, 2])
def test_tiny_gpt2_answers_equal_plain_generate_and_the_prefix_runs_once(models_dir, batch_size):
    from gflownet.core.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    model = load_causal_lm("packaged:tiny-gpt2", models_dir, dtype="float64")  # exact comparison: no rounding ties
    answerer = Answerer(model, tok, style="few_shot", max_new_tokens=6, batch_size=batch_size)
    shapes, handle = count_forward_inputs(model)
    try:
        answers = answerer(QUESTIONS)
    finally:
        handle.remove()
    assert answers == generate_reference(answerer, QUESTIONS)
    assert answers[0] == answers[4]
    unique = list(dict.fromkeys(QUESTIONS))
    stats = answerer.stats
    assert stats.questions == len(unique)
    enc = [answerer.encode(q) for q in unique]
    assert stats.shared_tokens == _common_prefix(enc) > 60  # the instruction and the three examples
    # the shared prefix is one (1, P) forward; after it, no forward sees more rows x tokens than the
    # questions' own tokens (padded per chunk) or one token per live row
    assert shapes[0] == (1, stats.shared_tokens)
    own = [len(e) - stats.shared_tokens for e in enc]
    assert sum(r * t for r, t in shapes[1:] if t > 1) <= len(unique) * max(own)
    assert all(t == 1 for r, t in shapes[1:] if r * t < min(own))


def test_common_prefix_leaves_every_row_a_token():
    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert _common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert _common_prefix([[7], [1, 2]]) == 0
    assert _common_prefix([[1, 2, 3]]) == 2


def test_no_shared_prefix_and_empty_input(models_dir):
    from gflownet.core.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    model = load_causal_lm("packaged:tiny-gpt2", models_dir, dtype="float64")
    answerer = Answerer(model, tok, style="few_shot", max_new_tokens=3, instruction="", examples=[])
    questions = ["Why?", "Tell me"]  # prompts "Question: Why?..." share "Question:" only
    assert answerer(questions) == generate_reference(answerer, questions)
    assert answerer([]) == []


def test_answer_text_is_the_first_line_and_may_be_empty(tiny_gpt2):
    model, tok = tiny_gpt2
    answerer = Answerer(model, tok)
    newline = tok.encode("\n", add_special_tokens=False)
    assert answerer._text(newline) == ""
    assert answerer._text(tok.encode(" Paris.\nQuestion:", add_special_tokens=False)) == "Paris."
    assert answerer._text([tok.eos_token_id]) == ""
    assert answerer.stop_mask(model.config.vocab_size)[newline[0]]


def test_configuration_errors(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="unknown answer style"):
        Answerer(model, tok, style="poetry")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        Answerer(model, tok, style="chat")
    with pytest.raises(ValueError, match=r"\[question, answer\] pairs"):
        Answerer(model, tok, examples=[["only a question"]])
    with pytest.raises(ValueError, match="must be >= 1"):
        Answerer(model, tok, max_new_tokens=0)
    assert Answerer(model, tok).style == "few_shot"
    prompt = Answerer(model, tok).prompt("Who wrote Hamlet?")
    assert prompt.startswith("Answer each question with one short declarative sentence.\nQuestion: Who wrote Hamlet?\n")
    assert prompt.endswith("Question: Who wrote Hamlet?\nAnswer:")


@pytest.mark.slow  # the real model's generation; the tiny GPT-2 twin above runs in the default suite
@pytest.mark.parametrize("style", ["chat", "few_shot"])
def test_smollm2_answers_equal_plain_generate_and_stop_early(models_dir, style):
    """The real answerer: its answers end at <|im_end|> (chat) or at the newline (few-shot), long
    before the token limit, and equal what ``generate`` gives on the full prompts."""
    from gflownet.core.modeling import load_causal_lm, load_tokenizer

    ref = "packaged:smollm2-135m-instruct"
    tok = load_tokenizer(ref, models_dir)
    model = load_causal_lm(ref, models_dir, dtype="float64")
    answerer = Answerer(model, tok, style=style, max_new_tokens=24)
    questions = QUESTIONS[:4]
    answers = answerer(questions)
    assert answers == generate_reference(answerer, questions)
    assert "French" in answers[0] or "France" in answers[0]  # she was a French actress
    assert answerer.stats.generated_tokens < 0.75 * len(questions) * answerer.max_new_tokens
    assert all(a and "\n" not in a for a in answers)


def test_reserved_cache_layer_matches_concatenation_and_grows():
    from gflownet.core.kv_cache import ReservedLayer

    torch.manual_seed(0)
    layer = ReservedLayer(capacity=4)
    keys, values = [], []
    for n in (3, 1, 2, 1):  # 7 positions: past the capacity of 4, so it must grow once
        k, v = torch.randn(2, 3, n, 5), torch.randn(2, 3, n, 5)
        out_k, out_v = layer.update(k, v)
        keys.append(k)
        values.append(v)
        torch.testing.assert_close(out_k, torch.cat(keys, dim=-2), rtol=0, atol=0)
        torch.testing.assert_close(out_v, torch.cat(values, dim=-2), rtol=0, atol=0)
    assert layer.get_seq_length() == 7
    layer.batch_select_indices(torch.tensor([1]))
    torch.testing.assert_close(layer.keys, torch.cat(keys, dim=-2)[1:], rtol=0, atol=0)
    k = torch.randn(1, 3, 1, 5)
    assert torch.equal(layer.update(k, k)[0][:, :, -1:], k) and layer.get_seq_length() == 8
    layer.crop(-3)
    assert layer.get_seq_length() == 5 and layer.keys.shape[-2] == 5


def test_prefixes_of_one_question_share_its_computed_tokens(models_dir):
    """Per-prefix rewards ask about every prefix of a sampled question: the shorter prompts reuse
    the longest one's keys and values (guest rows), with answers still equal to ``generate``."""
    from gflownet.core.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    model = load_causal_lm("packaged:tiny-gpt2", models_dir, dtype="float64")
    words = "Which company made the Sandy Bridge processors that Apple later used in its laptops".split()
    questions = [" ".join(words[:n]) + "?" for n in range(2, len(words) + 1)] + ["Who founded Intel?"]
    for batch_size in (64, 5):
        answerer = Answerer(model, tok, style="few_shot", max_new_tokens=5, batch_size=batch_size)
        assert answerer(questions) == generate_reference(answerer, questions)
        stats = answerer.stats
        assert stats.distinct_tokens <= stats.computed_tokens < stats.own_tokens
    answerer = Answerer(model, tok, style="few_shot", max_new_tokens=5)
    answerer(questions)
    assert answerer.stats.computed_tokens < 0.6 * answerer.stats.own_tokens
