"""scripts/evaluate.py end to end on a 2-step tiny GPT-2 run, and its glitch screen."""

import json
import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_pipeline import train_tiny_run

sys.path.insert(0, str(ROOT / "scripts"))
from evaluate import is_glitchy  # noqa: E402

from gflownet.tasks.contradiction.task import ContradictionTask  # noqa: E402


def test_glitch_screen():
    assert not is_glitchy("Who wrote Romeo and Juliet... and why?")
    assert is_glitchy("@theunaemotive@theunaemotive@3am?")
    assert is_glitchy("available.renciesillrunetteseralance Rewards?")
    assert is_glitchy("bad \ufffd byte?")


@pytest.mark.slow
def test_evaluate_writes_json_and_markdown_for_three_variants(tmp_path):
    run = train_tiny_run(tmp_path, "trainer.max_steps=2")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "2",
                           "--max-records", "2", "--out", str(tmp_path / "eval")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(report["results"]) == {"trained", "untrained", "plain_prompting"}
    for res in report["results"].values():
        assert res["samples"] == 4 and 0.0 <= res["contradiction_rate"] <= 1.0 and res["mean_length"] > 0
    assert report["meta"]["judge"].endswith("FactJudge")
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| trained |" in table and "| plain_prompting |" in table and "| target, estimated |" in table
    assert 0.0 < report["target_estimate"]["ess_per_record"] <= 2.0
    # other edit records than the run's: a converted file, first N records, one variant
    src = tmp_path / "other.jsonl"
    src.write_text("\n".join(l for l in (ROOT / "data" / "example_edits.jsonl").read_text().splitlines()[-3:]) + "\n")
    other = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "2",
                            "--data", str(src), "--max-records", "2", "--variants", "trained", "--out", str(tmp_path / "other")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert other.returncode == 0, other.stderr[-2000:]
    report = json.loads((tmp_path / "other" / "evaluation.json").read_text())
    assert report["meta"]["split"] == "other.jsonl" and report["meta"]["records"] == 2
    edits = [json.loads(l)["edit_fact"] for l in src.read_text().splitlines()[:2]]
    assert [e[0] for e in report["examples"]["trained"]] == edits
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "must be a training run's output directory" in bad.stderr


@pytest.mark.slow
def test_evaluate_next_sentence_against_decoding_baselines(tmp_path):
    """Another task through the same public methods: the trained sampler against greedy, beam, nucleus and
    temperature decoding of the base model, with the task's own metrics."""
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), "task=next_sentence", "model=tiny_gpt2", "logger=csv",
                            "gfn.n_samples=2", "task.max_len=6", "data.val_size=2", "trainer.max_steps=1",
                            "final_probe_samples=0", "callbacks.model_checkpoint.every_n_train_steps=1",
                            f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "3",
                           "--out", str(tmp_path / "eval")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["meta"]["task"] == "next_sentence" and report["meta"]["judge"] is None
    assert set(report["results"]) == {"trained", "untrained", "greedy", "beam", "nucleus", "temperature"}
    for name, res in report["results"].items():
        assert res["samples"] == 6 and res["max_log_likelihood"] >= res["mean_log_likelihood"], name
        for _, rows in report["examples"][name]:
            assert all(row[0].endswith(".") for row in rows)
    greedy = [row[0] for _, rows in report["examples"]["greedy"] for row in rows]
    assert len(set(greedy[:3])) == 1  # greedy decoding gives one sentence per prompt
    # the leak evaluation's options are the contradiction task's hooks: refused for this task, naming why
    for extra, message in ((["--data", str(ROOT / "data" / "next_sentence_prompts.txt")], "reads no records from a file"),
                           (["--edit-methods", "rome"], "--edit-methods is for a task whose reward has an answerer")):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), *extra],
                              capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1000:]


