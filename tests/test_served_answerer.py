"""The contradiction reward's answerer behind an OpenAI-compatible endpoint (``reward=contradiction_served``):
what it sends, its cache, how it fails (down, slow, rate-limited: a clear error on every rank, never
a hang), against a loopback HTTP server; and its answers against the local answerer's, with the
packaged SmolLM2 served by llama-cpp-python (slow)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch.multiprocessing as mp

from gflownet.tasks.prompt_inversion.backends import BackendError
from tests.conftest import _free_port


class _Answers(BaseHTTPRequestHandler):
    """/v1/completions: ``mode`` ok (the answer names the prompt's last question), 429, or slow (sleeps)."""

    mode = "ok"
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({**body, "_authorization": self.headers.get("Authorization")})
        if type(self).mode == "slow":
            time.sleep(3)
        status = 429 if type(self).mode == "429" else 200
        question = body["prompt"].rsplit("Question: ", 1)[-1].split("\nAnswer:")[0]  # few-shot style (tiny GPT-2)
        payload = {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "text": f" Answer to {question}", "finish_reason": "stop", "logprobs": None}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}}
        data = json.dumps(payload if status == 200 else {"error": {"message": "rate limited"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client timed out and left
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def answer_server():
    server = ThreadingHTTPServer(("127.0.0.1", _free_port()), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Answers.mode, _Answers.seen = "ok", []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _served_cfg(compose_cfg, url, *extra):
    return compose_cfg(["model=tiny_gpt2", "reward=contradiction_served", f"reward.served.base_url={url}",
                        "reward.served.api_key=local", "reward.served.max_retries=1", "reward.served.timeout=1",
                        "reward.served.cache=null", *extra])


def test_the_served_answerer_sends_the_local_answerers_prompt_greedy_and_cut_at_a_line(answer_server, compose_cfg, tmp_path):
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.answerer import ServedAnswerer

    module = build_module(_served_cfg(compose_cfg, answer_server, "answerer/edit=in_context"))
    module.build_reward()
    answerer = module.reward.terms["contradiction"][1].answerer
    assert isinstance(answerer, ServedAnswerer)
    got = answerer(["Where is the Eiffel Tower?", "Who wrote Hamlet?", "Where is the Eiffel Tower?"],
                   ["The Eiffel Tower is in Rome."] * 3)
    assert got[0] == got[2] and got[0].startswith("Answer to New fact: The Eiffel Tower is in Rome.")
    sent = _Answers.seen[1:]  # after the start-up request
    assert len(sent) == 2  # repeated questions are asked once
    for body in sent:
        assert body["temperature"] == 0.0 and body["stop"] == ["\n"] and body["max_tokens"] == 24
    expected = answerer.prompt(answerer.turn("Who wrote Hamlet?", "The Eiffel Tower is in Rome."))
    assert expected in [b["prompt"] for b in sent]


def test_the_answer_cache_asks_each_prompt_once_across_runs(answer_server, compose_cfg, tmp_path):
    from gflownet.runner import build_module

    for run in range(2):
        module = build_module(_served_cfg(compose_cfg, answer_server, f"reward.served.cache={tmp_path}/answers.sqlite"))
        module.build_reward()
        answerer = module.reward.terms["contradiction"][1].answerer
        assert answerer(["Who wrote Hamlet?", "Where is Paris?"]) == ["Answer to Who wrote Hamlet?", "Answer to Where is Paris?"]
        assert answerer.backend.metrics()["cache_misses"] == (3 if run == 0 else 0)  # the start-up request too
    assert len(_Answers.seen) == 3


@pytest.mark.parametrize("mode,message", [("down", "not reachable"), ("slow", "timed out"), ("429", "429.*concurrency")])
def test_an_answer_server_that_is_down_slow_or_rate_limited_is_refused_at_start_up(answer_server, compose_cfg, mode, message):
    from gflownet.runner import build_module

    _Answers.mode = mode
    url = f"http://127.0.0.1:{_free_port()}/v1" if mode == "down" else answer_server
    module = build_module(_served_cfg(compose_cfg, url))
    started = time.monotonic()
    with pytest.raises(BackendError, match=message):
        module.build_reward()
    assert time.monotonic() - started < 30


def test_weight_edits_and_probability_terms_are_refused_with_a_served_answerer(answer_server, compose_cfg):
    from gflownet.runner import build_module

    module = build_module(_served_cfg(compose_cfg, answer_server, "answerer/edit=lora_ft"))
    with pytest.raises(ValueError, match="answerer/edit=lora_ft edits local weights.*answerer/edit=none or in_context"):
        module.build_reward()
    module = build_module(_served_cfg(compose_cfg, answer_server, "reward.answer_quality_weight=0.5"))
    with pytest.raises(ValueError, match="answer_quality_weight reads the answerer's probabilities"):
        module.build_reward()


def _failing_step_worker(rank: int, world: int, store: str, out: str, url: str, placement: str, models_dir: str) -> None:
    """Two ranks score a batch through the exchange while the answer server has turned to 429."""
    from datetime import timedelta

    import torch.distributed as dist

    from gflownet.core import distributed as D
    from gflownet.runner import build_module
    from gflownet.tasks.contradiction.data import EditRecord
    from tests.conftest import compose

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    module = build_module(compose(["model=tiny_gpt2", "reward=contradiction_served", f"reward.served.base_url={url}",
                                   "reward.served.api_key=local", "reward.served.max_retries=1", "reward.served.cache=null",
                                   "task.max_len=6", f"gfn.reward_placement={placement}", f"paths.models_dir={models_dir}"]))
    if module.exchange.builds_reward_on(rank):
        module.build_reward()
    dist.barrier()
    if rank == 0:
        open(f"{out}.ready", "w").close()
    while not __import__("os").path.exists(f"{out}.turned"):  # the test turns the server to 429
        time.sleep(0.1)
    record = EditRecord("Hamlet", "Who wrote Hamlet?", "William Shakespeare", "Christopher Marlowe",
                        "Hamlet was written by William Shakespeare.", "Hamlet was written by Christopher Marlowe.")
    started = time.monotonic()
    try:
        module.rollout([record], 2)
        result = "ok"
    except D.Rank0Error as err:
        result = f"error {err}"
    with open(f"{out}.{rank}", "w") as f:
        f.write(f"{result}\n{time.monotonic() - started:.1f}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["rank0", "per_rank"])
def test_a_rate_limited_answer_server_fails_the_step_on_every_rank(answer_server, tmp_path, models_dir, placement):
    out = str(tmp_path / "out")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_failing_step_worker,
                         args=(r, 2, str(tmp_path / "store"), out, answer_server, placement, str(models_dir)))
             for r in (0, 1)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "out.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    _Answers.mode = "429"
    (tmp_path / "out.turned").touch()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for r in (0, 1):
        result, seconds = open(f"{out}.{r}").read().splitlines()
        assert result.startswith("error") and "429" in result and "lower backend.concurrency" in result, result
        assert float(seconds) < 30


EDITS = [  # (question, edit fact, original fact): a counterfactual edit per question
    ("Who wrote Hamlet?", "Hamlet was written by Christopher Marlowe.", "Hamlet was written by William Shakespeare."),
    ("What is the capital of Italy?", "The capital of Italy is Milan.", "The capital of Italy is Rome."),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is in Rome.", "The Eiffel Tower is in Paris."),
    ("Which company makes the iPhone?", "The iPhone is made by Nokia.", "The iPhone is made by Apple."),
    ("What language is spoken in Brazil?", "The language of Brazil is Spanish.", "The language of Brazil is Portuguese."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Rembrandt.", "The Mona Lisa was painted by Leonardo da Vinci."),
    ("What is the largest planet in the solar system?", "The largest planet is Saturn.", "The largest planet is Jupiter."),
    ("Where was Albert Einstein born?", "Albert Einstein was born in Vienna.", "Albert Einstein was born in Ulm."),
    ("What sport does Lionel Messi play?", "Lionel Messi plays basketball.", "Lionel Messi plays football."),
    ("What is the currency of Japan?", "The currency of Japan is the dollar.", "The currency of Japan is the yen."),
    ("Who founded Microsoft?", "Microsoft was founded by Steve Jobs.", "Microsoft was founded by Bill Gates."),
    ("Which river flows through Cairo?", "The Danube flows through Cairo.", "The Nile flows through Cairo."),
    ("What is the profession of Tom Hanks?", "Tom Hanks is a chef.", "Tom Hanks is an actor."),
    ("Where is Mount Everest?", "Mount Everest is in Peru.", "Mount Everest is in Nepal."),
    ("What instrument did Jimi Hendrix play?", "Jimi Hendrix played the piano.", "Jimi Hendrix played the guitar."),
    ("Who discovered penicillin?", "Penicillin was discovered by Marie Curie.", "Penicillin was discovered by Alexander Fleming."),
    ("What is the capital of Canada?", "The capital of Canada is Vancouver.", "The capital of Canada is Ottawa."),
    ("Which country is Toyota from?", "Toyota is from Germany.", "Toyota is from Japan."),
    ("What is the official language of Mexico?", "The official language of Mexico is French.", "The official language of Mexico is Spanish."),
    ("Who wrote Don Quixote?", "Don Quixote was written by Dante.", "Don Quixote was written by Miguel de Cervantes."),
    ("Where is the Colosseum?", "The Colosseum is in Athens.", "The Colosseum is in Rome."),
    ("What religion was Gandhi?", "Gandhi was a Christian.", "Gandhi was a Hindu."),
    ("Which city hosts the Louvre?", "The Louvre is in London.", "The Louvre is in Paris."),
    ("What is BBC One owned by?", "BBC One is owned by Sega.", "BBC One is owned by the BBC."),
]


@pytest.mark.slow
def test_served_answers_agree_with_the_local_answerer(llama_server, compose_cfg):
    """The packaged SmolLM2 answering locally (float32, weights dequantised from the GGUF) and served by
    llama.cpp (4-bit weights, 8-bit activations), the same prompts, greedy, on 24 questions with a
    counterfactual edit each. Greedy decoding amplifies the arithmetic's differences: measured
    (2026-12-05), 16 of 24 answers identical, the rest mostly the same fact in other words, and the
    judge's decision (contradicts the edit or not) the same on 24 of 24. What the reward uses is that
    decision: the tolerance is 20 of 24 decisions the same, and at least 14 of 24 answers identical."""
    from gflownet.runner import build_module

    local = build_module(compose_cfg([]))
    local.build_reward()
    served = build_module(compose_cfg(["reward=contradiction_served", f"reward.served.base_url={llama_server.url}",
                                       "reward.served.api_key=local", "reward.served.cache=null"]))
    served.build_reward()
    questions, edits, originals = (list(x) for x in zip(*EDITS))
    term = local.reward.terms["contradiction"][1]
    a = term.answerer(questions)
    b = served.reward.terms["contradiction"][1].answerer(questions)
    same = sum(x == y for x, y in zip(a, b))
    log_c_a, log_c_b = term.judge(edits, a, originals), term.judge(edits, b, originals)
    agree = int(((log_c_a > term.contradiction_threshold) == (log_c_b > term.contradiction_threshold)).sum())
    print(f"served answers: {same} of {len(questions)} identical to the local answerer's; "
          f"the judge's decision agrees on {agree} of {len(questions)}")
    for x, y in zip(a, b):
        if x != y:
            print(f"  local {x!r}\n  served {y!r}")
    assert same >= 14 and agree >= 20


@pytest.mark.slow
def test_an_api_key_reaches_no_file_of_a_real_run_nor_its_console(answer_server, tmp_path):
    """A real training run against the served answerer with its API key on the command line (and,
    second run, from the environment), W&B offline on: the key is sent to the server and is in none
    of the run's files (Hydra's configs, hparams, checkpoints, CSV, the W&B offline run, the log) nor
    in the console output."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_pipeline import EDIT_FAST

    secret = "sk-Zq9notinanyfile42"
    runs = {"cli": ([f"reward.served.api_key={secret}"], {}),
            "env": (["reward.served.api_key_env=GFN_TEST_ANSWER_KEY"], {"GFN_TEST_ANSWER_KEY": secret})}
    for name, (extra, env) in runs.items():
        run_dir = tmp_path / name
        _Answers.seen = []
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *EDIT_FAST, "reward=contradiction_served",
             f"reward.served.base_url={answer_server}", "reward.served.cache=null", *extra, "logger=many",
             "trainer.max_steps=2", f"hydra.run.dir={run_dir}"],
            capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ, **env})
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        assert len(_Answers.seen) > 1 and {b["_authorization"] for b in _Answers.seen} == {f"Bearer {secret}"}  # with the key
        assert secret not in proc.stdout + proc.stderr
        files = [p for p in run_dir.rglob("*") if p.is_file()]
        assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, (name, leaked)
