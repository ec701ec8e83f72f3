"""Knowledge edits of the answerer (gflownet/editing): ROME's closed form against a float64 solve, ROME
and LoRA-FT on a tiny GPT-2 and a tiny Llama-style model that have learnt a few facts, saved edit sets
refused for other data, models or settings.

The tiny models are trained here, in seconds, on a word-level vocabulary: "the home country of
Toyota Japan ." and the like. Their facts are read at the subject's token, which is the prompt's last
token: two layers this small do not route a fact from an earlier token through the subject's MLP
(measured while writing these tests: a shift of norm 80 at the subject's MLP output changed the next
token's distribution by a KL of 2e-4), so the edited site must sit where the model reads the fact.
ROME's effect on a real model with the subject inside the prompt is the slow test on SmolLM2.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gflownet.editing.lora_ft import LoraFTSettings, apply_lora_ft
from gflownet.editing.model_parts import default_layer, mlp_site
from gflownet.editing.requests import EditRequest, request_from_record, subject_last_token
from gflownet.editing.rome import RomeSettings, apply_rome, compute_delta, rank_one_update, subject_key
from gflownet.editing.stats import key_second_moment, sampled_text_ids
from gflownet.editing.store import EditSetMismatchError, edited_model

PAIRS = [("Toyota", "Japan"), ("Nokia", "Finland"), ("Volvo", "Sweden"), ("Ferrari", "Italy"), ("Samsung", "Korea"),
         ("Renault", "France"), ("Boeing", "America"), ("Lego", "Denmark"), ("Philips", "Netherlands"), ("Skoda", "Czechia")]
FORM = "the home country of {}"
EDIT = EditRequest("Toyota", FORM.format("Toyota"), "Italy", "Japan")


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    filler = "the home country of company is well known and makes cars . , I you we therefore because".split()
    openings = "The Therefore Because It He She They This On After When We His Her One In A You".split()
    words = ["[PAD]", "[UNK]", "[EOS]"] + sorted(set(filler + openings + [w for p in PAIRS for w in p]))
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def fitted(arch: str, tok, steps: int = 300):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    V = len(tok)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0,
                                           embd_pdrop=0, attn_pdrop=0, bos_token_id=2, eos_token_id=2))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                             bos_token_id=2, eos_token_id=2, pad_token_id=0))
    texts = [f"{FORM.format(s)} {a} ." for s, a in PAIRS] + [f"the company {s} is well known ." for s, _ in PAIRS]
    enc = [tok.encode(t) for t in texts]
    W = max(map(len, enc))
    ids = torch.tensor([e + [0] * (W - len(e)) for e in enc])
    labels = ids.clone()
    for i, e in enumerate(enc):
        labels[i, len(e):] = -100
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tok):
    return request.param, fitted(request.param, tok)


def target_logp(model, tok, prompt: str, target: str) -> float:
    ids, t = tok.encode(prompt), tok.encode(" " + target)
    lp = model(input_ids=torch.tensor([ids + t])).logits[0].log_softmax(-1)
    return sum(lp[len(ids) - 1 + j, t[j]].item() for j in range(len(t))) / len(t)


def next_token_logp(model, tok, prompt: str):
    return model(input_ids=torch.tensor([tok.encode(prompt)])).logits[0, -1].log_softmax(-1)


def kl(p_log, q_log) -> float:
    return float((p_log.exp() * (p_log - q_log)).sum())


# ---- the closed form


def test_rank_one_update_is_the_constrained_least_squares_solution():
    """W' = W + δ(C⁻¹k)ᵀ/(kᵀC⁻¹k) minimises ‖(W'−W)K‖ subject to W'k = Wk + δ (C = KKᵀ/N):
    compared with the KKT system of that problem solved in float64 by numpy."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    d_in, d_out, N = 12, 7, 200
    K = torch.randn(d_in, N, generator=g) * torch.linspace(0.2, 3.0, d_in)[:, None]  # anisotropic keys
    C = (K @ K.T / N).float()
    k = torch.randn(d_in, generator=g)
    delta = torch.randn(d_out, generator=g)
    value, key_dir = rank_one_update(C, k, delta)
    dW = torch.outer(value, key_dir).numpy()

    # float64 reference: minimise sum_i ||dW K||^2 s.t. dW k = delta, row by row via the KKT system
    K64, k64, d64 = K.double().numpy(), k.double().numpy(), delta.double().numpy()
    H = 2 * K64 @ K64.T / N
    kkt = np.block([[H, k64[:, None]], [k64[None, :], np.zeros((1, 1))]])
    ref = np.stack([np.linalg.solve(kkt, np.concatenate([np.zeros(d_in), [d64[r]]]))[:d_in] for r in range(d_out)])
    assert np.allclose(dW, ref, rtol=1e-4, atol=1e-6), np.abs(dW - ref).max()
    assert np.allclose(dW @ k64, d64, atol=1e-5)


