"""A task from two functions (gflownet/core/function_task.py): the adapters' contracts, and a task
written that way trained with TB to its exactly known target."""

import pytest
import torch

import gflownet.tasks.toy.task  # noqa: F401  (registers packaged:toy-llama)
from gflownet.core import exact
from gflownet.core.function_task import FunctionRecords, FunctionReward, FunctionTask, resolve_function
from gflownet.runner import build_module, run_training
from tests import function_task_example

TOY = ["task=function_task", "model=toy_llama", "task.prompt=tests.function_task_example.prompt", "task.chat=false",
       "reward=function", "reward.fn=tests.function_task_example.reward", "task.context_fields=[favourite]",
       "task.describe_field=null", "data=function", "data.records=[{favourite: w2}]", "data.steps_per_epoch=1000",
       "task.min_len=1", "task.max_len=3", "task.forbidden_tokens=[eos]",
       "gfn.n_samples=32", "gfn.pf_temp_low=1.5", "gfn.pf_temp_high=1.5", "gfn.pf_temp_prob=0.5", "gfn.use_buffer_prob=0.25",
       "gfn.diversity_embedder=null", "optimizer.lr=1e-2", "scheduler.warmup_steps=0", "scheduler.final_fraction=0.1",
       "trainer.gradient_clip_val=null", "loss.logz_lr=0.3", "final_probe_samples=0", "logger=csv",
       "trainer.enable_progress_bar=false", "trainer.val_check_interval=1000"]


class WordTokenizer:
    """Decodes ids as words (enough for FunctionReward)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def call(reward, ids, lengths, scored, **context):
    ids, lengths = torch.tensor(ids), torch.tensor(lengths)
    return reward(prompts=["p"] * len(lengths), sample_ids=ids, lengths=lengths, scored=torch.tensor(scored), **context)


def test_reward_function_gets_texts_and_fields_and_its_values_land_on_the_terminal_state(monkeypatch):
    seen = {}

    def fn(texts, topic, prompts):
        seen.update(texts=texts, topic=topic, prompts=prompts)
        return [float(len(t)) for t in texts]

    monkeypatch.setattr("gflownet.core.function_task.sample_texts",
                        lambda tok, ids, lengths, term: [tok.decode(ids[b, : int(lengths[b])].tolist()) + term
                                                         for b in range(ids.size(0))])
    reward = FunctionReward(fn, WordTokenizer(), "?")
    out = call(reward, [[1, 2, 9], [3, 9, 0]], [2, 1], [[False, False, True], [False, True, False]], topic=["a", "b"],
               unused=["x", "y"])
    assert seen == {"texts": ["w1 w2?", "w3?"], "topic": ["a", "b"], "prompts": ["p", "p"]}  # unused not passed
    assert out.log_r.tolist() == [[0.0, 0.0, 6.0], [0.0, 3.0, 0.0]] and out.components["reward_fn"].tolist() == [6.0, 3.0]
    with pytest.raises(ValueError, match="scores complete samples only.*loss=tb"):
        call(reward, [[1, 2, 9]], [2], [[False, True, True]], topic=["a"])
    prefixed = FunctionReward(lambda texts, **_: [float(len(t)) for t in texts], WordTokenizer(), "?", prefixes=True)
    assert call(prefixed, [[1, 2, 9]], [2], [[False, True, True]], topic=["a"]).log_r.tolist() == [[0.0, 2.0, 6.0]]
    for bad, msg in [(lambda texts, **_: [1.0], "returned 1 values for 2 texts"),
                     (lambda texts, **_: [float("nan"), 0.0], "non-finite log-reward"),
                     (lambda texts, **_: ["x", "y"], "one number per text")]:
        with pytest.raises(ValueError, match=msg):
            call(FunctionReward(bad, WordTokenizer(), "?"), [[1, 9], [2, 9]], [1, 1], [[False, True], [False, True]])


def test_functions_by_dotted_path_and_clear_errors(tmp_path):
    assert resolve_function("tests.function_task_example.reward", "reward.fn") is function_task_example.reward
    with pytest.raises(ValueError, match="cannot import no_such_pkg"):
        resolve_function("no_such_pkg.f", "reward.fn")
    with pytest.raises(ValueError, match="has no function 'missing'"):
        resolve_function("tests.function_task_example.missing", "reward.fn")
    task = FunctionTask("tests.function_task_example.prompt", termination_text="?", max_len=3)
    assert task.prompt({"favourite": "w1"}, None) == "<s>" and task.settings["prompt"].endswith("example.prompt")
    with pytest.raises(ValueError, match="must return a non-empty string"):
        FunctionTask(lambda r: None).prompt({}, None)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(f'{{"topic": "t{i}"}}\n' for i in range(5)))
    data = FunctionRecords(path=str(path), val_size=2)
    train, val = data.load()
    assert len(train) == 3 and len(val) == 2 and {r["topic"] for r in train + val} == {f"t{i}" for i in range(5)}
    assert len(FunctionRecords(records=[{"a": 1}], steps_per_epoch=7).load()[0]) == 7
    with pytest.raises(ValueError, match="keep at least one for training"):
        FunctionRecords(records=[{"a": 1}], val_size=1).load()
    path.write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="each line must be a JSON object"):
        FunctionRecords(path=str(path)).load()


def test_a_task_from_two_functions_trains_to_its_known_target(compose_cfg, tmp_path):
    """The example task (toy action space, reward over texts) with TB: the exact L1 distance between the
    sampler's distribution over all 84 samples and R/Z falls from above 0.9 to below 0.15 in 80 steps."""
    cfg = compose_cfg([*TOY, "trainer.max_steps=80", "scheduler.decay_steps=80"])
    record = {"favourite": "w2"}
    before = build_module(cfg)
    before.build_reward()
    start = exact.exact_metrics(before, record)
    assert start["l1_exact"] > 0.9
    summary = run_training(cfg)
    after = build_module(cfg)
    after.load_state_dict(torch.load(summary["last_checkpoint"], weights_only=False)["state_dict"], strict=False)
    after.build_reward()
    end = exact.exact_metrics(after, record)
    assert end["l1_exact"] < 0.15, (start, end)  # 0.053 at step 80
