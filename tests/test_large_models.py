"""The larger sampler configs (model=llama3_8b, gemma_2b, gpt2_xl) compose, load and run a training step.

Their hub weights are not reachable here, so each config runs on a tiny randomly initialised model
of the same architecture (Llama with grouped-query attention, Gemma with its chat template that
refuses a system turn, GPT-2), saved as a local directory and named by ``model.sampler.name_or_path``.
The tokenizers are the packaged SmolLM2 (Llama, Gemma) and GPT-2 ones: the architecture, LoRA
targets, dtype and chat-template path are what is tested, not the vocabulary.
"""

import csv
import math

import pytest
import torch

from gflownet.runner import build_module, run_training

# google/gemma-2b-it's chat template (tokenizer_config.json): a system turn raises.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

STEP = ["logger=csv", "callbacks=none", "trainer.max_steps=1", "++trainer.limit_val_batches=1", "trainer.val_check_interval=1",
        "final_probe_samples=1", "trainer.enable_progress_bar=false", "gfn.n_samples=2", "task.min_len=2", "task.max_len=5",
        "data.val_size=2", "reward.answer.max_new_tokens=3"]


def _tiny(kind: str, dest, models_dir):
    """A tiny random model of the architecture the config names, saved with a tokenizer under ``dest``."""
    import transformers as tf

    from gflownet.core.modeling import load_tokenizer

    if kind == "gpt2_xl":
        tokenizer = load_tokenizer("packaged:tiny-gpt2", models_dir)
        config = tf.GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2)
        cls = tf.GPT2LMHeadModel
    else:
        tokenizer = load_tokenizer("packaged:smollm2-135m-instruct", models_dir)
        common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        if kind == "llama3_8b":
            config, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
        else:
            config, cls = tf.GemmaConfig(**common, head_dim=8), tf.GemmaForCausalLM
            tokenizer.chat_template = GEMMA_TEMPLATE
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("name,hub_id", [("llama3_8b", "meta-llama/Meta-Llama-3-8B-Instruct"),
                                         ("gemma_2b", "google/gemma-2b-it"), ("gpt2_xl", "gpt2-xl")])
def test_large_model_configs_compose_with_their_settings(name, hub_id, compose_cfg):
    cfg = compose_cfg([f"model={name}"])
    assert cfg.model.sampler.name_or_path == hub_id
    if name == "gpt2_xl":
        assert list(cfg.model.lora.target_modules) == ["c_attn"] and cfg.model.prompt_style == "plain"
        return
    assert cfg.model.sampler.load_in_4bit is True and cfg.model.sampler.dtype == "bfloat16"
    assert list(cfg.model.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.model.prompt_style == "chat" and cfg.task.prompt_style == "chat"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the 4-bit path runs on this machine's GPU (test below)")
@pytest.mark.parametrize("name", ["llama3_8b", "gemma_2b"])
def test_four_bit_configs_say_what_to_do_without_a_gpu(name, compose_cfg, tmp_path, models_dir):
    path = _tiny(name, tmp_path / name, models_dir)
    cfg = compose_cfg([f"model={name}", f"model.sampler.name_or_path={path}"])
    with pytest.raises(Exception, match=r"load_in_4bit=true needs a CUDA GPU.*model.sampler.load_in_4bit=false"):
        build_module(cfg)


@pytest.mark.parametrize("name", ["llama3_8b", "gemma_2b", "gpt2_xl"])
def test_large_model_configs_run_a_training_step_on_a_tiny_model(name, compose_cfg, tmp_path, models_dir):
    path = _tiny(name, tmp_path / name, models_dir)
    four_bit = torch.cuda.is_available() and name != "gpt2_xl"  # where it can, the shipped 4-bit path itself
    overrides = [f"model={name}", f"model.sampler.name_or_path={path}", *STEP]
    if name != "gpt2_xl" and not four_bit:
        overrides.append("model.sampler.load_in_4bit=false")  # bf16 weights: everything else as shipped
    if four_bit:
        overrides += ["trainer=gpu", "trainer.devices=1"]
    cfg = compose_cfg(overrides)
    module = build_module(cfg)
    lora = {n.split(".")[-4] for n, p in module.sampler.named_parameters() if p.requires_grad and "lora_A" in n}
    assert lora == ({"c_attn"} if name == "gpt2_xl" else {"q_proj", "k_proj", "v_proj", "o_proj"})
    expected = torch.float32 if name == "gpt2_xl" else torch.bfloat16
    assert module.sampler.get_input_embeddings().weight.dtype == expected
    del module

    assert run_training(cfg)["global_step"] == 1
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/avg_log_reward_unscaled") for r in rows)


def test_gemma_chat_template_gets_the_instruction_in_the_first_user_turn(tmp_path, models_dir):
    from gflownet.core.modeling import load_tokenizer
    from gflownet.tasks.contradiction.answerer import Answerer

    tokenizer = load_tokenizer(str(_tiny("gemma_2b", tmp_path / "gemma", models_dir)))
    answerer = Answerer(None, tokenizer, style="chat", instruction="Answer briefly.", examples=[["Who wrote Hamlet?", "Shakespeare."]])
    text = answerer.prompt("Who painted the Mona Lisa?")
    assert not answerer.system_turn
    assert text.count("<start_of_turn>user\nAnswer briefly.\n\nWho wrote Hamlet?<end_of_turn>") == 1
    assert text.endswith("<start_of_turn>user\nWho painted the Mona Lisa?<end_of_turn>\n<start_of_turn>model\n")
    smol = load_tokenizer("packaged:smollm2-135m-instruct", models_dir)  # a template with a system turn keeps it
    assert Answerer(None, smol, style="chat", instruction="Answer briefly.").system_turn