def test_rank_one_update_on_a_model_shifts_the_key_output_by_delta(tok, tiny):
    """Applied to the model's MLP projection (Conv1D for GPT-2, Linear for Llama), the update moves the
    projection's output at k* by exactly δ."""
    _, model = tiny
    model = copy.deepcopy(model)
    site = mlp_site(model, 0)
    k = subject_key(model, tok, site, EDIT, ["{}"])
    C = torch.eye(site.key_dim) + 0.1
    delta = torch.randn(site.linear_weight().shape[0])
    before = site.module(k[None, None]).squeeze()
    value, key_dir = rank_one_update(C, k, delta)
    site.add_rank_one(value, key_dir)
    after = site.module(k[None, None]).squeeze()
    assert torch.allclose(after - before, delta, atol=1e-4)


# ---- ROME and LoRA-FT on the tiny models


def test_subject_last_token_finds_the_subject():
    from transformers import AutoTokenizer  # noqa: F401 - the packaged GPT-2 tokenizer below

    from gflownet.core.modeling import load_tokenizer

    gpt2 = load_tokenizer("packaged:tiny-gpt2")
    text = "In which city is the Eiffel Tower? It is in"
    i = subject_last_token(gpt2, text, "The Eiffel Tower")  # article dropped, case ignored
    assert gpt2.decode(gpt2.encode(text, add_special_tokens=False)[i]) == " Tower"
    with pytest.raises(ValueError, match="does not occur"):
        subject_last_token(gpt2, "Who wrote Hamlet?", "Macbeth")


def test_request_from_record_uses_the_declarative_fact():
    from gflownet.tasks.contradiction.data import EditRecord

    r = EditRecord("The Eiffel Tower", "In which city is the Eiffel Tower?", "Paris", "Rome",
                   "The Eiffel Tower is located in Paris.", "The Eiffel Tower is located in Rome.")
    assert request_from_record(r) == EditRequest("The Eiffel Tower", "The Eiffel Tower is located in", "Rome", "Paris")
    q = EditRecord("X", "What is X's job?", "a", "b", "X is a.", "Unrelated sentence.")
    assert request_from_record(q).prompt == "What is X's job?"


def test_rome_makes_the_edit_and_keeps_other_facts(tok, tiny, capsys):
    arch, base = tiny
    model = copy.deepcopy(base)
    layer = default_layer(model)
    site = mlp_site(model, layer)
    others = [FORM.format(s) for s, _ in PAIRS[1:]]
    before = [next_token_logp(model, tok, p) for p in others]
    assert target_logp(model, tok, EDIT.prompt, "Japan") > target_logp(model, tok, EDIT.prompt, "Italy") + 3
    C, n = key_second_moment(model, site, sampled_text_ids(model, tok, 3000, seq_len=16))
    assert n == 3000 + (-3000 % 16) or n >= 3000
    reports = apply_rome(model, tok, site, [EDIT], C, RomeSettings.for_model(model, templates=()))  # the bare prompt (module docstring)
    progress = capsys.readouterr().err  # the long parts say how far they are (an hour on 16 edits on a CPU)
    assert "sampling text for ROME's key statistics: 3000/3000 tokens" in progress and "ROME edits: 1/1 edits" in progress
    new, old = target_logp(model, tok, EDIT.prompt, "Italy"), target_logp(model, tok, EDIT.prompt, "Japan")
    assert new > old + 1.0, (arch, new, old, reports)
    after = [next_token_logp(model, tok, p) for p in others]
    kls = [kl(b, a) for b, a in zip(before, after)]
    assert max(kls) < 0.05, (arch, kls)  # stated tolerance: other subjects' next-token distributions
    assert all(b.argmax() == a.argmax() for b, a in zip(before, after))


