"""The smoothing stage (gflownet/core/smoothing.py, scripts/smooth.py): which entries it picks, that
maximum likelihood moves the sampler onto them on a problem small enough to enumerate, and the
script's checkpoint read back by scripts/evaluate.py."""

import json
import uuid
import subprocess
import sys

import pytest
import torch

from gflownet.core.replay_buffer import BufferEntry, InMemoryReplayBuffer, RedisReplayBuffer
from gflownet.core.smoothing import best_distinct, passes, smooth
from tests.conftest import ROOT


def entry(question: str, reward: float, **components) -> BufferEntry:
    return BufferEntry(text=question, token_ids=[1, 2], log_r=[None, reward], reward=reward,
                       components=components)


def test_best_distinct_keeps_the_best_of_each_meaning_above_the_thresholds():
    entries = [entry("a?", -1.0, p=0.9), entry("b?", -2.0, p=0.1), entry("c?", -3.0, p=0.8),
               entry("d?", -0.5, p=0.7), entry("e?", -4.0, p=0.95)]
    # a, c and d mean the same; e means something else
    vectors = {"a?": [1.0, 0.0], "b?": [0.0, 1.0], "c?": [0.99, 0.1], "d?": [0.98, 0.05], "e?": [0.0, 1.0]}
    embed = lambda texts: torch.tensor([vectors[t] for t in texts])  # noqa: E731
    picked = best_distinct(entries, top=3, minimum={"p": 0.5}, embed=embed)
    assert [e.text for e in picked] == ["d?", "e?"]  # d beats a and c (same meaning); b fails p >= 0.5
    assert [e.text for e in best_distinct(entries, top=1, embed=embed)] == ["d?"]
    assert [e.text for e in best_distinct(entries, top=9, minimum={"reward": -2.5})] == ["d?", "a?", "b?"]
    assert best_distinct(entries, top=2, minimum={"p": 0.99}) == []
    with pytest.raises(KeyError, match="no such numeric component.*they have reward and p"):
        passes(entries[0], {"q": 0.0})
    with pytest.raises(ValueError, match="top must be >= 1"):
        best_distinct(entries, top=0)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_buffer_entries_lists_a_prompts_entries_best_first_under_its_signature(kind, redis_server):
    buffer = InMemoryReplayBuffer(buffer_size=3) if kind == "memory" else \
        RedisReplayBuffer(url=redis_server.url, namespace=f"test:smooth-{uuid.uuid4().hex}", buffer_size=3)
    signed = lambda q, r, s: BufferEntry(text=q, token_ids=[1, 2], log_r=[None, r], reward=r, signature=s)  # noqa: E731
    buffer.add("p", [signed("x?", -3.0, "A"), signed("y?", -1.0, "A"), signed("z?", -2.0, "A"), signed("w?", -9.0, "A")], "A")
    buffer.add("p", [signed("v?", 0.0, "B")], "B")
    assert [e.text for e in buffer.entries("p", "A")] == ["y?", "z?", "x?"]  # capacity 3 dropped w
    assert [e.text for e in buffer.entries("p", "B")] == ["v?"]
    assert buffer.entries("other", "A") == []


def test_smoothing_moves_the_sampler_onto_the_chosen_sequences(compose_cfg):
    """The known-target toy enumerates all 84 sequences: maximum likelihood on three of them takes
    their total probability from under 0.1 to over 0.95, and the held-out NLL (a fourth, not trained
    on) does not fall the same way."""
    from gflownet.runner import build_module

    module = build_module(compose_cfg(["task=toy", "logger=csv", "callbacks=none"]))
    problem = module.task.problem
    ids, lengths = problem.batch_of_all()
    prompts = ["<s>"] * len(ids)

    def mass(rows):
        return float(module.sequence_log_prob([prompts[0]] * len(rows), ids[rows], lengths[rows]).exp().sum())

    as_entry = lambda i: BufferEntry(text=f"seq{i}", token_ids=ids[i, : int(lengths[i]) + 1].tolist(),  # noqa: E731
                                     log_r=[None] * int(lengths[i]) + [0.0], reward=0.0)
    chosen, other = [5, 40, 70], 12
    before, before_other = mass(chosen), mass([other])
    assert before < 0.1
    history = smooth(module, [("<s>", as_entry(i)) for i in chosen], steps=100, lr=0.01, batch_size=3,
                     held_out=[("<s>", as_entry(other))], every=50)
    after = mass(chosen)
    assert after > 0.95, (before, after)
    assert mass([other]) < before_other  # the mass went to the chosen sequences, not everywhere
    held = [row["held_out_nll"] for row in history if "held_out_nll" in row]
    assert held[0] is not None and held[-1] > held[0]
    assert [row["step"] for row in history if "loss" in row] == list(range(1, 101))
    with pytest.raises(ValueError, match="no samples to smooth on"):
        smooth(module, [], steps=1)


