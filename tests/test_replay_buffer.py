"""One behavioural suite for both buffers; the Redis one runs against a real redis-server."""

import json
import uuid

import pytest
import torch

from gflownet.core.replay_buffer import (
    BufferEntry, BufferEntryError, InMemoryReplayBuffer, RedisReplayBuffer, entries_to_batch, prompt_key,
)


def entry(q: str, reward: float, n_tokens: int = 4, signature: str = "") -> BufferEntry:
    ids = list(range(1, n_tokens)) + [30]
    log_r = [None] * (n_tokens - 1) + [reward]
    log_r[1] = reward - 1.0
    return BufferEntry(q, ids, log_r, reward, {"log_c": -0.1, "answer": "yes"}, signature)


@pytest.fixture(params=["memory", "redis"])
def make_buffer(request):
    def make(**kw):
        if request.param == "memory":
            return InMemoryReplayBuffer(**kw)
        server = request.getfixturevalue("redis_server")
        return RedisReplayBuffer(url=server.url, namespace=f"test:{uuid.uuid4().hex}", **kw)

    return make


def test_keeps_best_distinct_questions_up_to_capacity(make_buffer):
    buf = make_buffer(buffer_size=3)
    p = "Generate a question about Mars:\nQuestion:"
    assert buf.sample(p, 4, torch.Generator()) == []
    buf.add(p, [entry("a?", -5.0), entry("b?", -1.0), entry("c?", -3.0)])
    buf.add(p, [entry("a?", -0.5), entry("d?", -4.0), entry("b?", -9.0)])  # a improves, b keeps -1
    assert buf.size(p) == 3
    got = {e.text: e.reward for e in buf.sample(p, 200, torch.Generator().manual_seed(0))}
    assert got == {"a?": -0.5, "b?": -1.0, "c?": -3.0}
    assert buf.size("another prompt") == 0


def test_sampling_is_driven_by_the_callers_generator(make_buffer):
    buf = make_buffer(buffer_size=10)
    buf.add("p", [entry(f"q{i}?", -float(i)) for i in range(6)])
    a = [e.text for e in buf.sample("p", 20, torch.Generator().manual_seed(7))]
    torch.manual_seed(123)  # global RNG state is irrelevant
    b = [e.text for e in buf.sample("p", 20, torch.Generator().manual_seed(7))]
    assert a == b and len(set(a)) > 1


def test_reward_proportional_sampling_prefers_high_reward(make_buffer):
    buf = make_buffer(buffer_size=10, sampling="reward", sampling_temperature=0.5)
    buf.add("p", [entry("good?", 0.0), entry("bad?", -4.0)])
    picks = [e.text for e in buf.sample("p", 400, torch.Generator().manual_seed(0))]
    share = picks.count("good?") / 400
    assert share == pytest.approx(1 / (1 + torch.exp(torch.tensor(-8.0)).item()), abs=0.02)


def test_entries_round_trip_to_padded_batch(make_buffer):
    buf = make_buffer()
    buf.add("p", [entry("short?", -1.0, 3), entry("longer one?", -2.0, 6)])
    entries = sorted(buf.sample("p", 50, torch.Generator().manual_seed(1)), key=lambda e: len(e.token_ids))
    entries = [entries[0], entries[-1]]
    ids, lengths, log_r, scored = entries_to_batch(entries, pad_id=0)
    assert ids.shape == log_r.shape == scored.shape == (2, 6)
    assert lengths.tolist() == [2, 5]
    assert ids[0].tolist() == [1, 2, 30, 0, 0, 0]
    assert scored[0].tolist() == [False, True, True, False, False, False]
    assert log_r[1, 5] == -2.0 and log_r[1, 1] == -3.0


def test_prompt_key_is_stable():
    assert len(prompt_key("x")) == 40 and prompt_key("x") != prompt_key("y")
    assert prompt_key("x") == "11f6ad8ec52a2984abaafd7c3b516503785c2072"  # sha1, same in every process


def test_entry_validation():
    with pytest.raises(BufferEntryError, match="rewards for"):
        BufferEntry("q?", [1, 30], [0.0], 0.0)
    with pytest.raises(BufferEntryError, match="finite"):
        BufferEntry("q?", [1, 30], [None, float("nan")], 0.0)
    with pytest.raises(BufferEntryError, match="not a buffer entry|unexpected fields"):
        BufferEntry.from_json(b"\x80\x04\x95 pickle bytes")
    with pytest.raises(BufferEntryError, match="unexpected fields"):
        BufferEntry.from_json(json.dumps({"__reduce__": "os.system"}))