def test_lora_ft_makes_the_edit_within_its_constraint(tok, tiny, capsys):
    arch, base = tiny
    model = copy.deepcopy(base)
    site = mlp_site(model, default_layer(model))
    w0 = site.linear_weight().clone()
    others = [FORM.format(s) for s, _ in PAIRS[1:]]
    before = [next_token_logp(model, tok, p) for p in others]
    eps = 0.02
    report = apply_lora_ft(model, tok, site, [EDIT], LoraFTSettings(norm_constraint=eps, steps=60, lr=1e-2))
    assert f"LoRA-FT on 1 edits: {report['steps']}/60 steps" in capsys.readouterr().err  # the last line, stopped early or not
    change = (site.linear_weight() - w0).abs().max().item()
    assert change <= eps * 1.0001 and report["max_abs_change"] <= eps * 1.0001
    new, old = target_logp(model, tok, EDIT.prompt, "Italy"), target_logp(model, tok, EDIT.prompt, "Japan")
    assert new > old + 1.0, (arch, new, old, report)
    after = [next_token_logp(model, tok, p) for p in others]
    kls = [kl(b, a) for b, a in zip(before, after)]
    # FT-L is known to be less local than ROME (ROME paper, table 4): a looser stated tolerance
    # (on the GPT-2 at norm_constraint 0.05 the mean KL is 2.1: the constraint is what keeps it local)
    assert sum(kls) / len(kls) < 1.0, (arch, kls)


def test_lora_ft_also_makes_the_edit_in_a_request_s_contexts(tok, tiny):
    """A context of the request (another text before the object) is trained on: the edit holds there,
    which training on the prompt alone does not give. A request without contexts keeps its digest."""
    from dataclasses import replace

    from gflownet.editing.requests import requests_digest

    arch, base = tiny
    context = "the company Toyota is"  # the tiny model continues it with "well known"
    gains = {}
    for with_context in (False, True):
        model = copy.deepcopy(base)
        request = replace(EDIT, contexts=(context,)) if with_context else EDIT
        apply_lora_ft(model, tok, mlp_site(model, default_layer(model)), [request],
                      LoraFTSettings(norm_constraint=0.05, steps=60, lr=1e-2))
        gains[with_context] = target_logp(model, tok, context, "Italy") - target_logp(base, tok, context, "Italy")
        assert target_logp(model, tok, EDIT.prompt, "Italy") > target_logp(model, tok, EDIT.prompt, "Japan") + 1.0
    assert gains[True] > gains[False] + 2.0, (arch, gains)
    assert "contexts" not in EDIT.to_dict() and requests_digest([EDIT]) == requests_digest([replace(EDIT, contexts=())])
    assert requests_digest([replace(EDIT, contexts=(context,))]) != requests_digest([EDIT])


def test_compute_delta_reaches_the_target_through_the_hook(tok, tiny):
    """The value optimisation alone (δ added at the subject's token) makes the new object likely."""
    _, model = tiny
    site = mlp_site(model, default_layer(model))
    delta, report = compute_delta(model, tok, site, EDIT, ["{}"], RomeSettings.for_model(model))
    assert report["p_new"] > 0.5 and delta.norm() > 0
    assert all(not p.requires_grad for p in model.parameters())  # frozen again afterwards


# ---- saved edit sets