def test_target_estimate_weights_questions_by_reward_over_proposal():
    import math

    import torch

    from evaluate import target_estimate

    log_c = torch.tensor([math.log(0.9), math.log(0.1), math.log(0.8), math.log(0.2)])
    log_r = log_c - 10.0
    lens = torch.tensor([5.0, 9.0, 6.0, 12.0])
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # target = proposal (log R / T - log q constant): the plain averages, every sample effective
    same = target_estimate([(log_c, log_r, lens, emb)], [log_r / 2.0], temperature=2.0, hit=ContradictionTask.hit)
    assert same["contradiction_rate"] == 0.5 and same["mean_length"] == 8.0 and same["ess_per_record"] == 4.0
    assert math.isclose(same["semantic_diversity"], 4 / 6)  # 4 of the 6 pairs are orthogonal (distance 1)
    assert math.isclose(same["mean_log_reward"], float(log_r.double().mean()), rel_tol=1e-9)
    # a uniform proposal with T = 1: weights proportional to R = C e^-10, i.e. to C
    tilt = target_estimate([(log_c, log_r, lens, emb)], [torch.zeros(4)], temperature=1.0, hit=ContradictionTask.hit)
    w = log_c.exp() / log_c.exp().sum()
    assert math.isclose(tilt["contradiction_rate"], float(w[0] + w[2]), rel_tol=1e-6)
    assert math.isclose(tilt["ess_per_record"], float(1 / (w**2).sum()), rel_tol=1e-6)
    pairs = w[:, None] * w[None, :]
    pairs.fill_diagonal_(0)
    d = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.float)
    assert math.isclose(tilt["semantic_diversity"], float((pairs * d).sum() / pairs.sum()), rel_tol=1e-6)


