"""The next-sentence task: prompt data and its converter, the task's metrics, and its reward on real text."""

import json
import subprocess
import sys

import pytest
import torch

from gflownet.core.protocols import Rollout
from gflownet.tasks.next_sentence.data import PromptDataModule, clean_prompts, load_prompts
from gflownet.tasks.next_sentence.task import NextSentenceTask
from tests.conftest import ROOT, trajectories


def test_shipped_prompts_are_clean_and_one_to_three_sentences():
    records, dropped = load_prompts(ROOT / "data" / "next_sentence_prompts.txt")
    assert len(records) == 60 and not dropped
    for r in records:
        assert 1 <= r.text.count(".") <= 3 and r.text.endswith("."), r.text


def test_cleaning_counts_each_reason():
    lines = ["  A  cat.  ", "", "A cat.", "bad\x07bell.", "x" * 50 + ".", "Fine."]
    kept, dropped = clean_prompts(lines, max_chars=40)
    assert [r.text for r in kept] == ["A cat.", "Fine."]
    assert dropped == {"empty": 1, "duplicate": 1, "control_characters": 1, "too_long": 1}


@pytest.mark.slow
def test_converter_and_training_read_the_same_prompts(tmp_path):
    src = tmp_path / "mine.txt"
    src.write_bytes("\ufeffThe sun rose.\n\nThe sun rose.\nIt was cold. We waited.\n".encode("utf-8"))  # BOM, blank, repeat
    out = tmp_path / "mine.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "convert_data.py"), "--task", "next_sentence", str(src), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kept 2 prompts, dropped 2 (empty=1, duplicate=1)" in proc.stderr
    assert [json.loads(l)["text"] for l in out.read_text().splitlines()] == ["The sun rose.", "It was cold. We waited."]
    from_txt = PromptDataModule(str(src), val_size=1)
    from_jsonl = PromptDataModule(str(out), val_size=1)
    assert from_txt.load() == from_jsonl.load()
    missing = subprocess.run([sys.executable, str(ROOT / "convert_data.py"), "--task", "next_sentence", str(tmp_path / "no.txt")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "one prompt per line" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok."}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each row must be an object with a string field \"text\""):
        load_prompts(bad)


def test_metrics_are_mean_and_per_prompt_max_log_likelihood():
    task = NextSentenceTask()
    assert task.limits.termination_text == "."
    ro = Rollout(prompts=["a", "a", "b", "b"], sample_ids=torch.zeros(4, 2, dtype=torch.long), lengths=torch.ones(4, dtype=torch.long),
                 log_r=torch.zeros(4, 2), scored=torch.ones(4, 2, dtype=torch.bool), samples=["x."] * 4,
                 components={"log_likelihood": torch.tensor([-10.0, -4.0, -8.0, -6.0])})
    m = task.metrics(ro)
    assert m["mean_log_likelihood"] == pytest.approx(-7.0) and m["max_log_likelihood"] == pytest.approx(-5.0)


def test_reward_is_the_reward_lm_likelihood_of_every_prefix_with_banned_tokens_penalised(compose_cfg):
    """SmolLM2 as sampler and reward LM: the per-state reward is log P_LM(prefix + "." | prompt), from one pass,
    and a sentence with a banned token ("?" inside) costs about the penalty."""
    from gflownet.core.losses import SubTB
    from gflownet.runner import build_module

    module = build_module(compose_cfg(["task=next_sentence"]))
    module.build_reward()
    tok = module.tokenizer
    prompt = "The rain had not stopped for three days."
    ids, lengths = trajectories(tok, [" The river rose", " Why did it rain? It rose"], term=module.space.termination_id,
                                lead="")
    scored = SubTB(score_every=1).scored_states(lengths, 1)
    out = module.compute_rewards([prompt] * 2, ids, lengths, scored, {})
    model = module.sampler
    with torch.no_grad(), model.disable_adapter():
        p = tok.encode(prompt, add_special_tokens=False)
        for t in (1, int(lengths[0])):
            x = ids[0, :t].tolist() + [module.space.termination_id]
            logits = model(torch.tensor([p + x])).logits[0, len(p) - 1 : -1].float()
            logits[:, module.reward.penalized] -= 50.0  # the banned tokens' logits, as configured
            lp = logits.log_softmax(-1)
            want = float(lp.gather(-1, torch.tensor(x)[:, None]).sum())
            assert float(out.log_r[0, t]) == pytest.approx(want, abs=2e-3)
    pen = out.components["penalized_log_likelihood"]
    assert float(pen[1]) < float(pen[0]) - 40  # "?" is banned: the reward pays for it
    # the plain log-likelihood (fluency) carries no penalty: the difference is what the LM itself says
    plain = out.components["log_likelihood"]
    assert float(pen[1] - plain[1]) < -40 and abs(float(plain[1] - pen[1]) - 50.0) < 10.0