def test_edit_set_is_saved_reused_and_refused_for_other_edits(tok, tiny, tmp_path):
    _, base = tiny
    settings = {"templates": [[3, 2]], "v_steps": 5}
    stats = {"text": "sampled", "n_tokens": 500}
    m1, manifest = edited_model("rome", copy.deepcopy(base), tok, [EDIT], model_name="tiny", settings=settings,
                                stats=stats, cache_dir=tmp_path)
    saved = list(tmp_path.glob("rome-*.pt"))
    assert len(saved) == 1 and manifest["edits"] == 1 and manifest["requests"][0]["target_new"] == "Italy"
    assert not list(tmp_path.glob(".*.partial"))
    # reused: the same weights, loaded rather than recomputed
    m2, manifest2 = edited_model("rome", copy.deepcopy(base), tok, [EDIT], model_name="tiny", settings=settings,
                                 stats=stats, cache_dir=tmp_path)
    assert manifest2["created"] == manifest["created"]
    for (n1, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1
    other = EditRequest("Nokia", FORM.format("Nokia"), "Sweden", "Finland")
    with pytest.raises(EditSetMismatchError, match="edits"):
        edited_model("rome", copy.deepcopy(base), tok, [other], model_name="tiny", settings=settings, stats=stats,
                     path=saved[0])
    with pytest.raises(EditSetMismatchError, match="settings"):
        edited_model("rome", copy.deepcopy(base), tok, [EDIT], model_name="tiny", settings={**settings, "v_steps": 6},
                     stats=stats, path=saved[0])
    different = copy.deepcopy(base)
    with torch.no_grad():
        next(different.parameters()).add_(0.01)
    with pytest.raises(EditSetMismatchError, match="model"):
        edited_model("rome", different, tok, [EDIT], model_name="tiny", settings=settings, stats=stats, path=saved[0])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(EditSetMismatchError, match="cannot read"):
        edited_model("rome", copy.deepcopy(base), tok, [EDIT], model_name="tiny", settings=settings, stats=stats, path=broken)
    with pytest.raises(ValueError, match="unknown rome setting"):
        edited_model("rome", copy.deepcopy(base), tok, [EDIT], settings={"v_stepz": 3}, cache_dir=tmp_path)


# ---- edited answerers in the contradiction reward


@pytest.mark.slow  # SmolLM2 answers with and without the edit stated
def test_in_context_answerer_states_the_edit_and_moves_the_answer_towards_it(models_dir):
    """SmolLM2-135M with the edit fact before the question: the log-probability of the edited answer
    against the original one rises for each of three edits, and an unrelated question's answer keeps
    most of its probability. Measured while writing this test (nats): the margin moves -10.8 -> -7.8,
    -1.75 -> -0.72, -5.25 -> -3.85 (the 135M model rarely flips to the new fact: in-context editing is
    weak on it, see the edit-quality table in docs/guide.md); the unrelated answer loses 2.6, 0.6 and 0.4."""
    from gflownet.core.modeling import load_causal_lm, load_tokenizer
    from gflownet.tasks.contradiction.answerer import Answerer

    ref = "packaged:smollm2-135m-instruct"
    tok = load_tokenizer(ref, models_dir)
    model = load_causal_lm(ref, models_dir)
    edited = Answerer(model, tok, fact_template="New fact: {fact}\n{question}")
    cases = [("The Eiffel Tower is located in Rome.", "In which city is the Eiffel Tower?", "The Eiffel Tower is located in Paris."),
             ("Danielle Darrieux's mother tongue is English.", "What is Danielle Darrieux's mother tongue?",
              "Danielle Darrieux's mother tongue is French."),
             ("Toyota was founded in Italy.", "In which country was Toyota founded?", "Toyota was founded in Japan.")]

    def logp(prompt: str, answer: str) -> float:
        p, x = tok.encode(prompt, add_special_tokens=False), tok.encode(answer, add_special_tokens=False)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([p + x])).logits[0, len(p) - 1 : -1].log_softmax(-1)
        return out.gather(-1, torch.tensor(x)[:, None]).sum().item()

    unrelated, berlin = "What is the capital of Germany?", "The capital of Germany is Berlin."
    for fact, q, old in cases:
        plain, told = edited.prompt(q), edited.prompt(edited.turn(q, fact))
        assert fact in told and fact not in plain
        assert logp(told, fact) - logp(told, old) > logp(plain, fact) - logp(plain, old) + 0.5, fact
        assert logp(edited.prompt(edited.turn(unrelated, fact)), berlin) > logp(edited.prompt(unrelated), berlin) - 3.0
    # questions told different facts are different turns, answered separately
    answers = edited([cases[0][1], cases[0][1]], [cases[0][0], "The Eiffel Tower is located in Paris."])
    assert len(answers) == 2 and edited.stats.questions == 2
    with pytest.raises(ValueError, match="pass the edit facts"):
        edited([cases[0][1]])
    with pytest.raises(ValueError, match=r"\{fact\} and \{question\}"):
        Answerer(model, tok, fact_template="Fact: {fact}")