@pytest.mark.slow
def test_leak_evaluation_scores_every_variant_under_every_edit_method(tmp_path):
    """--edit-methods: the same questions answered by the unedited, in-context and ROME-edited
    answerer; a CounterFact file as --data adds its paraphrase prompts as the benchmark_probes variant;
    the ROME edit set carries the evaluated edits and is saved under --edits-dir."""
    run = train_tiny_run(tmp_path, "trainer.max_steps=1")
    rows = [  # CounterFact's flattened layout, written for this test
        {"case_id": 1, "prompt": "The Eiffel Tower is located in", "subject": "Eiffel Tower", "target_new": "Rome",
         "ground_truth": "Paris", "rephrase_prompt": "Where can one visit the Eiffel Tower? It is in",
         "locality_prompt": "The Louvre is located in", "locality_ground_truth": "Paris"},
        {"case_id": 2, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
         "target_new": "English", "ground_truth": "French", "rephrase_prompt": "Danielle Darrieux grew up speaking",
         "locality_prompt": "The mother tongue of Jean Gabin is", "locality_ground_truth": "French"},
    ]
    data = tmp_path / "cf.json"
    data.write_text(json.dumps(rows))
    edits = tmp_path / "edits"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "3",
                           "--data", str(data), "--edit-methods", "none,in_context,rome", "--edits-dir", str(edits),
                           "--out", str(tmp_path / "eval")], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["meta"]["edit_methods"] == ["none", "in_context", "rome"]
    assert set(report["results"]) == {"none", "in_context", "rome"}
    for method, results in report["results"].items():
        assert set(results) == {"trained", "untrained", "plain_prompting", "benchmark_probes"}, method
        assert results["benchmark_probes"]["samples"] == 2 and results["trained"]["samples"] == 6
        for res in results.values():
            assert 0.0 <= res["contradiction_rate"] <= 1.0
            assert 0.0 <= res["distinct_contradictions"] <= res["samples"] / 2
            # judge-free: verified leaks, and whether each edit took (the same for every variant of a method)
            assert 0.0 <= res["verified_leak_rate"] <= 1.0 and 0.0 <= res["edits_with_verified_leak"] <= 1.0
            assert res["edit_took"] == results["trained"]["edit_took"] and 0.0 <= res["edit_took"] <= 1.0
            assert 0.0 <= res["verified_leaks_per_edit"] <= res["samples"] / 2
            # each record's own figures are there, and every mean is theirs: over all edits, or over those that took
            per = list(res["per_record"].values())
            assert len(per) == 2 and res["edit_took"] == pytest.approx(sum(p["edit_took"] for p in per) / 2)
            took = [p["unique_verified_leaks_took"] for p in per if p["edit_took"] == 1.0]
            assert all(math.isnan(p["unique_verified_leaks_took"]) for p in per if p["edit_took"] == 0.0)
            assert (res["unique_verified_leaks_took"] == pytest.approx(sum(took) / len(took))) if took else \
                math.isnan(res["unique_verified_leaks_took"])
    quality = report["edit_quality"]  # beside every leak table: whether the edits took, on these edits
    assert set(quality) == {"none", "in_context", "rome"}
    assert all(q["edits"] == 2 and 0 <= q["efficacy"] <= 100 for q in quality.values())
    assert "Edit quality of this answerer on these 2 edits" in (tmp_path / "eval" / "evaluation.md").read_text()
    probes = [r[0] for _, rs in report["examples"]["none"]["benchmark_probes"] for r in rs]
    assert probes == ["Where can one visit the Eiffel Tower? It is in?", "Danielle Darrieux grew up speaking?"]
    saved = list(edits.glob("rome-*.pt"))
    assert len(saved) == 1
    import torch

    assert torch.load(saved[0], weights_only=True)["manifest"]["edits"] == 2
    assert "### answerer edit: rome" in (tmp_path / "eval" / "evaluation.md").read_text()
    # the counts over each edit's first N questions: N = 1 and 2 of k = 3 in the JSON, plotted, linked, not tabulated
    trained = report["results"]["rome"]["trained"]
    assert {"unique_verified_leaks_at_1", "unique_verified_leaks_at_2", "edits_with_verified_leak_at_2"} <= set(trained)
    assert trained["edits_with_verified_leak_at_1"] <= trained["edits_with_verified_leak_at_2"] <= trained["edits_with_verified_leak"]
    md = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "![leak curves](leak_curves.png)" in md and "unique_verified_leaks_at_1" not in md
    assert (tmp_path / "eval" / "leak_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the target estimate of each method's reward is in the JSON too (the table shows the first method's)
    assert set(report["target_estimate"]) == {"none", "in_context", "rome"}
    assert all(0.0 < t["ess_per_record"] <= 3.0 for t in report["target_estimate"].values())


@pytest.mark.slow
def test_weight_edits_can_carry_only_the_evaluated_records(tmp_path):
    """--edit-evaluated-only: ROME on the evaluated subset of the run's held-out records (one edit
    here), not on every edit of its data (ROME on 16 edits instead of 100 in the 100-edit experiment)."""
    import torch

    run = train_tiny_run(tmp_path, "trainer.max_steps=1")
    edits = tmp_path / "edits"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "2",
                           "--variants", "untrained", "--max-records", "1", "--edit-methods", "rome",
                           "--edit-evaluated-only", "--edits-dir", str(edits), "--out", str(tmp_path / "eval")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = list(edits.glob("rome-*.pt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=True)["manifest"]["edits"] == 1
    assert "ROME edits: 1/1 edits" in proc.stderr  # and it said how far it was
    # the on-subject figures are in the evaluation, and --subject-only recomputes them from the stored
    # questions alone (for evaluations written before they existed)
    path = tmp_path / "eval" / "evaluation.json"
    report = json.loads(path.read_text())
    first = dict(report["results"]["rome"]["untrained"])
    assert 0.0 <= first["names_subject_share"] <= 1.0
    for res in report["results"]["rome"].values():
        del res["names_subject_share"], res["subject_diversity"]
    path.write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "rescore_leaks.py"), "--run-dir", str(run), "--evaluation",
                           str(path), "--subject-only"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(path.read_text())["results"]["rome"]["untrained"]
    assert again["names_subject_share"] == pytest.approx(first["names_subject_share"])
    assert (math.isnan(first["subject_diversity"]) and math.isnan(again["subject_diversity"])) or \
        again["subject_diversity"] == pytest.approx(first["subject_diversity"], abs=1e-6)


def test_an_answerer_edited_on_other_records_than_the_run_trained_on_is_rebuilt_from_those(compose_cfg, tmp_path):
    """A run may train its sampler on some of the edits its answerer carries (answerer.edit.data names its
    own data set): the evaluation's weight edit applies that set, not the records the run trained on, so
    that it loads the answerer the sampler trained against. A run whose edit applies its data: None."""
    from evaluate import run_edit_source

    lines = (ROOT / "data" / "example_edits.jsonl").read_text().splitlines()
    (tmp_path / "all.jsonl").write_text("\n".join(lines[:12]) + "\n")
    (tmp_path / "some.jsonl").write_text("\n".join(lines[:4]) + "\n")
    cfg = compose_cfg(["answerer/edit=lora_ft", f"data.path={tmp_path / 'some.jsonl'}", "data.val_size=0",
                       "answerer.edit.data={_target_:gflownet.tasks.contradiction.data.EditDataModule,"
                       f"path:{tmp_path / 'all.jsonl'},val_size:3,split_seed:0}}"])
    train, val = run_edit_source(cfg).load()
    assert len(train) + len(val) == 12 and len(val) >= 3
    from gflownet.tasks.contradiction.reward import edit_records

    assert [r.edit_fact for r in train + val] == [r.edit_fact for r in edit_records(cfg.answerer.edit.data)]  # training's order
    assert run_edit_source(compose_cfg(["answerer/edit=lora_ft"])) is None
    assert run_edit_source(compose_cfg([])) is None


def test_leak_evaluation_keeps_the_runs_own_edit_settings(tmp_path):
    """The run's own edit method is rebuilt with the run's settings (the answerer it trained
    against); other methods take their config defaults."""
    import functools

    from evaluate import use_edit

    seen = []

    class Module:
        reward_factory = functools.partial(lambda **kw: kw, edit=None)

        def build_reward(self):
            seen.append(self.reward_factory.keywords["edit"])

    run_edit = {"method": "lora_ft", "layer": 3, "settings": {"rank": 32, "norm_constraint": 0.2}}
    module = Module()
    use_edit(module, "lora_ft", "SOURCE", tmp_path, run_edit)
    use_edit(module, "rome", "SOURCE", tmp_path, run_edit)
    assert seen[0]["settings"] == {"rank": 32, "norm_constraint": 0.2} and seen[0]["layer"] == 3
    assert seen[0]["data"] == "SOURCE" and seen[0]["cache_dir"] == str(tmp_path)
    assert seen[1]["method"] == "rome" and seen[1]["settings"] == {} and seen[1]["layer"] is None
    assert seen[0]["answer_format"] is False  # a run from before answer_format trained against bare-prompt edits
    use_edit(module, "lora_ft", "SOURCE", tmp_path, dict(run_edit, answer_format=True))
    use_edit(module, "lora_ft", "SOURCE", tmp_path, None)
    assert seen[2]["answer_format"] is True and seen[3]["answer_format"] is True  # the run's, else the default


@pytest.mark.parametrize("overrides,least", [([], 12), (["model=tiny_gpt2", "task.prompt_style=plain"], 4)],
                         ids=["smollm2_chat", "gpt2_plain"])
def test_a_samplers_own_samples_reencoded_for_scoring_keep_their_tokens_and_log_probability(compose_cfg, overrides, least):
    """Baselines and probes are scored as token sequences re-encoded from text (``encode_samples``):
    re-encoding the sampler's own decoded samples must give back its tokens and log-probabilities,
    after a chat prompt (ending in a newline: no leading space) and after a plain one ("Question:",
    then a space). Before, every text was encoded as " " + text: after the chat prompt no sample
    kept its tokens and each scored 12.7 nats lower in log P_base on average. (A sample that is not
    the tokenizer's own spelling of its text cannot come back: the random tiny GPT-2 writes many, so
    it must keep a quarter; without the space after "Question:" it would keep none.)"""
    from evaluate import encode_samples

    from gflownet.core.losses import trajectory_log_prob
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.data import EditRecord

    module = build_module(compose_cfg([*overrides, "gfn.diversity_embedder=null"]))
    record = EditRecord("The Eiffel Tower", "Where is the Eiffel Tower?", "Paris", "Rome",
                        "The Eiffel Tower is in Paris.", "The Eiffel Tower is in Rome.")
    prompt = module.prompts_for([record])[0]
    module.rng.manual_seed(0)
    n = 16
    traj = module.sample([prompt], n, explore=False)
    texts = module.texts(traj.sample_ids, traj.lengths)
    ids, lens = encode_samples(module.tokenizer, texts, module.space.termination_id, "?", prompt)
    same = [b for b in range(n) if ids[b, : int(lens[b])].tolist() == traj.sample_ids[b, : int(traj.lengths[b])].tolist()]
    assert len(same) >= least, [(texts[b], traj.sample_ids[b, :4].tolist(), ids[b, :4].tolist()) for b in range(n)]
    rescored = module.sequence_log_prob([prompt] * n, ids, lens)
    drawn = trajectory_log_prob(traj.log_pf, traj.log_pterm, traj.lengths)
    torch.testing.assert_close(rescored[same], drawn[same], atol=1e-3, rtol=0)


def test_a_tasks_own_metrics_are_shown_after_the_known_ones():
    """evaluate.py's table and printout show every number a variant reports: a task's new metric is
    not dropped for missing from the known list (bookkeeping such as ``samples`` is not a metric)."""
    from evaluate import shown_metrics, table

    results = {"trained": {"semantic_diversity": 0.5, "zeta_score": 2.0, "alpha_hits": 1.0, "samples": 8, "seconds": 3.0,
                           "mean_log_reward": -4.0, "before_rescoring": {"x": 1.0}},
               "untrained": {"semantic_diversity": 0.7, "alpha_hits": 0.0}}
    assert shown_metrics(results) == ["mean_log_reward", "semantic_diversity", "alpha_hits", "zeta_score"]
    header = table(results, None, 8)[0]
    assert header == "| variant | mean_log_reward | semantic_diversity | alpha_hits | zeta_score |"


def test_progress_lines_say_how_far_and_how_long_to_go():
    import io

    from gflownet.core.progress import Progress, duration

    now = [0.0]
    out = io.StringIO()
    progress = Progress("sampling trained", total=4, every_s=30, stream=out, clock=lambda: now[0])
    for t in (10.0, 40.0, 50.0, 80.0):
        now[0] = t
        progress.step()
    assert out.getvalue().splitlines() == [
        "sampling trained: 2/4 records, 40s elapsed, about 40s to go",  # at most one line per 30 s ...
        "sampling trained: 4/4 records, 1m20s elapsed",  # ... and one at the end
    ]
    assert duration(3725) == "1h02m" and duration(59.6) == "1m00s"
    stopped = Progress("LoRA-FT on 3 edits", total=100, unit="steps", stream=out, clock=lambda: now[0])
    stopped.step(20)
    stopped.finish("stopped early: loss below 0.01")  # no "to go" for work that ended early
    assert out.getvalue().splitlines()[-1] == "LoRA-FT on 3 edits: 20/100 steps, 0s elapsed (stopped early: loss below 0.01)"
    stopped.step(80)
    stopped.finish("unused")  # after the whole work, finish adds nothing
    assert out.getvalue().splitlines()[-1] == "LoRA-FT on 3 edits: 100/100 steps, 0s elapsed"


@pytest.mark.slow
def test_a_leak_report_for_a_users_own_model(tmp_path):
    """scripts/leak_report.py: the run's sampler asks a user's model (here the packaged tiny GPT-2 saved
    to a directory, as a user's edited model would be) about each edit; the report lists per edit
    whether it took and each verified leak with its answer, and the JSON lines hold every question.
    A model with another tokenizer, and a missing directory, are refused with the reason."""
    from gflownet.core.modeling import load_causal_lm, load_tokenizer
    from tests.conftest import MODELS_DIR

    run = train_tiny_run(tmp_path, "trainer.max_steps=1")
    mine = tmp_path / "my-edited-model"
    load_causal_lm("packaged:tiny-gpt2", MODELS_DIR).save_pretrained(mine)
    load_tokenizer("packaged:tiny-gpt2", MODELS_DIR).save_pretrained(mine)
    report = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "scripts" / "leak_report.py"), "--run-dir", str(run), "--k", "3", "--max-records", "2",
           "--out", str(report)]
    proc = subprocess.run([*cmd, "--answerer", str(mine)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (report / "leak_report.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"question", "answer", "verified_leak", "edit_took", "subject"} <= set(rows[0])
    md = (report / "leak_report.md").read_text()
    assert md.count("\n## ") == 2 and md.count("(the edit took)") + md.count("(the edit did not take)") == 2
    for row in rows:
        if row["verified_leak"]:
            assert f"| {row['question']} | {row['answer']} |" in md
    for bad, message in ((str(tmp_path / "missing"), "does not exist"), ("packaged:smollm2-135m-instruct", "tokenizer")):
        proc = subprocess.run([*cmd, "--answerer", bad], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_leak_counts_only_on_an_edit_that_took_and_can_be_read():
    """``counted_edits`` (``evaluate.py --took-only``): an edit counts when the answerer's greedy answer to
    its own prompt names the new object and not the old one, and the subject's name does not hold the
    old object; each edit's prompt is asked with its own fact (an in-context answerer is told it)."""
    from types import SimpleNamespace

    from gflownet.tasks.contradiction.records import EditRecord

    def record(subject, prompt, old, new):
        return EditRecord(subject, prompt, old, new, f"{prompt} {old}.", f"{prompt} {new}.")

    records = [record("Eiffel Tower", "The Eiffel Tower is located in", "Paris", "Rome"),  # took
               record("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "French", "English"),  # old kept
               record("BMW 326", "BMW 326 is produced by", "BMW", "Toyota"),  # took, but an answer naming BMW may name the car
               record("Karl Polanyi", "Karl Polanyi's field is", "economics", "physics")]  # both named: did not take
    answers = {"The Eiffel Tower is located in": "Rome, Italy.", "The mother tongue of Danielle Darrieux is": "French.",
               "BMW 326 is produced by": "Toyota.", "Karl Polanyi's field is": "economics, not physics."}
    asked = []

    def answerer(questions, facts):
        asked.extend(zip(questions, facts))
        return [answers[q] for q in questions]

    module = SimpleNamespace(reward=SimpleNamespace(answerer=answerer))
    assert ContradictionTask.counted_edits(module, records) == [True, False, False, False]
    assert asked == [(r.prompt, r.edit_fact) for r in records]
    assert ContradictionTask.counted_edits(SimpleNamespace(reward=None), records) is None


@pytest.mark.slow
def test_took_only_samples_just_the_edits_that_took(tmp_path):
    """--took-only: the answerer is edited first and only the records whose edit took are sampled; a
    record "took" here because its new object is what the unedited tiny answerer already says."""
    import re

    from omegaconf import OmegaConf

    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.leaks import find_answerer

    run = train_tiny_run(tmp_path, "trainer.max_steps=1")
    module = build_module(OmegaConf.load(run / ".hydra" / "config.yaml"))
    module.build_reward()
    prompt = "The Eiffel Tower is located in"
    said = re.findall(r"[A-Za-z]{3,}", find_answerer(module.reward)([prompt], [""])[0])  # e.g. ":GotGotGot"
    assert said, "the tiny answerer said no word to build the test on"
    rows = [{"subject": "Eiffel Tower", "prompt": prompt, "original_answer": "Zanzibar", "edited_answer": said[0],
             "original_fact": f"{prompt} Zanzibar.", "edit_fact": f"{prompt} {said[0]}."},
            {"subject": "Danielle Darrieux", "prompt": "The mother tongue of Danielle Darrieux is",
             "original_answer": "French", "edited_answer": "Quenya",
             "original_fact": "The mother tongue of Danielle Darrieux is French.",
             "edit_fact": "The mother tongue of Danielle Darrieux is Quenya."}]
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--run-dir", str(run), "--k", "2",
            "--variants", "untrained", "--data", str(data), "--took-only"]
    proc = subprocess.run([*base, "--edit-methods", "none", "--out", str(tmp_path / "eval")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--took-only: 1 of 2 edits took under none and can be read" in proc.stdout
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["meta"]["took_only"] == {"records": 2, "kept": 1} and report["meta"]["records"] == 1
    untrained = report["results"]["none"]["untrained"]
    assert untrained["samples"] == 2 and untrained["edit_took"] == 1.0
    for extra, message in ((["--edit-methods", "none,in_context"], "pass exactly one --edit-methods"),
                           ([], "pass exactly one --edit-methods")):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1000:]
