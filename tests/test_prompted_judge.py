"""The prompted judge (reward/judge=prompted, prompted_served): a language model asked whether the answer
contradicts the fact, local and behind an OpenAI-compatible endpoint; its number against a direct
computation, its requests and errors against a scripted loopback server, and (slow) the packaged
SmolLM2 served by llama.cpp against the same model run locally."""

import json
import math

import pytest
import torch

from gflownet.tasks.contradiction.prompted_judge import QUESTION, PromptedJudge
from gflownet.tasks.prompt_inversion.backends import BackendError
from tests.conftest import ROOT, _free_port
from tests.test_prompt_inversion import _completion, _Scripted, scripted_server  # noqa: F401 (a fixture)

FACT, ANSWER = "The Eiffel Tower is located in Rome.", "The Eiffel Tower is in Paris."


def direct(model, tok, context: str, word: str) -> float:
    ids = tok(context + word, add_special_tokens=False)["input_ids"]
    n = len(tok(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(float(lp[j - 1, ids[j]]) for j in range(n, len(ids)))


@pytest.mark.parametrize("template", ["raw", "chat"])
def test_log_c_is_the_yes_share_of_the_model_s_two_replies(template, models_dir, tiny_gpt2):
    model, tok = tiny_gpt2
    judge = PromptedJudge(model="packaged:tiny-gpt2", models_dir=models_dir, template=template, batch_size=3)
    got = judge([FACT, FACT], [ANSWER, "It is in Rome."])
    for g, answer in zip(got.tolist(), [ANSWER, "It is in Rome."]):
        yes, no = judge.pairs(FACT, answer)
        assert yes.context == no.context and QUESTION.format(fact=FACT, answer=answer) in yes.context
        a, b = direct(model, tok, yes.context, yes.continuation), direct(model, tok, no.context, no.continuation)
        assert g == pytest.approx(a - math.log(math.exp(a) + math.exp(b)), abs=1e-4)
    assert judge([], []).numel() == 0


def test_bad_judge_settings_name_the_fix(models_dir):
    with pytest.raises(ValueError, match="either model .* or served"):
        PromptedJudge(models_dir=models_dir)
    with pytest.raises(ValueError, match="template"):
        PromptedJudge(model="packaged:tiny-gpt2", models_dir=models_dir, template="fancy")
    with pytest.raises(ValueError, match=r"\{fact\} and \{answer\}"):
        PromptedJudge(model="packaged:tiny-gpt2", models_dir=models_dir, question="Is it wrong?")
    with pytest.raises(ValueError, match="two different"):
        PromptedJudge(model="packaged:tiny-gpt2", models_dir=models_dir, yes_reply="Yes", no_reply=" Yes")
    with pytest.raises(ValueError, match="unknown reward.judge.served keys"):
        PromptedJudge(served={"base_url": "http://x/v1", "model": "m", "colour": "red"}, template="raw")
    with pytest.raises(ValueError, match="needs reward.judge.tokenizer"):
        PromptedJudge(served={"base_url": "http://x/v1", "model": "m", "api_key": "k"}, template="chat")


def test_the_configs_build_the_judge(compose_cfg):
    """reward/judge=prompted (local) and prompted_served compose to the judge's own arguments (a YAML key
    named ``no`` would be read as false: the replies are ``yes_reply`` and ``no_reply``)."""
    import hydra

    cfg = compose_cfg(["reward/judge=prompted", "reward.judge.model=packaged:tiny-gpt2"])
    judge = hydra.utils.instantiate(cfg.reward.judge, device="cpu")
    assert isinstance(judge, PromptedJudge) and (judge.yes, judge.no) == ("Yes", "No")
    assert judge([FACT], [ANSWER]).shape == (1,)
    served = compose_cfg(["reward/judge=prompted_served"]).reward.judge
    assert served.model is None and served.served.model and served.tokenizer and served.cache


def test_served_judge_sends_each_reply_echoed_and_reads_its_log_probabilities(scripted_server):  # noqa: F811
    """raw template: the context, then " Yes" / " No" echoed with log-probabilities; the start-up check
    asks one pair; log C from the two summed replies."""
    def reply(word: str, value: float):
        return 200, _completion(["ctx", f" {word}", "."], [None, value, -9.0], f"ctx {word}.")

    _Scripted.script = [reply("Yes", -1.0), reply("No", -2.0), reply("Yes", -3.0), reply("No", -0.5)]
    judge = PromptedJudge(served={"base_url": scripted_server, "model": "m", "api_key": "local", "concurrency": 1,
                                  "max_retries": 0}, template="raw")
    got = judge([FACT], [ANSWER])
    assert got.tolist() == [pytest.approx(-3.0 - math.log(math.exp(-3.0) + math.exp(-0.5)), abs=1e-6)]
    sent = _Scripted.seen[-2:]
    ask = QUESTION.format(fact=FACT, answer=ANSWER)
    assert [s["prompt"] for s in sent] == [ask + " Yes", ask + " No"] and all(s["echo"] and s["logprobs"] for s in sent)
    assert judge.metrics()["requests"] == 4


def test_a_served_judge_that_rate_limits_or_errs_mid_run_fails_the_call_with_the_fix(scripted_server):  # noqa: F811
    """After a good start-up, a server that keeps answering 429 (or 5xx) fails the judge's call with an
    error naming the fix, after the retries, instead of hanging (the reward call's error then reaches
    every rank as the served answerer's does)."""
    yes, no = _completion(["ctx", " Yes"], [None, -1.0], "ctx Yes"), _completion(["ctx", " No"], [None, -1.0], "ctx No")
    _Scripted.script = [(200, yes), (200, no), (429, {"error": "rate"}), (429, {"error": "rate"})]
    judge = PromptedJudge(served={"base_url": scripted_server, "model": "m", "api_key": "local", "concurrency": 1,
                                  "max_retries": 1}, template="raw")
    with pytest.raises(BackendError, match="429.*lower backend.concurrency"):
        judge([FACT], [ANSWER])
    _Scripted.script = [(503, {"error": "busy"})] * 4
    with pytest.raises(BackendError, match="HTTP 503"):
        judge([FACT], [ANSWER])


def test_a_served_judge_that_is_down_fails_at_start_up_with_the_fix():
    closed = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(BackendError, match="not reachable at .*serve_llama_cpp.sh"):
        PromptedJudge(served={"base_url": closed, "model": "m", "api_key": "k", "max_retries": 0, "timeout": 5}, template="raw")


@pytest.mark.slow
def test_served_judge_agrees_with_the_local_one_and_its_accuracy_is_measured(llama_server, models_dir, compose_cfg):
    """The packaged SmolLM2 asked locally (float32) and served by llama.cpp (4-bit weights), the chat
    template, on the first 60 labelled answers of tests/fixtures/judge_cases_5.jsonl (the offline judge's
    untouched set). Measured (2026-12-06): decisions the same on 60 of 60, log C within 0.5 nats on 60 of
    60; accuracy 0.733 both, which is the share of answers labelled not contradicting: the 135M model
    judges none of them contradicting. Tolerance: the decision (log C > log 0.5) the same on at least 90% of answers, log C
    within 0.5 nats on at least 90%. Accuracy is printed, not asserted: a 135M model is a weak judge.
    The served judge is also built from the config (reward/judge=prompted_served) into a reward."""
    from gflownet.runner import build_module

    cases = [json.loads(line) for line in open(ROOT / "tests/fixtures/judge_cases_5.jsonl")][:60]
    facts, answers = [c["edit_fact"] for c in cases], [c["answer"] for c in cases]
    labels = torch.tensor([bool(c["contradicts"]) for c in cases])
    local = PromptedJudge(model="packaged:smollm2-135m-instruct", models_dir=models_dir)
    served = PromptedJudge(served={"base_url": llama_server.url, "model": "smollm2-135m-instruct", "api_key": "local"},
                           tokenizer="packaged:smollm2-135m-instruct", models_dir=models_dir)
    a, b = local(facts, answers), served(facts, answers)
    threshold = math.log(0.5)
    same = float(((a > threshold) == (b > threshold)).float().mean())
    close = float(((a - b).abs() <= 0.5).float().mean())
    acc = {name: float(((v > threshold) == labels).float().mean()) for name, v in (("local", a), ("served", b))}
    print(f"prompted SmolLM2 judge on judge_cases_5: accuracy local {acc['local']:.3f}, served {acc['served']:.3f}; "
          f"decisions the same on {same:.3f}, log C within 0.5 nats on {close:.3f}; "
          f"share judged contradicting {float((a > threshold).float().mean()):.3f} (labels {float(labels.float().mean()):.3f})")
    assert same >= 0.9 and close >= 0.9
    module = build_module(compose_cfg(["reward/judge=prompted_served", f"reward.judge.served.base_url={llama_server.url}",
                                       "reward.judge.served.api_key=local", "reward.judge.cache=null",
                                       "gfn.diversity_embedder=null"]))
    module.build_reward()
    assert isinstance(module.reward.terms["contradiction"][1].judge, PromptedJudge)