@pytest.mark.slow  # ROME on SmolLM2 (its layer statistics and the edit)
def test_reward_builds_a_rome_edited_answerer_and_leaves_the_sampler_alone(models_dir, tmp_path):
    """answerer/edit=rome through the config: the reward's answerer is a separate copy of the model
    whose edited MLP differs from the sampler's, every record of the data set is in the saved edit set,
    and a second build loads it instead of editing again."""
    import hydra

    from tests.conftest import compose
    from gflownet.core.modeling import load_sampler, load_tokenizer
    from gflownet.core.protocols import ActionLimits, RewardEnv

    cfg = compose(["model=tiny_gpt2", "answerer/edit=rome", f"answerer.edit.cache_dir={tmp_path}",
                   "+answerer.edit.settings.v_steps=2", "+answerer.edit.settings.templates=[]",
                   "answerer.edit.stats.n_tokens=400", "reward/judge=fact"], tmp_path / "run")
    sampler = load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.0}, models_dir)
    tok = load_tokenizer("packaged:tiny-gpt2", models_dir)
    env = RewardEnv(sampler, tok, torch.device("cpu"), str(models_dir), ActionLimits("?", 2, 8), 30,
                    sampler_name="packaged:tiny-gpt2")
    before = {n: p.clone() for n, p in sampler.named_parameters()}
    reward = hydra.utils.instantiate(cfg.reward)(env)
    answerer = reward.terms["contradiction"][1].answerer
    assert answerer.model is not sampler and not answerer.disable_adapters
    saved = list(tmp_path.glob("rome-*.pt"))
    assert len(saved) == 1
    blob = torch.load(saved[0], weights_only=True)
    records = hydra.utils.instantiate(cfg.data).load()
    assert blob["manifest"]["edits"] == len(records[0]) + len(records[1])
    site = blob["manifest"]["site"]
    edited_w = dict(answerer.model.named_parameters())[f"{site}.weight"]
    base_w = dict(sampler.get_base_model().named_parameters())[f"{site}.weight"]
    assert not torch.equal(edited_w, base_w)
    assert all(torch.equal(p, before[n]) for n, p in sampler.named_parameters())
    mtime = saved[0].stat().st_mtime
    again = hydra.utils.instantiate(cfg.reward)(env).terms["contradiction"][1].answerer
    assert saved[0].stat().st_mtime == mtime
    assert torch.equal(dict(again.model.named_parameters())[f"{site}.weight"], edited_w)


def test_prepare_edits_saves_the_answer_format_edit_set_a_run_then_loads(tmp_path, models_dir, compose_cfg):
    """scripts/prepare_edits.py builds the same LoRA-FT edit set as the run's reward (with
    answer_format, the answerer's own prompt as a context), so that the run loads it, not edits again."""
    import sys

    from omegaconf import OmegaConf

    from gflownet.core.modeling import load_causal_lm, load_tokenizer
    from gflownet.tasks.contradiction.answerer import Answerer
    from gflownet.tasks.contradiction.reward import edit_weights

    sys.path.insert(0, "scripts")
    from prepare_edits import main

    overrides = ["experiment=edit_probe", "answerer/edit=lora_ft", "model=tiny_gpt2", "data.max_records=3",
                 "data.val_size=1", "answerer.edit.settings.steps=2", f"answerer.edit.cache_dir={tmp_path}",
                 f"paths.models_dir={models_dir}"]
    assert main(overrides) == 0
    saved = list(tmp_path.glob("lora_ft-*.pt"))
    assert len(saved) == 1
    prepared = torch.load(saved[0], weights_only=False)["manifest"]
    assert all(len(r["contexts"]) == 1 and r["contexts"][0].endswith(r["prompt"]) for r in prepared["requests"])
    cfg = compose_cfg(overrides)
    source = cfg.model.sampler.name_or_path
    model, tokenizer = load_causal_lm(source, models_dir), load_tokenizer(source, models_dir)
    answer = OmegaConf.to_container(cfg.reward.answer, resolve=True)
    loaded = edit_weights(model, tokenizer, source, OmegaConf.to_container(cfg.answerer.edit, resolve=True),
                          answer_prompt=Answerer(model, tokenizer, **answer).prompt)
    assert loaded["created"] == prepared["created"]  # loaded from the prepared file, not edited again
