import pytest
import torch

from gflownet.core import modeling as M


def test_packaged_tiny_gpt2_has_the_real_gpt2_tokenizer(tiny_gpt2):
    model, tok = tiny_gpt2
    assert tok("Who wrote Hamlet?").input_ids == [8241, 2630, 4345, 1616, 30]  # GPT-2's own ids
    assert len(tok) == 50257 and model.config.vocab_size == 50257
    assert model.config.model_type == "gpt2" and model.config.n_layer == 2
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_packaged_smollm2_loads_and_answers(models_dir):
    tok = M.load_tokenizer("packaged:smollm2-135m-instruct", models_dir)
    model = M.load_causal_lm("packaged:smollm2-135m-instruct", models_dir)
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None  # a plain fp32 copy, not GGUF
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_local_directory_source(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    model.save_pretrained(tmp_path / "copy")
    tok.save_pretrained(tmp_path / "copy")
    assert M.resolve(str(tmp_path / "copy")) == ("local", str(tmp_path / "copy"))
    again = M.load_causal_lm(str(tmp_path / "copy"))
    ids = torch.tensor([[8241, 2630, 4345, 1616, 30]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits)
    assert M.load_tokenizer(str(tmp_path / "copy"))("Who").input_ids == [8241]


def test_bad_local_directory_messages(tmp_path):
    with pytest.raises(M.ModelNotAvailableError, match="without config.json"):
        M.resolve(str(tmp_path))
    with pytest.raises(M.ModelNotAvailableError, match="does not exist"):
        M.resolve("./no/such/model")


def test_hub_id_offline_fails_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert M.resolve("gpt2-large") == ("hub", "gpt2-large")
    with pytest.raises(M.ModelNotAvailableError) as err:
        M.load_causal_lm("gpt2-large")
    msg = str(err.value)
    assert "'gpt2-large' is not in the Hugging Face cache" in msg
    assert "download_models.py" in msg and "model=smollm2_offline" in msg
    with pytest.raises(M.ModelNotAvailableError, match="NDugar/v3-Large-mnli"):
        M.load_sequence_classifier("NDugar/v3-Large-mnli")


def test_unknown_packaged_model():
    with pytest.raises(M.ModelNotAvailableError, match="unknown packaged model 'nope'"):
        M.resolve("packaged:nope")


def test_materialise_is_atomic_and_reused(tmp_path, monkeypatch):
    calls = []

    def build(dest):
        calls.append(dest)
        (dest / "config.json").write_text("{}")

    monkeypatch.setitem(M.PACKAGED, "fake", build)
    first = M.materialise_packaged("fake", tmp_path)
    second = M.materialise_packaged("fake", tmp_path)
    assert first == second == tmp_path / "fake" and len(calls) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fake-")]  # no temp dirs left

    def broken(dest):
        (dest / "partial").write_text("x")
        raise RuntimeError("boom")

    monkeypatch.setitem(M.PACKAGED, "broken", broken)
    with pytest.raises(RuntimeError, match="boom"):
        M.materialise_packaged("broken", tmp_path)
    assert not (tmp_path / "broken").exists()  # a failed build never appears under the final name


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_targets_by_model_type_and_only_adapters_train(kind, tiny_gpt2):
    if kind == "gpt2":
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        base = GPT2LMHeadModel(tiny_gpt2[0].config)  # a fresh copy: the fixture's model stays untouched
        expected = {"c_attn"}
    else:
        base = _tiny_llama()
        expected = {"q_proj", "v_proj"}
    model = M.apply_lora(base, r=4, alpha=8, dropout=0.0)
    lora_layers = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
    assert lora_layers == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(0, 64, (2, 6))  # valid ids for both vocabularies
    for _ in range(2):  # lora_B starts at zero; two steps move both A and B
        opt.zero_grad()
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # LoRA changed, base frozen


def test_lora_unknown_model_type_needs_explicit_targets():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="set model.lora.target_modules explicitly"):
        M.apply_lora(model)
    assert M.lora_target_modules(model, ["query"]) == ["query"]


def test_four_bit_on_cpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="load_in_4bit=true needs a CUDA GPU"):
        M.load_causal_lm("packaged:tiny-gpt2", load_in_4bit=True)


def test_gradient_checkpointing_is_enabled_and_sampler_trains_only_lora(models_dir):
    sampler = M.load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.0}, models_dir, gradient_checkpointing=True)
    assert sampler.base_model.model.is_activation_checkpointing
    assert all("lora_" in n for n, p in sampler.named_parameters() if p.requires_grad)


def test_sequence_classifier_source(tmp_path):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    cfg = DebertaV2Config(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          num_labels=3, id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                          label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    DebertaV2ForSequenceClassification(cfg).save_pretrained(tmp_path / "nli")
    model = M.load_sequence_classifier(str(tmp_path / "nli"))
    assert model.config.id2label[2] == "contradiction" and not model.training


def test_parse_dtype():
    assert M.parse_dtype("bfloat16") is torch.bfloat16 and M.parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        M.parse_dtype("float8")


def test_base_dropout_is_disabled_so_train_and_eval_agree(models_dir):
    from transformers import GPT2Config

    assert GPT2Config().attn_pdrop == 0.1  # what GPT-2 configs (gpt2-large included) ship with
    sampler = M.load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.0}, models_dir)
    assert all(m.p == 0.0 for m in sampler.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.tensor([[8241, 2630, 4345, 1616, 30] * 4])
    sampler.eval()
    a = sampler(ids).logits
    sampler.train()
    b = sampler(ids).logits
    sampler.eval()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with_lora_dropout = M.load_sampler("packaged:tiny-gpt2", {"r": 2, "alpha": 4, "dropout": 0.3}, models_dir)
    assert {m.p for m in with_lora_dropout.modules() if isinstance(m, torch.nn.Dropout)} == {0.0, 0.3}  # LoRA's own stays


def test_default_models_dir_is_the_repositorys():
    from tests.conftest import ROOT

    assert M.DEFAULT_MODELS_DIR == ROOT / "models"


def test_token_ids_of_texts_matches_exact_token_text(tiny_gpt2):
    from gflownet.core.sampling import token_ids_of_texts

    _, tok = tiny_gpt2
    ids = token_ids_of_texts(tok, ["A", "..", "no-such-single-token-text"])
    assert sorted(tok.decode([i]) for i in ids) == ["..", "A"]  # not the article " A"
    assert tok.encode(" A")[0] not in ids
