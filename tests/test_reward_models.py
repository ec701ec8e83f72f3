"""Reward models: readouts, losses, training on a problem with a known answer, checkpoints, data errors,
the learned reward per state, and the by-state composition."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from gflownet.reward_models import data as D
from gflownet.reward_models.model import build_reward_model, load_reward_model
from gflownet.reward_models.readouts import READOUTS, build_readout, last_positions
from tests.conftest import ROOT, compose

MINILM = {"name_or_path": "packaged:all-minilm-l6-v2", "train": "frozen", "max_length": 64}
ANIMALS = ["cat", "dog", "horse", "bird", "fish", "goat", "mouse", "lion"]
COLOURS = ["red", "blue", "green", "yellow"]


def sentence(rng: random.Random) -> str:
    parts = [f"the {rng.choice(COLOURS)} {rng.choice(ANIMALS)}" for _ in range(rng.randint(2, 4))]
    return f"{parts[0]} {rng.choice(['sees', 'chases', 'likes'])} " + " and ".join(parts[1:]) + "."


def value(text: str) -> float:
    """The known answer: +1 per red animal, -0.5 per blue one."""
    return text.count("red") - 0.5 * text.count("blue")


def write_known_problem(tmp_path, n=400):
    rng = random.Random(0)
    scored, pairs, labelled = tmp_path / "scored.jsonl", tmp_path / "pairs.jsonl", tmp_path / "labelled.jsonl"
    with open(scored, "w") as s, open(labelled, "w") as lab:
        for i in range(n):
            text = sentence(rng)
            s.write(json.dumps({"text": text, "score": value(text), "group": i // 4}) + "\n")
            lab.write(json.dumps({"text": text, "label": "red" if "red" in text else "none"}) + "\n")
    chosen_rejected = []
    while len(chosen_rejected) < n * 3 // 4:
        a, b = sentence(rng), sentence(rng)
        if value(a) != value(b):
            chosen_rejected.append((a, b) if value(a) > value(b) else (b, a))
    with open(pairs, "w") as f:
        for c, r in chosen_rejected:  # HH-RLHF's layout: the whole dialogue on each side
            f.write(json.dumps({"chosen": f"\n\nHuman: describe\n\nAssistant: {c}",
                                "rejected": f"\n\nHuman: describe\n\nAssistant: {r}"}) + "\n")
    return scored, pairs, labelled


def train_rm(overrides, output_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_reward_model", ROOT / "scripts" / "train_reward_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.run(compose(["trainer.enable_progress_bar=false", "logger=none", *overrides], output_dir, "reward_model"))


# ---------------------------------------------------------------------------------------------- readouts
@pytest.mark.parametrize("kind", [k for k in READOUTS])
def test_readouts_ignore_padding_on_either_side(kind):
    torch.manual_seed(0)
    L, T, H = 3, 5, 8
    readout = build_readout(kind, H, L, causal=False)
    for p in readout.parameters():
        torch.nn.init.normal_(p)  # non-trivial queries and layer weights
    states = tuple(torch.randn(1, 3, H) for _ in range(L + 1))
    alone = readout(states, torch.ones(1, 3, dtype=torch.long))
    junk = torch.randn(1, 2, H)
    right = readout(tuple(torch.cat([s, junk], 1) for s in states), torch.tensor([[1, 1, 1, 0, 0]]))
    left = readout(tuple(torch.cat([junk, s], 1) for s in states), torch.tensor([[0, 0, 1, 1, 1]]))
    assert torch.allclose(alone, right, atol=1e-5) and torch.allclose(alone, left, atol=1e-5)
    assert T == 5 and alone.shape == (1, H)


def test_final_token_reads_the_last_real_token_and_first_token_refuses_causal_backbones():
    assert last_positions(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])).tolist() == [1, 3, 3]
    with pytest.raises(ValueError, match="causal decoder sees only itself"):
        build_readout("first_token_attention", 8, 2, causal=True)
    with pytest.raises(ValueError, match="unknown readout 'mean'"):
        build_readout("mean", 8, 2, causal=False)


def test_layer_attention_starts_as_mean_pooling_with_equal_layer_weights():
    readout = build_readout("layer_attention", 4, 2, causal=False)
    states = tuple(torch.randn(2, 3, 4) for _ in range(3))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    normed = [F.layer_norm(s, (4,)) for s in states[1:]]
    expected = torch.stack([(sum(n[b, : int(mask[b].sum())].mean(0) for n in normed)) / 2 for b in range(2)])
    assert torch.allclose(readout(states, mask), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- losses
def test_losses_match_float64_references(models_dir):
    from gflownet.reward_models.module import RewardModelModule

    texts = [("the red cat.", "the blue dog."), ("a lion.", "a goat sees a red bird.")]
    for objective, target in [("preference", torch.zeros(2)), ("regression", torch.tensor([1.5, -0.5])),
                              ("classification", torch.tensor([1.0, 0.0]))]:
        module = RewardModelModule(MINILM, readout="cross_layer_attention", objective=objective, models_dir=str(models_dir))
        torch.nn.init.normal_(module.model.head.weight)
        module.model.target_mean.fill_(0.25)
        module.model.target_std.fill_(2.0)
        loss, _, _ = module.loss_and_outputs({"texts": texts if objective == "preference" else [(t[0],) for t in texts],
                                              "target": target})
        with torch.no_grad():
            flat = [t for g in texts for t in g] if objective == "preference" else [t[0] for t in texts]
            raw = module.model(**module.model.encode(flat)).double()
        if objective == "preference":
            s = raw.view(2, 2)
            ref = torch.log1p(torch.exp(-(s[:, 0] - s[:, 1]))).mean()
        elif objective == "regression":
            ref = ((raw - (target.double() - 0.25) / 2.0) ** 2).mean()
        else:
            ref = -(raw.log_softmax(-1)[torch.arange(2), target.long()]).mean()
        assert abs(float(loss) - float(ref)) < 1e-5, objective


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.slow  # learning runs (about a minute each on a loaded 2-core machine): the slow suite
@pytest.mark.parametrize("objective,readout", [("regression", "layer_attention"), ("preference", "cross_layer_attention"),
                                               ("classification", "first_token_attention")])
def test_reward_model_learns_a_known_scoring_rule(objective, readout, tmp_path, models_dir):
    scored, pairs, labelled = write_known_problem(tmp_path)
    fmt, path = {"regression": ("scored", scored), "preference": ("hh_rlhf", pairs), "classification": ("labelled", labelled)}[objective]
    extra = ["data.group_field=group"] if objective == "regression" else []
    if objective == "classification":
        extra = ["data.classes=[none,red]"]
    summary = train_rm([f"objective={objective}", f"readout={readout}", f"data.format={fmt}", f"data.path={path}",
                        "trainer.max_steps=60", "trainer.val_check_interval=60", *extra], tmp_path / "run")
    val = summary["val"]
    if objective == "regression":  # the frozen MiniLM's states say which animals are red or blue
        assert val["pearson"] > 0.85 and val["rmse"] < 0.6 * val["rmse_constant"], val
    elif objective == "preference":
        assert val["accuracy"] > 0.85, val
    else:
        assert val["accuracy"] > val["majority_accuracy"] + 0.2, val
    # the checkpoint is a reward model that scores as the trained one did
    model = load_reward_model(summary["last_checkpoint"], models_dir)
    assert model.objective == objective and model.readout_kind == readout
    if objective == "regression":
        scores = model.score(["the red cat sees the red dog.", "the blue cat sees the blue dog."])
        assert scores[0] - scores[1] > 1.0  # true difference: 2 - (-1) = 3


def test_lora_backbone_checkpoint_round_trip_and_refusals(tmp_path, models_dir, tiny_gpt2, caplog):
    import logging

    scored, _, _ = write_known_problem(tmp_path, n=60)
    caplog.set_level(logging.INFO, logger="gflownet.progress")
    summary = train_rm(["backbone.name_or_path=packaged:tiny-gpt2", "backbone.train=lora", "readout=final_token",
                        f"data.path={scored}", "trainer.max_steps=3", "trainer.val_check_interval=3",
                        "callbacks.progress_log.every_n_steps=1"], tmp_path / "run")
    progress = [r.getMessage() for r in caplog.records if r.name == "gflownet.progress"]
    assert progress and progress[0].startswith("step 1/3 | loss ") and "to go" in progress[0]  # its log says how far
    state = torch.load(summary["last_checkpoint"], weights_only=False)
    keys = set(state["state_dict"])
    assert any("lora_" in k for k in keys) and all(not k.startswith("model.backbone.") or "lora_" in k for k in keys)
    assert state["reward_model"]["data"]["train"] + state["reward_model"]["data"]["val"] == 60
    loaded = load_reward_model(summary["last_checkpoint"], models_dir)
    trained = {k[len("model."):]: v for k, v in state["state_dict"].items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())

    state["reward_model"]["backbone_fingerprint"] = "0" * 16  # trained on another model than the reference loads now
    torch.save(state, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="fingerprint .* point backbone.name_or_path at the model it was trained on"):
        load_reward_model(tmp_path / "other.ckpt", models_dir)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="not a reward-model checkpoint"):
        load_reward_model(tmp_path / "plain.ckpt", models_dir)
    with pytest.raises(FileNotFoundError, match="train one with"):
        load_reward_model(tmp_path / "none.ckpt", models_dir)


def test_objective_and_format_must_agree(tmp_path):
    with pytest.raises(ValueError, match="set data.format=hh_rlhf"):
        train_rm(["objective=preference", "data.path=x.jsonl"], tmp_path / "run")
    with pytest.raises(ValueError, match="set objective=preference"):
        train_rm(["data.format=hh_rlhf", "data.path=x.jsonl"], tmp_path / "run")


# ---------------------------------------------------------------------------------------------- data
def test_data_errors_name_the_line_and_the_fix(tmp_path):
    def rows(name, *lines, raw=False):
        path = tmp_path / name
        path.write_text("".join((line if raw else json.dumps(line)) + "\n" for line in lines), encoding="utf-8")
        return path

    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        D.read_examples(rows("bad.jsonl", '{"text": "a", "score": 1}', "{oops", raw=True), "scored")
    with pytest.raises(ValueError, match=r"list.jsonl:1: a line must be a JSON object, got list"):
        D.read_examples(rows("list.jsonl", [1, 2]), "scored")
    with pytest.raises(ValueError, match=r"t.jsonl:1: data.template '\{fact\} \{text\}' needs field 'fact'"):
        D.read_examples(rows("t.jsonl", {"text": "a", "score": 1}), "scored", template="{fact} {text}")
    with pytest.raises(ValueError, match=r"s.jsonl:1: 'score' must be a number, got 'high'"):
        D.read_examples(rows("s.jsonl", {"text": "a", "score": "high"}), "scored")
    with pytest.raises(ValueError, match=r"h.jsonl:1: 'rejected' must be a non-empty string"):
        D.read_examples(rows("h.jsonl", {"chosen": "a"}), "hh_rlhf")
    with pytest.raises(ValueError, match=r"l.jsonl:1: 'label' is 'maybe': use an integer class or one of"):
        D.read_examples(rows("l.jsonl", {"text": "a", "label": "maybe"}), "labelled", classes=["no", "yes"])
    with pytest.raises(ValueError, match="no usable rows"):
        D.read_examples(rows("nan.jsonl", {"text": "a", "score": None}), "scored")
    # NaN targets (a sample log's unjudged questions) are skipped and counted; a UTF-8 BOM is read
    path = tmp_path / "ok.jsonl"
    path.write_bytes("\ufeff".encode() + b'{"text": "a", "score": 1}\n{"text": "b", "score": NaN}\n\n{"text": "c", "score": 2}\n')
    examples, counts = D.read_examples(path, "scored")
    assert [e.texts[0] for e in examples] == ["a", "c"] and counts == {"rows": 3, "filtered_out": 0, "skipped_nonfinite": 1}
    examples, counts = D.read_examples(path, "scored", filters={"score": 2})
    assert [e.texts[0] for e in examples] == ["c"] and counts["filtered_out"] == 2


def test_hh_rlhf_gzip_files_are_read_as_published(tmp_path):
    import gzip

    path = tmp_path / "train.jsonl.gz"  # Anthropic/hh-rlhf ships train.jsonl.gz and test.jsonl.gz per subset
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Go away."}) + "\n")
    examples, counts = D.read_examples(path, "hh_rlhf")
    assert examples[0].texts == ("\n\nHuman: hi\n\nAssistant: Hello!", "\n\nHuman: hi\n\nAssistant: Go away.")
    assert counts["rows"] == 1


def test_group_split_keeps_groups_on_one_side(tmp_path):
    examples = [D.Example((f"t{i}",), float(i), f"g{i // 5}") for i in range(200)]
    train, val = D.split_by_group(examples, 0.25, seed=3)
    assert {e.group for e in train}.isdisjoint({e.group for e in val})
    assert 0.1 < len(val) / 200 < 0.4 and len(train) + len(val) == 200
    assert D.split_by_group(examples, 0.25, seed=3) == (train, val)  # deterministic
    with pytest.raises(ValueError, match="leaves an empty split"):
        D.split_by_group(examples[:5], 0.25, seed=3)


# ---------------------------------------------------------------------------------------------- as a reward
def _regression_model(models_dir, seed=0):
    model = build_reward_model(MINILM, "layer_attention", "regression", models_dir=models_dir)
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.head.weight)
    model.target_mean.fill_(-1.0)
    model.target_std.fill_(3.0)
    return model.eval()


def test_learned_reward_scores_every_scored_state_by_its_text(models_dir, tiny_gpt2):
    from gflownet.rewards.learned import LearnedReward

    _, tokenizer = tiny_gpt2
    model = _regression_model(models_dir)
    reward = LearnedReward(model, tokenizer, "?", template="{edit_fact} | {sample}", scale=0.5)
    ids = torch.tensor([tokenizer.encode(" Who wrote the play") + [30], tokenizer.encode(" Who wrote the play") + [30]])
    ids[1, 3] = 30
    lengths = torch.tensor([4, 3])
    scored = torch.zeros(2, 5, dtype=torch.bool)
    scored[0, 2:5] = True
    scored[1, 3] = True
    facts = ["Hamlet is by Marlowe.", "Hamlet is by Marlowe."]
    out = reward(prompts=["p", "p"], sample_ids=ids, lengths=lengths, scored=scored, edit_fact=facts)
    for b, t in scored.nonzero().tolist():
        text = f"{facts[b]} | " + tokenizer.decode(ids[b, :t].tolist()).strip() + "?"
        assert abs(float(out.log_r[b, t]) - 0.5 * float(model.score([text])[0])) < 1e-5
    assert float(out.log_r[~scored].abs().sum()) == 0.0
    assert out.components["learned_score"][0] == out.log_r[0, 4] and out.components["learned_score"][1] == out.log_r[1, 3]
    assert reward.scored_texts == 3  # row 1's state 3 is row 0's state 3: one text, scored once
    with pytest.raises(ValueError, match="names 'fact', which this task does not pass"):
        LearnedReward(model, tokenizer, "?", template="{fact} {question}")(
            prompts=["p", "p"], sample_ids=ids, lengths=lengths, scored=scored, edit_fact=facts)


def test_by_state_pays_the_terminal_reward_only_for_complete_samples(models_dir, tiny_gpt2):
    from gflownet.rewards.combine import ByState
    from gflownet.rewards.learned import LearnedReward

    _, tokenizer = tiny_gpt2
    terminal = LearnedReward(_regression_model(models_dir, seed=1), tokenizer, "?", component="expensive")
    prefix = LearnedReward(_regression_model(models_dir, seed=2), tokenizer, "?", component="cheap")
    ids = torch.tensor([tokenizer.encode(" Where is the tower of") + [30]] * 3)
    lengths = torch.tensor([5, 3, 4])
    scored = torch.zeros(3, 6, dtype=torch.bool)
    for b, L in enumerate(lengths.tolist()):
        scored[b, 2:L + 1] = True
    batch = dict(prompts=["p"] * 3, sample_ids=ids, lengths=lengths, scored=scored)
    both = ByState(terminal, prefix)(**batch)
    alone_t = LearnedReward(terminal.model, tokenizer, "?")(**batch)
    alone_p = LearnedReward(prefix.model, tokenizer, "?")(**batch)
    for b, L in enumerate(lengths.tolist()):
        assert torch.allclose(both.log_r[b, L], alone_t.log_r[b, L])
        assert torch.allclose(both.log_r[b, 2:L], alone_p.log_r[b, 2:L])
    assert terminal.scored_texts == 3 and prefix.scored_texts == 3  # distinct prefixes: lengths 2, 3, 4 of one question
    assert set(both.components) == {"expensive"}
    assert math.isfinite(float(both.components["expensive"].sum()))


# ---------------------------------------------------------------------------------------------- distillation pipeline
@pytest.mark.slow
def test_sample_log_to_reward_model_to_distilled_reward(tmp_path, models_dir, compose_cfg):
    """A run logs its scored samples; a reward model trains on them; a run uses it for the prefixes."""
    import csv

    from gflownet.runner import run_training
    from tests.test_pipeline import EDIT_FAST as FAST

    cfg = compose_cfg([*FAST, "trainer.max_steps=3", "gfn.use_buffer_prob=0", "gfn.sample_log=samples.jsonl"])
    run_training(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    train_rows = [r for r in rows if r["stage"] == "train"]
    assert len(train_rows) == 3 * cfg.gfn.n_samples * cfg.data.batch_size  # every fresh sample of every step
    assert {"prompt", "sample", "edit_fact", "original_fact", "log_r", "log_contradiction", "log_likelihood", "answer",
            "step", "length"} <= set(rows[0])
    assert sorted({r["step"] for r in train_rows}) == [0, 1, 2] and all(r["sample"].endswith("?") for r in rows)
    judged = [r for r in train_rows if r["log_contradiction"] is not None]
    assert judged and all(abs(r["log_r"] - (r["log_contradiction"] + r["log_likelihood"])) < 1e-4 for r in judged)
    assert {r["stage"] for r in rows} == {"train", "val", "probe"}  # the final sample table is not training data

    # one row per scored state: every prefix SubTB scores, with its own log C
    (tmp_path / "run" / "samples.jsonl").unlink()
    run_training(compose_cfg([*FAST, "trainer.max_steps=2", "gfn.use_buffer_prob=0", "gfn.sample_log=samples.jsonl",
                              "gfn.sample_log_states=all", "ckpt_path=null"]))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl") if '"stage": "train"' in line]
    ends = [r for r in rows if r["terminal"]]
    assert len(ends) == 2 * cfg.gfn.n_samples and all("answer" in r and r["length"] == r["state"] for r in ends)
    every, low = cfg.loss.score_every, cfg.task.min_len  # SubTB scores every k-th state from min_len, and the last
    assert len(rows) == sum(len({t for t in range(low, r["length"] + 1) if (t - low) % every == 0} | {r["length"]}) for r in ends)
    prefixes = [r for r in rows if not r["terminal"]]
    assert prefixes and all("answer" not in r and r["sample"].endswith("?") for r in prefixes)
    assert all(r["log_contradiction"] is not None for r in rows)  # the judge scored every state
    # '{question}': a template written before the sample log's text was named 'sample' still reads it
    summary = train_rm([f"data.path={tmp_path / 'run' / 'samples.jsonl'}", "data.template='{edit_fact} {question}'",
                        "data.target_field=log_contradiction", "data.group_field=sample", "data.val_fraction=0.3",
                        "data.filters={stage:train}", "trainer.max_steps=2", "trainer.val_check_interval=2"], tmp_path / "rm")
    assert summary["data"]["train"] + summary["data"]["val"] == len(rows)

    fast = [o for o in FAST if not o.startswith("reward.")]
    distilled = compose_cfg([*fast, "trainer.max_steps=1", "reward=contradiction_distilled",
                             f"reward.checkpoint={summary['last_checkpoint']}", "reward.terminal.answer.max_new_tokens=4"])
    assert run_training(distilled)["global_step"] == 1
    newest = max((tmp_path / "run").glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    logged = list(csv.DictReader(open(newest)))
    assert any(r.get("reward/intermediate_learned_log_c_learned_scored_texts") for r in logged)
    assert any(r.get("train/fresh/avg_log_contradiction") for r in logged)


@pytest.mark.slow
def test_reward_model_trains_under_ddp_with_validation_over_both_ranks(tmp_path, models_dir):
    import subprocess
    import sys

    scored, _, _ = write_known_problem(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_reward_model.py"), "trainer=ddp_sim", f"data.path={scored}",
         "data.group_field=group", "trainer.max_steps=40", "trainer.val_check_interval=20", "logger=csv",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    n_val = summary["data"]["val"]
    # every validation row, gathered from both ranks (the distributed sampler pads an odd count by one)
    assert summary["val"]["n"] in (n_val, n_val + 1) and n_val > 40
    assert summary["val"]["pearson"] > 0.7, summary["val"]
    assert load_reward_model(tmp_path / "run" / "checkpoints" / "last.ckpt", models_dir).score(["the red cat."]).numel() == 1
