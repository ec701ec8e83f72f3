"""Prompt inversion (gflownet/tasks/prompt_inversion): templates, the local and OpenAI-compatible
backends and their cache, the reward's composition, exact and importance-sampled distances to the
target, and training on the enumerable setting (experiment=inversion_toy).

The OpenAI-compatible backend is tested against real HTTP servers on loopback: an HTTP server
written here that misbehaves on purpose (rate limits, missing log-probabilities), and, where
llama-cpp-python is installed (CI installs it: scripts/setup.sh with WITH_LLAMA_SERVER=1), its
server on the packaged SmolLM2 GGUF, compared with the same model run locally.
"""

import csv
import json
import math
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from gflownet.core import exact
from gflownet.tasks.prompt_inversion.backends import (
    BackendError, CachedBackend, LocalBackend, OpenAIBackend, continuation_logprobs,
)
from gflownet.tasks.prompt_inversion.data import TargetDataModule
from gflownet.tasks.prompt_inversion.templates import Rendered, render
from tests.conftest import ROOT, _free_port

TOY = ["experiment=inversion_toy", "logger=csv", "callbacks=none", "trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------------------------------ templates
def test_templates_put_x_and_y_to_the_model_as_documented(tiny_gpt2, models_dir):
    from gflownet.core.modeling import load_tokenizer

    _, gpt2 = tiny_gpt2
    raw = render("raw", " The capital of France is ", "Paris.", gpt2)
    assert raw == Rendered("<|endoftext|>The capital of France is", " Paris.")  # BOS first, one space before y
    smol = load_tokenizer("packaged:smollm2-135m-instruct", models_dir)
    chat = render("chat", "Capital of France?", "Paris.", smol)
    assert chat.context.startswith("<|im_start|>") and chat.context.endswith("<|im_start|>assistant\n")
    assert "Capital of France?" in chat.context and chat.continuation == "Paris."
    assert "creative writing about the following: a storm" in render("creative", "a storm", "y", smol).context
    assert "code for the following task: sort a list" in render("code", "sort a list", "y", smol).context
    plain = render("chat", "Hi", "Hello.", None)  # no tokenizer: a plain dialogue, no BOS
    assert plain == Rendered("User: Hi\nAssistant:", " Hello.")
    with pytest.raises(ValueError, match="unknown prompt-inversion template 'poem'"):
        render("poem", "x", "y", None)


def test_echoed_tokens_are_matched_from_the_end():
    # llama-cpp-python: the generated token is not listed; OpenAI-style: it is, after the prompt's
    assert continuation_logprobs(["<ctx>", " Par", "is", "."], [None, -1.0, -2.0, -3.0], " Paris.") == [-1.0, -2.0, -3.0]
    assert continuation_logprobs(["a", " Paris", "!", " Next"], [None, -1.0, -2.0, -9.0], " Paris!", " Next") == [-1.0, -2.0]
    # a token that straddles the context's end belongs to the context
    assert continuation_logprobs(["ab", "cd", "ef"], [None, -1.0, -2.0], "def") == [-2.0]
    assert continuation_logprobs(["ab", "cd"], [None, -1.0], "xyz") is None  # the echo does not end with it
    # a generated character split into byte tokens that decode to nothing
    assert continuation_logprobs(["a", " month", ".", " ", "", ""], [None, -1.0, -2.0, -5.0, -6.0, -7.0], " month.", " ") == [-1.0, -2.0]
    assert continuation_logprobs(["a", " b", " It"], [None, -1.0, -9.0], " b", None) == [-1.0]  # generated text unknown
    # the generated text repeats the continuation: a listed generated token is preferred to an unlisted one
    assert continuation_logprobs(["x", " b", " b"], [None, -1.0, -9.0], " b", " b") == [-1.0]


# ------------------------------------------------------------------------------------------ local backend
def test_local_backend_is_the_chain_rule_of_the_model_and_batching_changes_nothing(tiny_gpt2):
    model, tok = tiny_gpt2
    backend = LocalBackend(model, tok, "tiny", batch_size=2)
    pairs = [Rendered("<|endoftext|>Hello there", " world, again"), Rendered("<|endoftext|>A much longer context than the other",
                                                                             " end"), Rendered("<|endoftext|>x", " y z")]
    together = backend.log_probs(pairs)
    alone = [backend.log_probs([p])[0] for p in pairs]
    assert together == pytest.approx(alone, abs=1e-4)
    for pair, value in zip(pairs, together):  # token by token, each next-token distribution from its own forward
        ctx = tok.encode(pair.context, add_special_tokens=False)
        cont = tok.encode(pair.continuation, add_special_tokens=False)
        want = 0.0
        with torch.no_grad():
            for i, t in enumerate(cont):
                logits = model(torch.tensor([ctx + cont[:i]])).logits[0, -1].double()
                want += float(logits.log_softmax(-1)[t])
        assert value == pytest.approx(want, abs=1e-3)
    with pytest.raises(BackendError, match="no token of the continuation"):
        backend.log_probs([Rendered("abc", "")])


def test_cache_answers_repeats_without_the_model_and_survives_a_restart(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    inner = LocalBackend(model, tok, "tiny")
    cache = CachedBackend(inner, tmp_path / "c.sqlite")
    pairs = [Rendered("<|endoftext|>a b", " c"), Rendered("<|endoftext|>d e", " f"), Rendered("<|endoftext|>a b", " c")]
    first = cache.log_probs(pairs)
    m = cache.metrics()  # the repeat within the call is sent once
    assert inner.calls == 1 and m["cache_misses"] == 2 and m["cache_hits"] == 1 and first[0] == first[2]
    again = cache.log_probs(pairs[:2])
    assert again == first[:2] and inner.calls == 1 and cache.metrics()["cache_hits"] == 3
    reopened = CachedBackend(LocalBackend(model, tok, "tiny"), tmp_path / "c.sqlite")
    assert reopened.log_probs(pairs) == first and reopened.inner.calls == 0 and reopened.metrics()["cache_hit_rate"] == 1.0
    other_model = CachedBackend(LocalBackend(model, tok, "another-model"), tmp_path / "c.sqlite")
    other_model.log_probs(pairs[:1])
    assert other_model.inner.calls == 1  # the key names the model
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM logprob").fetchone()[0] == 3
    (tmp_path / "bad.sqlite").write_text("not a database" * 100)
    with pytest.raises(BackendError, match="not a usable SQLite file.*backend.cache=null"):
        CachedBackend(inner, tmp_path / "bad.sqlite")


# ------------------------------------------------------------------------------------------ the reward
def test_reward_is_prior_plus_beta_times_likelihood_at_every_scored_state(compose_cfg):
    from gflownet.core.losses import SubTB
    from gflownet.runner import build_module

    module = build_module(compose_cfg([*TOY, "reward.beta=0.5"]))
    module.build_reward()
    reward = module.reward
    ids = torch.tensor([[2, 3, 4, 6], [5, 6, 6, 6]])  # "w1 w2 w3 ?", "w4 ?"
    lengths = torch.tensor([3, 1])
    scored = SubTB(score_every=1).scored_states(lengths, 1)
    out = module.compute_rewards(["<s>"] * 2, ids, lengths, scored, {"target": ["w3 w1"] * 2})
    prior = reward.prior.prefix_log_likelihood(["<s>"] * 2, ids, lengths)
    backend = reward.backend
    for b, t in scored.nonzero().tolist():
        x = module.tokenizer.decode(ids[b, :t].tolist())
        lik = backend.log_probs([render("raw", x, "w3 w1", backend.tokenizer)])[0]
        assert float(out.log_r[b, t]) == pytest.approx(float(prior[b, t]) + 0.5 * lik, abs=1e-4)
    assert float(out.components["log_p_target"][1]) == pytest.approx(
        backend.log_probs([Rendered("<s>w4", " w3 w1")])[0], abs=1e-5)


def test_prior_and_reward_model_cannot_be_the_trained_weights(compose_cfg):
    from gflownet.runner import build_module

    module = build_module(compose_cfg([*TOY, "reward.prior.model=shared"]))
    with pytest.raises(ValueError, match="fully fine-tuned"):
        module.build_reward()


# ------------------------------------------------------------------------------------------ evaluation
def test_exact_distances_cover_the_whole_space_and_the_importance_estimate_approaches_log_z(compose_cfg):
    from gflownet.runner import build_module

    module = build_module(compose_cfg(TOY))
    module.build_reward()
    record = TargetDataModule(targets=["w3 w1"]).load()[0][0]
    found = exact.exact_metrics(module, record)
    assert found["support"] == 84 and found["sampler_mass"] == pytest.approx(1.0, abs=1e-5)
    assert found["kl_exact"] > 0.2 and 0.4 < found["l1_exact"] <= 2.0  # the prior is not yet the posterior
    torch.manual_seed(0)
    ro = module.rollout([record], 4000, collective=False)
    log_pf = module.sequence_log_prob(ro.prompts, ro.sample_ids, ro.lengths).cpu()
    est = exact.importance_metrics(log_pf, ro.terminal_log_r.cpu(), 1.0)
    assert est["log_z_estimate"] == pytest.approx(found["log_z_exact"], abs=0.05)
    assert est["kl_estimate"] == pytest.approx(found["kl_exact"], abs=0.05)
    assert exact.enumerate_samples(module.space, limit=83) is None  # too many to enumerate: no exact figures


def test_targets_come_from_a_list_or_a_file_with_clear_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"target": "One."}\n{"target": "One."}\n{"target": "Two."}\n')
    train, val = TargetDataModule(path=str(path), val_size=1).load()
    assert [r.target for r in train] == ["One.", "Two."] and len(val) == 1
    path.write_text('{"target": "One."}\n["not", "an object"]\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: each row must be an object"):
        TargetDataModule(path=str(path)).load()
    # data.targets replaces the file (the config's default path): as the README's data.targets=[...] example
    assert [r.target for r in TargetDataModule(targets=["a"], path=str(path)).load()[0]] == ["a"]
    with pytest.raises(ValueError, match=r"data.targets=\[\] holds no target"):  # was: the shipped targets, silently
        TargetDataModule(targets=[], path=str(path))
    with pytest.raises(ValueError, match="give data.targets"):
        TargetDataModule()
    with pytest.raises(FileNotFoundError, match="set data.path"):
        TargetDataModule(path=str(tmp_path / "none.txt")).load()


def test_offline_default_composes_with_tb_and_a_chat_prompt_carrying_the_target(compose_cfg):
    from gflownet.runner import build_module

    cfg = compose_cfg(["task=prompt_inversion"])
    assert cfg.loss._target_.endswith(".TB") and cfg.reward.backend.model == "shared"
    module = build_module(cfg)
    prompt = module.task.prompt(TargetDataModule(targets=["Paris."]).load()[0][0], module.tokenizer)
    assert "Paris." in prompt and prompt.startswith("<|im_start|>")
    assert module.tokenizer.decode([module.space.termination_id]) == "\n"
    assert not bool(module.space.forbidden[module.space.termination_id])
    assert int(module.space.forbidden.sum()) < module.space.vocab_size - 1000  # "\n" as termination forbids only newline tokens


# ------------------------------------------------------------------------------------------ OpenAI backend
class _Scripted(BaseHTTPRequestHandler):
    """Answers /v1/completions from a script: a list of (status, body) consumed in order."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        status, payload = type(self).script.pop(0) if type(self).script else (500, {"error": "script exhausted"})
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _completion(tokens, logprobs, text):
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"id": "c", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets, "top_logprobs": None}}],
            "usage": {"prompt_tokens": len(tokens), "completion_tokens": 1, "total_tokens": len(tokens) + 1}}


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", _free_port()), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.script, _Scripted.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_api_backend_retries_rate_limits_and_server_errors_then_scores(scripted_server):
    ok = _completion(["Hello", " wor", "ld", "!"], [None, -1.5, -0.5, -3.0], "Hello world!")
    _Scripted.script = [(200, _completion(["Hello", " world"], [None, -1.0], "Hello world.")),  # the start-up check
                        (429, {"error": {"message": "slow down"}}), (503, {"error": "busy"}), (200, ok)]
    backend = OpenAIBackend(scripted_server, "m", api_key="local", max_retries=3, concurrency=1)
    assert backend.log_probs([Rendered("Hello", " world")]) == [pytest.approx(-2.0)]
    m = backend.metrics()
    assert m["requests"] == 2 and m["http_attempts"] == 4 and m["retries"] == 2 and m["http_errors"] == 2
    sent = _Scripted.seen[-1]
    assert sent["prompt"] == "Hello world" and sent["echo"] is True and sent["logprobs"] == 1 and sent["max_tokens"] == 1


def test_api_backend_errors_name_the_problem_and_the_fix(scripted_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="no API key.*OPENAI_API_KEY.*backend.api_key=local"):
        OpenAIBackend(scripted_server, "m")
    closed = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(BackendError, match="not reachable at .*serve_llama_cpp.sh"):
        OpenAIBackend(closed, "m", api_key="k", max_retries=0, timeout=5)
    no_lp = _completion(["Hello", " world"], [None, -1.0], "Hello world")
    no_lp["choices"][0]["logprobs"] = None
    _Scripted.script = [(200, no_lp)]
    with pytest.raises(BackendError, match="returned no token log-probabilities.*backend.mode=generate"):
        OpenAIBackend(scripted_server, "m", api_key="k", max_retries=0)
    _Scripted.script = [(401, {"error": {"message": "bad key"}})]
    with pytest.raises(BackendError, match="refused the API key"):
        OpenAIBackend(scripted_server, "m", api_key="k", max_retries=0)
    _Scripted.script = [(429, {"error": "rate"})] * 2
    with pytest.raises(BackendError, match="429.*lower backend.concurrency"):
        OpenAIBackend(scripted_server, "m", api_key="k", max_retries=1)


# ------------------------------------------------------------------------------------------ training
def _val_rows(run_dir):
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    return [r for r in rows if r.get("val/kl_exact")]


@pytest.mark.parametrize("loss", [["loss=tb"], ["loss=subtb", "loss.score_every=1"]])
def test_short_toy_run_logs_exact_and_estimated_distances(loss, compose_cfg, tmp_path):
    from gflownet.runner import run_training

    run_training(compose_cfg([*TOY, *loss, "trainer.max_steps=20", "trainer.val_check_interval=10"]))
    rows = _val_rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == [9, 19]
    for r in rows:
        assert float(r["val/sampler_mass"]) == pytest.approx(1.0, abs=1e-5) and float(r["val/support"]) == 84
        assert math.isfinite(float(r["val/kl_estimate"])) and math.isfinite(float(r["val/log_z_learned"]))


def test_seed_spread_prints_each_seeds_validations_and_a_seed_repeats_itself(tmp_path, capsys):
    """scripts/seed_spread.py (the spread behind the bound below): one block per seed, the final range,
    and at a fixed thread count the same seed gives the same values (so the spread is over seeds)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import seed_spread

    short = ["experiment=inversion_toy", "trainer.max_steps=20", "trainer.val_check_interval=10"]
    threads = torch.get_num_threads()
    assert seed_spread.main(["--seeds", "3", "3", "4", "--threads", "1", "--metrics", "val/log_z_error",
                             "--out", str(tmp_path), "--", *short]) == 0
    out = capsys.readouterr().out
    blocks = [line for line in out.splitlines() if line.startswith("  val/log_z_error: 9:")]
    assert len(blocks) == 3 and blocks[0] == blocks[1] and blocks[0] != blocks[2]
    assert "final values over 3 seeds:" in out and "max |.|" in out
    assert torch.get_num_threads() == threads  # the rest of the process keeps its thread count


@pytest.mark.slow
def test_training_on_the_enumerable_setting_approaches_the_target(compose_cfg, tmp_path):
    """400 steps of TB on experiment=inversion_toy: the untrained sampler (the prior) is at KL 7.2 from
    p_prior(x) p(y|x) / Z and its log Z head 8.8 nats from the exact log Z; training must bring KL under
    0.1 and the learned log Z within 0.25 of the exact one.

    Why 0.25 and not tighter: TB's log Z settles at E_q[log R - log P_F] over the trajectories it trains
    on, which on-policy is log Z - KL(P_F || P*), below the exact value by the sampler's remaining KL
    (and the tempered, replayed trajectories move it further); the last steps' noise adds about 0.1.
    Fourteen runs (seeds 0-5 and 42, one and two threads; the thread count changes the sums' order and
    with it every sampled trajectory) ended at KL 0.017-0.058 and log Z errors -0.193 to +0.012; four
    were outside 0.1, so a 0.1 bound passed or failed by the machine's thread count (docs/results.md,
    scripts/seed_spread.py)."""
    from gflownet.runner import build_module, run_training

    cfg = compose_cfg(TOY)
    start = build_module(cfg)
    start.build_reward()
    before = exact.exact_metrics(start, TargetDataModule(targets=["w3 w1"]).load()[0][0])
    run_training(cfg)
    rows = _val_rows(tmp_path / "run")
    last = rows[-1]
    print(f"inversion_toy: KL {before['kl_exact']:.3f} -> {float(last['val/kl_exact']):.3f}, "
          f"L1 {before['l1_exact']:.3f} -> {float(last['val/l1_exact']):.3f}, log Z error {float(last['val/log_z_error']):+.3f}")
    assert before["kl_exact"] > 0.3
    assert int(last["step"]) == 399 and float(last["val/kl_exact"]) < 0.1 and float(last["val/l1_exact"]) < 0.3
    assert abs(before["log_z_error"]) > 5 and abs(float(last["val/log_z_error"])) < 0.25


# ------------------------------------------------------------------------------------------ a real server
PAIRS = [("What is the capital of France?", "The capital of France is Paris."), ("Tell me about the Moon", "The Moon orbits the Earth."),
         ("a café in Zürich", "Héllo, naïve world!")]


@pytest.fixture(scope="module")
def smollm2(models_dir):
    from gflownet.core.modeling import load_causal_lm, load_tokenizer

    return (load_causal_lm("packaged:smollm2-135m-instruct", models_dir),
            load_tokenizer("packaged:smollm2-135m-instruct", models_dir, padding_side="right"))


@pytest.mark.slow
def test_local_model_and_the_same_model_served_give_the_same_log_likelihood(llama_server, smollm2):
    """SmolLM2 run here in float32 (weights dequantised from the GGUF) against the same GGUF served by
    llama.cpp, which multiplies with 4-bit weights and 8-bit activations: every template, ASCII and
    not. Tolerance: 0.1 nats per scored token (seen: at most 0.06 per token, 0.51 on 10 tokens)."""
    model, tok = smollm2
    local = LocalBackend(model, tok, "local")
    api = OpenAIBackend(llama_server.url, "smollm2-135m-instruct", api_key="local")
    pairs = [render(t, x, y, tok) for t in ("raw", "chat", "creative", "code") for x, y in PAIRS]
    a, b = local.log_probs(pairs), api.log_probs(pairs)
    for pair, u, v in zip(pairs, a, b):
        n = len(tok.encode(pair.continuation, add_special_tokens=False))
        assert abs(u - v) <= 0.1 * n, (pair, u, v)
    # the same ordering of inputs by likelihood, which is what the sampler learns from
    order_a = sorted(range(len(a)), key=a.__getitem__)
    order_b = sorted(range(len(b)), key=b.__getitem__)
    assert sum(i == j for i, j in zip(order_a, order_b)) >= len(a) - 4
    assert api.metrics()["requests"] == len(pairs) + 1  # and the start-up check


@pytest.mark.slow
def test_cache_in_front_of_the_server_sends_each_input_once(llama_server, smollm2, tmp_path):
    _, tok = smollm2
    api = OpenAIBackend(llama_server.url, "smollm2-135m-instruct", api_key="local")
    cached = CachedBackend(api, tmp_path / "api.sqlite")
    pairs = [render("chat", x, y, tok) for x, y in PAIRS]
    first = cached.log_probs(pairs + pairs[:1])
    sent = api.metrics()["requests"]
    assert sent == 1 + 3  # the check, then each distinct input once
    assert cached.log_probs(pairs) == first[:3] and api.metrics()["requests"] == sent
    assert cached.metrics()["cache_hit_rate"] == pytest.approx(4 / 7)


@pytest.mark.slow
def test_generate_mode_scores_the_models_own_response(llama_server, smollm2):
    _, tok = smollm2
    api = OpenAIBackend(llama_server.url, "smollm2-135m-instruct", api_key="local", mode="generate", max_response_tokens=8)
    responses = []
    values = api.log_probs([render("chat", "Say hello.", "ignored", tok)] * 2, responses)
    assert len(responses) == 2 and all(r.strip() for r in responses) and all(-200 < v < 0 for v in values)


@pytest.mark.slow
def test_training_with_the_served_reward_model_and_its_cache(llama_server, compose_cfg, tmp_path):
    """Three TB steps of the offline default task with log p(y|x) from the server; replayed steps and
    repeated inputs are answered by the cache, and the counters are logged."""
    from gflownet.runner import run_training

    cfg = compose_cfg(["task=prompt_inversion", "reward/backend=openai", f"reward.backend.base_url={llama_server.url}",
                       "reward.backend.api_key=local", f"reward.backend.cache={tmp_path / 'cache.sqlite'}", "logger=csv",
                       "callbacks=none", "trainer.max_steps=3", "trainer.val_check_interval=3", "+trainer.limit_val_batches=1",
                       "gfn.n_samples=4", "task.max_len=8", "task.eval_samples=4", "task.eval_targets=1",
                       "final_probe_samples=0", "trainer.enable_progress_bar=false"])
    run_training(cfg)
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("csv/version_*/metrics.csv")))))
    requests = [float(r["reward/requests"]) for r in rows if r.get("reward/requests")]
    misses = [float(r["reward/cache_misses"]) for r in rows if r.get("reward/cache_misses")]
    assert requests and requests[-1] >= 1 and requests == sorted(requests)
    assert requests[-1] == misses[-1] + 1  # every request is a cache miss (plus the start-up check)
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:  # every answer was kept (validation's too, logged after)
        assert db.execute("SELECT COUNT(*) FROM logprob").fetchone()[0] >= misses[-1]