def test_entries_stored_under_the_old_field_name_still_load():
    """Entries written before the field was named ``text`` (``question``: in Redis, in checkpoints) load."""
    new = BufferEntry("q?", [1, 30], [None, -1.0], -1.0, {"log_c": -0.1}, "sig")
    old = json.loads(new.to_json())
    old["question"] = old.pop("text")
    assert "text" in json.loads(new.to_json()) and BufferEntry.from_json(json.dumps(old)) == new


def test_redis_rejects_foreign_values_under_the_namespace(redis_server):
    import pickle
    import redis

    buf = RedisReplayBuffer(url=redis_server.url, namespace="test:foreign")
    buf.add("p", [entry("a?", -1.0)])
    zkey, hkey = buf._keys("p")
    client = redis.Redis.from_url(redis_server.url)
    client.hset(hkey, "a?", pickle.dumps({"evil": True}))  # a planted pickle is data, never executed
    with pytest.raises(BufferEntryError, match=r"foreign or corrupt data\); use another buffer.namespace, or remove the keys "
                                               r"under 'test:foreign' with REDIS_NAMESPACE='test:foreign:' scripts/clean.sh --redis"):
        buf.sample("p", 1, torch.Generator())
    client.hset(hkey, "a?", entry("other?", -1.0).to_json())
    with pytest.raises(BufferEntryError, match="holds the text"):
        buf.sample("p", 1, torch.Generator())


def test_redis_unreachable_error_says_how_to_start_it():
    with pytest.raises(ConnectionError, match=r"Redis not reachable at 127.0.0.1:1 .*scripts/start_redis.sh.*buffer=memory"):
        RedisReplayBuffer(host="127.0.0.1", port=1, socket_timeout=0.5)


def test_redis_entries_survive_a_new_client(redis_server):
    ns = f"test:{uuid.uuid4().hex}"
    RedisReplayBuffer(url=redis_server.url, namespace=ns).add("p", [entry("a?", -1.0)])
    again = RedisReplayBuffer(url=redis_server.url, namespace=ns)  # e.g. another rank, or after a restart
    assert [e.text for e in again.sample("p", 2, torch.Generator())] == ["a?", "a?"]


def test_entries_are_replayed_only_under_the_signature_that_scored_them(make_buffer):
    """Two runs (or two reward phases) on one store: each replays only its own entries, and
    ``foreign`` counts the other's."""
    buf = make_buffer(buffer_size=8)
    p = "Generate a question about Mars:\nQuestion:"
    buf.add(p, [entry("a?", -1.0, signature="run-a"), entry("b?", -2.0, signature="run-a")], signature="run-a")
    buf.add(p, [entry("c?", -3.0, signature="run-b")], signature="run-b")
    g = torch.Generator().manual_seed(0)
    assert {e.text for e in buf.sample(p, 50, g, signature="run-a")} == {"a?", "b?"}
    assert {e.text for e in buf.sample(p, 50, g, signature="run-b")} == {"c?"}
    assert buf.sample(p, 5, g, signature="run-c") == []
    assert (buf.size(p, signature="run-a"), buf.size(p, signature="run-b")) == (2, 1)
    assert (buf.foreign("run-a"), buf.foreign("run-b"), buf.foreign("run-c")) == (1, 2, 3)
    with pytest.raises(BufferEntryError, match="signed 'run-a' added under signature 'run-b'"):
        buf.add(p, [entry("d?", -1.0, signature="run-a")], signature="run-b")


def test_in_memory_buffer_state_round_trips_with_signatures():
    buf = InMemoryReplayBuffer(buffer_size=4)
    buf.add("p", [entry("a?", -1.0, signature="s1"), entry("b?", -2.0, signature="s1")], signature="s1")
    buf.add("q", [entry("c?", -3.0, signature="s2")], signature="s2")
    state = json.loads(json.dumps(buf.state()))  # what a checkpoint holds survives serialisation
    again = InMemoryReplayBuffer(buffer_size=4)
    assert again.load_state(state) == 3
    g = torch.Generator().manual_seed(0)
    assert {e.text for e in again.sample("p", 20, g, signature="s1")} == {"a?", "b?"}
    assert again.size("q", signature="s2") == 1 and again.foreign("s1") == 1
    with pytest.raises(ValueError, match="not an in-memory buffer state"):
        again.load_state({"kind": "redis", "namespace": "gfn"})


def test_redis_key_of_another_type_under_the_namespace_names_it_and_the_fix(redis_server):
    import redis

    ns = f"test:{uuid.uuid4().hex[:8]}"
    buf = RedisReplayBuffer(url=redis_server.url, namespace=ns)
    zkey, hkey = buf._keys("p")
    redis.Redis.from_url(redis_server.url).set(zkey, "someone else's counter")
    for call in (lambda: buf.sample("p", 1, torch.Generator()), lambda: buf.add("p", [entry("a?", -1.0)])):
        with pytest.raises(BufferEntryError, match=f"a key under namespace '{ns}' holds another kind of value.*WRONGTYPE.*"
                                                   f"scripts/clean.sh --redis"):
            call()


