"""The Redis buffer under concurrent writers and a server that dies and comes back."""

import logging
import multiprocessing as mp
import random
import time
import uuid

import pytest
import torch

from gflownet.core.replay_buffer import BufferEntry, BufferUnavailable, RedisReplayBuffer
from tests.conftest import RedisServer

PROMPTS = [f"Generate a question about subject {i}:\nQuestion:" for i in range(3)]
CAPACITY = 16


def worker(url: str, namespace: str, seed: int, seconds: float, queue) -> None:
    """Add and sample as fast as possible; report every (prompt, question, reward) it added."""
    buf = RedisReplayBuffer(buffer_size=CAPACITY, url=url, namespace=namespace)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    added, samples = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        prompt = rng.choice(PROMPTS)
        batch = []
        for _ in range(rng.randint(1, 8)):
            q = f"question {rng.randrange(60)}?"  # a small pool: workers collide on the same questions
            r = rng.uniform(-50, 0)
            batch.append(BufferEntry(q, [rng.randrange(1, 100) for _ in range(3)] + [30], [None, r - 1, None, r], r, {"w": seed}))
        buf.add(prompt, batch)
        added += [(prompt, e.text, e.reward) for e in batch]
        for e in buf.sample(prompt, 4, gen):  # sampling while others write must only ever see whole entries
            assert e.log_r[-1] == e.reward
        samples += 1
    queue.put((added, samples))


@pytest.mark.slow
def test_four_processes_add_and_sample_concurrently(redis_server):
    import redis

    ns = f"test:{uuid.uuid4().hex}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(redis_server.url, ns, seed, 3.0, queue)) for seed in range(4)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    added = [a for report, _ in reports for a in report]
    assert len(added) > 1000 and all(n > 50 for _, n in reports)

    client = redis.Redis.from_url(redis_server.url)
    buf = RedisReplayBuffer(buffer_size=CAPACITY, url=redis_server.url, namespace=ns)
    for prompt in PROMPTS:
        zkey, hkey = buf._keys(prompt)
        members = dict(client.zrange(zkey, 0, -1, withscores=True))
        stored = client.hgetall(hkey)
        assert 0 < len(members) <= CAPACITY  # never over capacity
        assert set(stored) == set(members)  # no orphan or missing entry
        for member, raw in stored.items():  # no corrupt entry, scores match their entries
            entry = BufferEntry.from_json(raw)
            assert entry.text.encode() == member and entry.reward == members[member]
        # exactly the best CAPACITY distinct questions, each at its best reward ever added
        best = {}
        for p, q, r in added:
            if p == prompt:
                best[q] = max(r, best.get(q, float("-inf")))
        expected = dict(sorted(best.items(), key=lambda kv: kv[1], reverse=True)[:CAPACITY])
        assert {m.decode(): s for m, s in members.items()} == pytest.approx(expected)


def entry(q, r):
    return BufferEntry(q, [5, 6, 30], [None, r - 1, r], r, {})


@pytest.mark.parametrize("persistence", [True, False])
def test_server_killed_and_restarted(tmp_path, caplog, persistence):
    server = RedisServer(tmp_path / "redis", persistence=persistence).start()
    try:
        buf = RedisReplayBuffer(url=server.url, namespace="test:restart", backoff_initial=0.2, backoff_max=1.0,
                                socket_timeout=1.0)
        buf.add("p", [entry("before?", -1.0)])
        server.stop(kill=True)  # SIGKILL, as a crash would
        with caplog.at_level(logging.WARNING, logger="gflownet.core.replay_buffer"):
            with pytest.raises(BufferUnavailable):
                buf.add("p", [entry("during?", -2.0)])
            t0 = time.monotonic()
            with pytest.raises(BufferUnavailable, match="next retry in"):  # fails fast during the backoff
                buf.sample("p", 1, torch.Generator())
            assert time.monotonic() - t0 < 0.05
        assert sum("unreachable" in r.message for r in caplog.records) == 1  # one warning, not one per call
        server.start()  # same port, same data directory
        time.sleep(0.25)  # let the backoff expire
        with caplog.at_level(logging.WARNING, logger="gflownet.core.replay_buffer"):
            buf.add("p", [entry("after?", -3.0)])  # reconnects; the Lua script is re-loaded
        assert any("reachable again" in r.message for r in caplog.records)
        kept = {e.text for e in buf.sample("p", 50, torch.Generator().manual_seed(0))}
        # the entry added during the outage waited and was written first (it was dropped before)
        assert kept == ({"before?", "during?", "after?"} if persistence else {"during?", "after?"})
        assert buf.pending == 0
    finally:
        server.stop()


def test_training_goes_on_when_redis_dies(tmp_path, compose_cfg, caplog):
    """use_buffer_prob=1: every step asks the buffer; the server is killed after the first step."""
    import pytorch_lightning as pl

    from gflownet.runner import run_training
    from tests.test_pipeline import FAST

    server = RedisServer(tmp_path / "redis").start()

    class KillRedis(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 1:
                server.stop(kill=True)

    try:
        cfg = compose_cfg([*FAST, "buffer=redis", f"buffer.url={server.url}", "buffer.namespace=test:train",
                           "+buffer.backoff_initial=0.1", "gfn.use_buffer_prob=1.0", "trainer.max_steps=4"])
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.callbacks.kill_redis = {"_target_": f"{__name__}._Holder.make"}
        _Holder.callback = KillRedis()
        with caplog.at_level(logging.WARNING):
            summary = run_training(cfg)
        assert summary["global_step"] == 4
        assert any("unreachable" in r.message for r in caplog.records)
    finally:
        server.stop()


class _Holder:
    callback = None

    @staticmethod
    def make():
        return _Holder.callback


def test_an_outage_keeps_at_most_max_pending_entries(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis").start()
    try:
        buf = RedisReplayBuffer(url=server.url, namespace="test:pending", backoff_initial=0.1, socket_timeout=0.5,
                                max_pending=2)
        server.stop(kill=True)
        with caplog.at_level(logging.WARNING, logger="gflownet.core.replay_buffer"):
            for i in range(3):
                with pytest.raises(BufferUnavailable):
                    buf.add("p", [entry(f"q{i}?", -float(i))])
        assert buf.pending == 2 and buf.pending_dropped == 1  # the oldest went, counted and warned once
        assert sum("dropping the oldest" in r.message for r in caplog.records) == 1
        server.start()
        time.sleep(0.15)
        assert buf.flush_pending() == 2 and buf.pending == 0
        assert {e.text for e in buf.entries("p")} == {"q1?", "q2?"}
    finally:
        server.stop()