@pytest.mark.slow
def test_smooth_script_writes_a_checkpoint_that_evaluate_reads(tmp_path):
    from tests.test_pipeline import train_tiny_run

    run = train_tiny_run(tmp_path, "trainer.max_steps=3")
    ckpt = run / "checkpoints" / "last.ckpt"
    smoothed = tmp_path / "smoothed.ckpt"
    script = [sys.executable, str(ROOT / "scripts" / "smooth.py"), "--run-dir", str(run), "--ckpt", str(ckpt)]
    proc = subprocess.run([*script, "--steps", "2", "--top", "2", "--held-out-share", "0", "--out", str(smoothed)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state, source = torch.load(smoothed, weights_only=False), torch.load(ckpt, weights_only=False)
    assert set(state["state_dict"]) == set(source["state_dict"]) and state["global_step"] == source["global_step"]
    lora = [k for k in state["state_dict"] if "lora_B" in k]
    assert lora and any(not torch.equal(state["state_dict"][k], source["state_dict"][k]) for k in lora)
    report = json.loads((tmp_path / "smoothed.json").read_text())
    assert report["settings"]["steps"] == 2 and report["questions"]
    assert all(len(qs) <= 2 for qs in report["questions"].values())
    ev = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--ckpt", str(smoothed),
                         "--k", "2", "--max-records", "1", "--variants", "trained", "--out", str(tmp_path / "eval")],
                        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    meta = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["meta"]
    assert meta["smoothing"]["source"] == str(ckpt)
    bad = subprocess.run([*script, "--min", "no_such_component=0", "--out", str(tmp_path / "x.ckpt")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert bad.returncode != 0 and "no such numeric component" in bad.stderr
    same = subprocess.run([*script, "--out", str(ckpt)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert same.returncode != 0 and "is the source checkpoint" in same.stderr
    again = subprocess.run([*script[:-1], str(smoothed), "--out", str(tmp_path / "y.ckpt")], capture_output=True,
                           text=True, cwd=tmp_path, timeout=600)
    assert again.returncode != 0 and "already a smoothed checkpoint" in again.stderr



def test_searched_questions_become_entries_of_the_training_prompts_where_each_field_holds(tmp_path):
    """``smooth.py --samples``: a search's rows (leak_report.jsonl) kept where every ``--where`` field is
    true, on training prompts only (a held-out record's questions never reach the smoothed sampler); a
    row without a needed field is refused naming its line."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from smooth import searched_entries

    rows = [{"prompt": "A", "question": "Where is X?", "token_ids": [5, 6, 9], "verified_leak": True},
            {"prompt": "A", "question": "Who is X?", "token_ids": [7, 9], "verified_leak": False},
            {"prompt": "B", "question": "What is Y?", "token_ids": [8, 9], "verified_leak": True},
            {"prompt": "held out", "question": "Z?", "token_ids": [4, 9], "verified_leak": True}]
    path = tmp_path / "leak_report.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = searched_entries([path], ["verified_leak"], {"A", "B", "C"})
    assert {p: [(e.text, e.token_ids, e.log_r) for e in es] for p, es in found.items()} == {
        "A": [("Where is X?", [5, 6, 9], [None, None, 0.0])], "B": [("What is Y?", [8, 9], [None, 0.0])]}
    assert sum(len(es) for es in searched_entries([path], [], {"A", "B", "C"}).values()) == 3
    second = tmp_path / "second.jsonl"  # a second search (another seed) pools with the first
    second.write_text(json.dumps({"prompt": "C", "question": "When X?", "token_ids": [3, 9], "verified_leak": True}) + "\n")
    pooled = searched_entries([path, second], ["verified_leak"], {"A", "B", "C"})
    assert {p: [e.text for e in es] for p, es in pooled.items()} == {"A": ["Where is X?"], "B": ["What is Y?"],
                                                                    "C": ["When X?"]}
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "A", "question": "Q?"}) + "\n")
    with pytest.raises(ValueError, match=r"leak_report.jsonl:2: the row has no token_ids, verified_leak"):
        searched_entries([second, path], ["verified_leak"], {"A"})


@pytest.mark.slow
def test_search_then_amortise_smooths_on_the_leaks_an_untrained_search_found(tmp_path):
    """``leak_report.py --untrained --split train`` (no --answerer: the run's own) writes each question
    with its sampler prompt and tokens; ``smooth.py --samples --where verified_leak`` trains on exactly
    the rows marked, at most --top per prompt."""
    from tests.test_pipeline import train_tiny_run

    import os

    run = train_tiny_run(tmp_path, "trainer.max_steps=1")
    report = tmp_path / "search"
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}  # a user's shell has none (the test session sets it)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "leak_report.py"), "--run-dir", str(run), "--untrained",
                           "--split", "train", "--k", "3", "--max-records", "2", "--out", str(report)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Sampler: the run's model with its LoRA off (untrained)" in (report / "leak_report.md").read_text()
    rows = [json.loads(line) for line in (report / "leak_report.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["prompt"] for r in rows}) == 2
    from transformers import AutoTokenizer

    from gflownet.core.modeling import resolve
    from tests.conftest import MODELS_DIR

    tok = AutoTokenizer.from_pretrained(resolve("packaged:tiny-gpt2", MODELS_DIR)[1])
    for r in rows:  # the tokens are the question's as sampled, the termination last
        assert tok.decode(r["token_ids"][:-1]).strip() == r["question"].removesuffix("?").strip() or \
            tok.decode(r["token_ids"]).strip() == r["question"].strip()
    for i, r in enumerate(rows):  # mark the first question of each prompt as "found"
        r["verified_leak"] = i % 3 == 0
    (report / "marked.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    glitch = dict(rows[1], question="@#%@#% what?", verified_leak=True)  # a second search's glitchy find
    (report / "glitch.jsonl").write_text(json.dumps(glitch) + "\n")
    smoothed = tmp_path / "smoothed.ckpt"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "smooth.py"), "--run-dir", str(run), "--ckpt",
                           str(run / "checkpoints" / "last.ckpt"), "--samples", str(report / "marked.jsonl"),
                           "--samples", str(report / "glitch.jsonl"), "--drop-glitchy", "--where",
                           "verified_leak", "--steps", "2", "--held-out-share", "0", "--out", str(smoothed)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--samples: 3 rows kept on 2 training prompts" in proc.stdout
    assert "--drop-glitchy: 1 glitchy questions left out" in proc.stdout
    trained_on = json.loads((tmp_path / "smoothed.json").read_text())["questions"]
    assert trained_on == {r["prompt"]: [r["question"]] for r in rows if r["verified_leak"]}