def test_redis_wrong_or_missing_password_says_so_not_start_redis(tmp_path):
    import redis

    from tests.conftest import RedisServer

    server = RedisServer(tmp_path / "auth").start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        for url in (f"redis://:wrong@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0"):
            with pytest.raises(ConnectionError) as err:
                RedisReplayBuffer(url=url, namespace="t")
            text = str(err.value)
            assert f"Redis at 127.0.0.1:{server.port}/0 refused the credentials" in text and "REDIS_URL (redis://:PASSWORD@" in text
            assert "start_redis" not in text and "wrong" not in text.split("refused")[0]
        assert RedisReplayBuffer(url=f"redis://:s3cret@127.0.0.1:{server.port}/0", namespace="t").size("p") == 0
    finally:
        server.stop()


def test_near_duplicate_plan_keeps_the_best_of_each_group():
    from gflownet.core.replay_buffer import near_duplicate_plan, normalise_text

    assert normalise_text("  What IS the capital of France?? ") == "what is the capital of france"
    stored = {"What is the capital of France?": -2.0, "Who painted the Mona Lisa?": -1.0}
    new = [entry("what is the capital of france", -3.0),  # same question, worse: dropped
           entry("Who painted the Mona Lisa ?", -0.5),  # same question, better: evicts the stored one
           entry("Where is the Louvre museum?", -4.0),  # new question: kept
           entry("Where is the Louvre museum located?", -1.5)]  # 0.76 similar to the previous: at 0.75 the better of the two
    keep, evict = near_duplicate_plan(stored, new, similarity=0.75)
    assert {e.text for e in keep} == {"Who painted the Mona Lisa ?", "Where is the Louvre museum located?"}
    assert evict == ["Who painted the Mona Lisa?"]
    keep, evict = near_duplicate_plan(stored, new, similarity=0.95)  # stricter: the two Louvre questions differ
    assert {e.text for e in keep} == {"Who painted the Mona Lisa ?", "Where is the Louvre museum located?",
                                          "Where is the Louvre museum?"}


def test_near_duplicate_filter_in_the_buffer(make_buffer):
    buf = make_buffer(buffer_size=10, near_duplicate_similarity=0.85)
    p = "Generate a question about Mars:\nQuestion:"
    buf.add(p, [entry("What colour is Mars?", -3.0), entry("How far away is Mars from the Sun?", -2.0)])
    buf.add(p, [entry("What color is Mars?", -1.0),  # near "colour": replaces it (higher reward)
                entry("How far away is Mars from the sun", -5.0),  # near-duplicate, lower: dropped
                entry("Who discovered the moons of Mars?", -4.0)])
    got = {e.text: e.reward for e in buf.sample(p, 300, torch.Generator().manual_seed(0))}
    assert got == {"What color is Mars?": -1.0, "How far away is Mars from the Sun?": -2.0,
                   "Who discovered the moons of Mars?": -4.0}
    with pytest.raises(ValueError, match="near_duplicate_similarity"):
        make_buffer(near_duplicate_similarity=1.5)


def test_redis_near_duplicate_filter_survives_a_concurrent_writer(redis_server, monkeypatch):
    """Another process adds a near-duplicate between this writer's read and its write: the optimistic
    transaction notices (WATCH), plans again on the new contents and keeps only the better question.
    (A read-then-write without the transaction ends with both questions stored.)"""
    import gflownet.core.replay_buffer as rb

    ns = f"test:{uuid.uuid4().hex}"
    p = "Generate a question about Venus:\nQuestion:"
    mine = RedisReplayBuffer(url=redis_server.url, namespace=ns, buffer_size=50, near_duplicate_similarity=0.8)
    other = RedisReplayBuffer(url=redis_server.url, namespace=ns, buffer_size=50)
    plan, calls = rb.near_duplicate_plan, []

    def interleaved(stored, new, similarity):
        calls.append(dict(stored))
        if len(calls) == 1:  # after this writer read the set, before it writes
            other.add(p, [entry("Why does Venus spin backwards ?", -0.5)])
        return plan(stored, new, similarity)

    monkeypatch.setattr(rb, "near_duplicate_plan", interleaved)
    mine.add(p, [entry("Why does Venus spin backwards?", -2.0)])
    assert len(calls) == 2 and calls[0] == {} and "Why does Venus spin backwards ?" in calls[1]
    got = {e.text: e.reward for e in mine.sample(p, 50, torch.Generator().manual_seed(0))}
    assert got == {"Why does Venus spin backwards ?": -0.5}
