"""Replay buffers of good samples per prompt: Redis (shared by all ranks) and in-memory.

An entry is one sample (a question, a sentence, a prompt): its token ids (ending with the
termination token), the unscaled log-reward of every state (``None`` where a state was not scored),
its terminal unscaled log-reward, reward components, and the signature of what scored it (the reward
and its phase, the action space, the models: ``LMGFlowNet.buffer_signature``). Entries are stored
and replayed per (signature, prompt): a run never replays a reward it is not training on, whether
the entries come from an earlier run with other settings on a persistent Redis, another run of a
Hydra multirun sharing the namespace, or an earlier phase of its own reward; ``foreign`` counts the
entries it ignores. Entries are JSON, never pickle, so a shared Redis cannot run code in the
trainer; anything under the namespace that does not parse as an entry is rejected.

Per prompt the buffer keeps the ``buffer_size`` best distinct samples (by text; a
repeat keeps the higher reward). With ``near_duplicate_similarity`` set (e.g. 0.85), samples whose
normalised edit-distance similarity (``rapidfuzz`` Levenshtein on lower-cased text without
punctuation) reaches it count as the same sample too, and the one with the higher reward is
kept, as GFlowNet red-teaming does, so that replay does not collapse onto variants of one sample.
Prompts are keyed by the sha1 of their text, the same in every process and after a restart.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence
from urllib.parse import urlparse

import torch
from torch import Tensor

from gflownet.core.protocols import Rollout

log = logging.getLogger(__name__)


class BufferEntryError(ValueError):
    """A stored value is not a valid buffer entry (corrupt or foreign data under the namespace)."""


class BufferUnavailable(ConnectionError):
    """The shared buffer cannot be reached right now; training falls back to on-policy steps."""


@dataclass
class BufferEntry:
    text: str  # the decoded sample (termination text included): one entry per distinct text and prompt
    token_ids: list[int]
    log_r: list[float | None]  # unscaled, per state 0..L (None: not scored)
    reward: float  # terminal unscaled log-reward (the sort key)
    components: dict[str, float | str] = field(default_factory=dict)
    signature: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise BufferEntryError("entry needs a non-empty text")
        if not self.token_ids or not all(isinstance(t, int) and t >= 0 for t in self.token_ids):
            raise BufferEntryError("entry token_ids must be non-negative ints")
        if len(self.log_r) != len(self.token_ids):
            raise BufferEntryError(f"entry has {len(self.log_r)} rewards for {len(self.token_ids)} states")
        if not all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in self.log_r):
            raise BufferEntryError("entry log_r values must be finite numbers or null")
        if not isinstance(self.reward, (int, float)) or not math.isfinite(self.reward):
            raise BufferEntryError("entry reward must be a finite number")
        if self.log_r[-1] is None:
            raise BufferEntryError("entry's terminal state must be scored")
        if not isinstance(self.signature, str):
            raise BufferEntryError("entry signature must be a string")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "BufferEntry":
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and "question" in data and "text" not in data:  # written before 2026-12-05
                data["text"] = data.pop("question")
            if not isinstance(data, dict) or set(data) != {"text", "token_ids", "log_r", "reward", "components", "signature"}:
                raise BufferEntryError(f"unexpected fields {sorted(data) if isinstance(data, dict) else type(data).__name__}")
            return cls(**data)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise BufferEntryError(f"not a buffer entry: {err}") from None


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


def normalise_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what near-duplicate tests compare."""
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def check_similarity(value: float | None) -> float | None:
    if value is not None and not 0.0 < float(value) <= 1.0:
        raise ValueError(f"buffer.near_duplicate_similarity must be in (0, 1] or null (off), got {value}")
    return None if value is None else float(value)


def near_duplicate_plan(existing: dict[str, float], new: Sequence["BufferEntry"], similarity: float) -> tuple[list["BufferEntry"], list[str]]:
    """Which new entries to add and which stored samples to evict, so that no two kept samples are
    near-duplicates (similarity >= ``similarity``) and of each group of near-duplicates the one with the
    highest reward stays (a tie keeps the one stored first). ``existing``: stored text -> reward."""
    from rapidfuzz.distance import Levenshtein

    kept: dict[str, tuple[float, str, "BufferEntry | None"]] = {q: (r, normalise_text(q), None) for q, r in existing.items()}
    evict: list[str] = []
    for e in sorted(new, key=lambda e: -e.reward):
        norm = normalise_text(e.text)
        close = [q for q, (_, n, _) in kept.items() if Levenshtein.normalized_similarity(norm, n) >= similarity]
        if any(kept[q][0] >= e.reward for q in close):
            continue
        for q in close:
            if kept[q][2] is None:
                evict.append(q)
            del kept[q]
        kept[e.text] = (e.reward, norm, e)
    return [e for _, _, e in kept.values() if e is not None], evict


def choose(rewards: Sequence[float], n: int, sampling: str, temperature: float, generator: torch.Generator) -> list[int]:
    """Indices of ``n`` entries drawn with replacement, uniformly or by exp(reward / temperature)."""
    if sampling == "uniform":
        weights = torch.ones(len(rewards))
    elif sampling == "reward":
        weights = (torch.tensor(rewards, dtype=torch.float64) / temperature).softmax(0)
    else:
        raise ValueError(f"unknown buffer sampling {sampling!r}: use uniform or reward")
    return torch.multinomial(weights.float(), n, replacement=True, generator=generator).tolist()


def entries_to_batch(entries: Sequence[BufferEntry], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Padded ``sample_ids`` (B, T+1), ``lengths`` (B,), unscaled ``log_r`` (B, T+1), ``scored`` (B, T+1)."""
    T1 = max(len(e.token_ids) for e in entries)
    ids = torch.full((len(entries), T1), pad_id, dtype=torch.long)
    log_r = torch.zeros(len(entries), T1)
    scored = torch.zeros(len(entries), T1, dtype=torch.bool)
    for i, e in enumerate(entries):
        n = len(e.token_ids)
        ids[i, :n] = torch.tensor(e.token_ids)
        for t, v in enumerate(e.log_r):
            if v is not None:
                log_r[i, t] = v
                scored[i, t] = True
    lengths = torch.tensor([len(e.token_ids) - 1 for e in entries])
    return ids, lengths, log_r, scored


def to_entries(ids: Tensor, lengths: Tensor, scored: Tensor, log_r: Tensor, samples: Sequence[str],
               components: dict[str, Tensor], texts: dict[str, Sequence[str]], signature: str) -> list[BufferEntry]:
    """Buffer entries of rewarded trajectories (one prompt's rows), signed; a trajectory whose
    terminal reward is not finite is left out. Non-finite components are left out of its entry."""
    entries = []
    for b in range(lengths.numel()):
        L = int(lengths[b])
        values = [float(v) if s else None for v, s in zip(log_r[b, : L + 1].tolist(), scored[b, : L + 1].tolist())]
        reward = values[L]
        if reward is None or not math.isfinite(reward):
            continue
        comp: dict[str, float | str] = {k: float(v[b]) for k, v in components.items() if math.isfinite(float(v[b]))}
        comp.update({k: v[b] for k, v in texts.items()})
        entries.append(BufferEntry(samples[b], ids[b, : L + 1].tolist(), values, reward, comp, signature))
    return entries


def entries_to_rollout(prompts: list[str], entries: Sequence[BufferEntry], pad_id: int, device) -> Rollout:
    """A replay ``Rollout`` of stored entries (``prompts``: one per entry): their tokens, stored
    per-state rewards, and components (NaN where an entry lacks one) and texts."""
    ids, lengths, log_r, scored = entries_to_batch(entries, pad_id)
    names = {k for e in entries for k, v in e.components.items() if not isinstance(v, str)}
    text_names = {k for e in entries for k, v in e.components.items() if isinstance(v, str)}
    components = {k: torch.tensor([float(e.components.get(k, float("nan"))) for e in entries]) for k in sorted(names)}
    texts = {k: [str(e.components.get(k, "")) for e in entries] for k in sorted(text_names)}
    return Rollout(prompts=list(prompts), sample_ids=ids.to(device), lengths=lengths.to(device), log_r=log_r.to(device),
                   scored=scored.to(device), samples=[e.text for e in entries], components=components, texts=texts,
                   source="replay")


class ReplayBuffer(Protocol):
    buffer_size: int
    shared: bool  # one store for every DDP rank (rank 0 adds all trajectories), or one per rank

    def add(self, prompt: str, entries: Sequence[BufferEntry], signature: str = "") -> int: ...

    def sample(self, prompt: str, n: int, generator: torch.Generator, signature: str = "") -> list[BufferEntry]: ...

    def entries(self, prompt: str, signature: str = "") -> list[BufferEntry]: ...

    def size(self, prompt: str, signature: str = "") -> int: ...

    def foreign(self, signature: str) -> int: ...


class InMemoryReplayBuffer:
    """The same behaviour in this process's memory (not shared across ranks). It is saved in
    checkpoints (``state`` / ``load_state``), so that replay continues after a resume."""

    shared = False  # each DDP rank has its own: every rank stores its own trajectories

    def __init__(self, buffer_size: int = 128, sampling: str = "uniform", sampling_temperature: float = 1.0,
                 near_duplicate_similarity: float | None = None):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.buffer_size, self.sampling, self.sampling_temperature = buffer_size, sampling, sampling_temperature
        self.near_duplicate_similarity = check_similarity(near_duplicate_similarity)
        self._store: dict[tuple[str, str], dict[str, BufferEntry]] = {}  # (signature, prompt key) -> text -> entry

    def add(self, prompt: str, entries: Sequence[BufferEntry], signature: str = "") -> int:
        return self._add_to((signature, prompt_key(prompt)), entries)

    def _add_to(self, key: tuple[str, str], entries: Sequence[BufferEntry]) -> int:
        table = self._store.setdefault(key, {})
        added = 0
        for e in entries:
            if e.signature != key[0]:
                raise BufferEntryError(f"entry signed {e.signature!r} added under signature {key[0]!r}")
        if self.near_duplicate_similarity is not None:
            entries, evict = near_duplicate_plan({q: e.reward for q, e in table.items()}, entries,
                                                 self.near_duplicate_similarity)
            for q in evict:
                del table[q]
        for e in entries:
            old = table.get(e.text)
            if old is None or old.reward < e.reward:
                table[e.text] = e
                added += 1
        if len(table) > self.buffer_size:
            keep = sorted(table.values(), key=lambda e: e.reward, reverse=True)[: self.buffer_size]
            table.clear()
            table.update({e.text: e for e in keep})
        return added

    def sample(self, prompt: str, n: int, generator: torch.Generator, signature: str = "") -> list[BufferEntry]:
        entries = sorted(self._store.get((signature, prompt_key(prompt)), {}).values(), key=lambda e: e.text)
        if not entries:
            return []
        return [entries[i] for i in choose([e.reward for e in entries], n, self.sampling, self.sampling_temperature, generator)]

    def entries(self, prompt: str, signature: str = "") -> list[BufferEntry]:
        """Every entry stored for the prompt under the signature, best reward first."""
        return sorted(self._store.get((signature, prompt_key(prompt)), {}).values(), key=lambda e: (-e.reward, e.text))

    def size(self, prompt: str, signature: str = "") -> int:
        return len(self._store.get((signature, prompt_key(prompt)), {}))

    def foreign(self, signature: str) -> int:
        """Entries stored under other signatures (never replayed by a run with this one)."""
        return sum(len(t) for (sig, _), t in self._store.items() if sig != signature)

    def state(self) -> dict:
        """Every entry, as JSON: what a checkpoint keeps."""
        return {"kind": "memory", "tables": [[sig, key, [e.to_json() for e in t.values()]] for (sig, key), t in self._store.items()]}

    def load_state(self, state: dict) -> int:
        """Add the entries of one or more ``state()`` dicts (e.g. every DDP rank's); returns how many."""
        if state.get("kind") != "memory":
            raise ValueError(f"not an in-memory buffer state: kind {state.get('kind')!r}")
        n = 0
        for sig, key, raws in state.get("tables", []):
            n += self._add_to((sig, key), [BufferEntry.from_json(r) for r in raws])
        return n


# KEYS: sorted set (member -> reward), hash (member -> entry JSON). ARGV: capacity, then
# (member, reward, json) triples. Adds, deduplicates and trims in one atomic step.
_ADD_SCRIPT = """
local cap = tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV, 3 do
  local member, score, value = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local old = redis.call('ZSCORE', KEYS[1], member)
  if (not old) or tonumber(old) < score then
    redis.call('ZADD', KEYS[1], score, member)
    redis.call('HSET', KEYS[2], member, value)
    added = added + 1
  end
end
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  local drop = redis.call('ZRANGE', KEYS[1], 0, n - cap - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  redis.call('HDEL', KEYS[2], unpack(drop))
end
return added
"""


class RedisReplayBuffer:
    """Per-prompt sorted sets in Redis under ``namespace``, shared by every rank and process."""

    shared = True  # one store for all DDP ranks: rank 0 adds every rank's trajectories

    def __init__(
        self,
        buffer_size: int = 128,
        sampling: str = "uniform",
        sampling_temperature: float = 1.0,
        url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        namespace: str = "gfn",
        near_duplicate_similarity: float | None = None,
        socket_timeout: float = 5.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        max_pending: int = 10000,
    ):
        import redis

        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.buffer_size, self.sampling, self.sampling_temperature = buffer_size, sampling, sampling_temperature
        self.near_duplicate_similarity = check_similarity(near_duplicate_similarity)
        self.namespace = namespace
        if url:
            self.client = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
            parsed = urlparse(url)  # host:port/db, never the password
            self.where = f"{parsed.hostname}:{parsed.port or 6379}{parsed.path or '/0'}"
        else:
            self.client = redis.Redis(host=host, port=port, db=db, password=password,
                                      socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
            self.where = f"{host}:{port}"
        self.advice = (f"use another buffer.namespace, or remove the keys under {namespace!r} with "
                       f"REDIS_NAMESPACE='{namespace}:' scripts/clean.sh --redis (REDIS_URL set to this server)")
        try:
            self.client.ping()
        except redis.AuthenticationError as err:  # wrong password, or none given to a server that wants one
            raise ConnectionError(
                f"Redis at {self.where} refused the credentials ({type(err).__name__}: {err}): put the server's "
                f"password in REDIS_URL (redis://:PASSWORD@host:port/db) or buffer.password"
            ) from None
        except redis.ResponseError as err:
            if "NOAUTH" in str(err) or "WRONGPASS" in str(err):
                raise ConnectionError(
                    f"Redis at {self.where} refused the credentials ({err}): put the server's password in REDIS_URL "
                    f"(redis://:PASSWORD@host:port/db) or buffer.password"
                ) from None
            raise
        except redis.RedisError as err:
            raise ConnectionError(
                f"Redis not reachable at {self.where} ({err}): start it with scripts/start_redis.sh "
                f"(or set REDIS_URL / buffer.host / buffer.port), or use buffer=memory"
            ) from None
        self._add = self.client.register_script(_ADD_SCRIPT)  # re-loaded by redis-py after a server restart
        self._lost_errors = (redis.ConnectionError, redis.TimeoutError)
        self._response_error = redis.ResponseError
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._backoff = backoff_initial
        self._down_until: float | None = None
        # entries added while Redis was unreachable, written (in order) once it is back: an outage
        # loses nothing unless more than max_pending entries wait (then the oldest go, counted)
        self.max_pending = int(max_pending)
        self._pending: collections.deque[tuple[str, list[BufferEntry], str]] = collections.deque()
        self.pending_dropped = 0

    def _call(self, fn):
        """Run one Redis operation; when the server is lost, fail fast until the backoff expires.

        The first failure logs a warning; calls during the backoff raise ``BufferUnavailable``
        without touching the network; the first call after it tries again (redis-py reconnects),
        doubling the backoff up to ``backoff_max`` while the server stays down.
        """
        now = time.monotonic()
        if self._down_until is not None and now < self._down_until:
            raise BufferUnavailable(f"Redis at {self.where} unreachable; next retry in {self._down_until - now:.1f}s")
        try:
            result = fn()
        except self._response_error as err:
            if "WRONGTYPE" in str(err):  # a key under the namespace that the buffer did not write
                raise BufferEntryError(f"Redis at {self.where}: a key under namespace {self.namespace!r} holds another "
                                       f"kind of value ({err}); {self.advice}") from None
            raise
        except self._lost_errors as err:
            if self._down_until is None:
                log.warning("Redis at %s unreachable (%s): replay buffer off, retrying with backoff", self.where, err)
            self._down_until = now + self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max)
            raise BufferUnavailable(f"Redis at {self.where} unreachable: {err}") from err
        if self._down_until is not None:
            log.warning("Redis at %s reachable again: replay buffer back on", self.where)
            self._down_until, self._backoff = None, self.backoff_initial
        return result

    def _keys(self, prompt: str, signature: str = "") -> tuple[str, str]:
        k = prompt_key(prompt)
        return f"{self.namespace}:z:{signature}:{k}", f"{self.namespace}:e:{signature}:{k}"

    def add(self, prompt: str, entries: Sequence[BufferEntry], signature: str = "") -> int:
        """Add entries (atomically per prompt). While Redis is unreachable they wait in memory
        (``pending``) and ``BufferUnavailable`` is raised; the next add once it is back writes them
        first, oldest first."""
        if not entries:
            return 0
        for e in entries:
            if e.signature != signature:
                raise BufferEntryError(f"entry signed {e.signature!r} added under signature {signature!r}")
        try:
            self.flush_pending()
            return self._add_now(prompt, entries, signature)
        except BufferUnavailable:
            self._queue(prompt, list(entries), signature)
            raise

    @property
    def pending(self) -> int:
        """Entries waiting for Redis to come back."""
        return sum(len(e) for _, e, _ in self._pending)

    def _queue(self, prompt: str, entries: list[BufferEntry], signature: str) -> None:
        self._pending.append((prompt, entries, signature))
        while self.pending > self.max_pending and self._pending:
            _, dropped, _ = self._pending.popleft()
            if not self.pending_dropped:
                log.warning("Redis at %s still unreachable: more than %d entries wait; dropping the oldest",
                            self.where, self.max_pending)
            self.pending_dropped += len(dropped)

    def flush_pending(self) -> int:
        """Write the entries that waited during an outage; raises ``BufferUnavailable`` (keeping the
        rest) while Redis is still unreachable. Returns how many were added."""
        added = 0
        while self._pending:
            prompt, entries, signature = self._pending[0]
            added += self._add_now(prompt, entries, signature)
            self._pending.popleft()
        return added

    def _add_now(self, prompt: str, entries: Sequence[BufferEntry], signature: str) -> int:
        keys = list(self._keys(prompt, signature))
        if self.near_duplicate_similarity is not None:
            return int(self._call(lambda: self._add_filtered(keys, entries)))
        return int(self._call(lambda: self._add(keys=keys, args=self._add_args(entries))))

    def _add_args(self, entries: Sequence[BufferEntry]) -> list:
        args: list = [self.buffer_size]
        for e in entries:
            args += [e.text, repr(float(e.reward)), e.to_json()]
        return args

    def _add_filtered(self, keys: list[str], entries: Sequence[BufferEntry], attempts: int = 20) -> int:
        """Near-duplicate filtering as one optimistic transaction: WATCH the prompt's sorted set, read
        it, plan (``near_duplicate_plan``), then evict and add in MULTI/EXEC; if another process changed
        the set in between, EXEC fails and the whole step runs again on the new contents."""
        import redis

        zkey, hkey = keys
        for _ in range(attempts):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(zkey)
                    stored = {m.decode() if isinstance(m, bytes) else m: s for m, s in pipe.zrange(zkey, 0, -1, withscores=True)}
                    keep, evict = near_duplicate_plan(stored, entries, self.near_duplicate_similarity)
                    pipe.multi()
                    if evict:
                        pipe.zrem(zkey, *evict)
                        pipe.hdel(hkey, *evict)
                    if keep:
                        self._add(keys=keys, args=self._add_args(keep), client=pipe)
                    results = pipe.execute()
                    return int(results[-1]) if keep else 0
                except redis.WatchError:
                    continue
        raise BufferUnavailable(f"Redis at {self.where}: the prompt's entries kept changing under {attempts} attempts "
                                "to add near-duplicate-filtered entries")

    def _snapshot(self, zkey: str, hkey: str) -> tuple[list, dict]:
        # One MULTI/EXEC: the sorted set and the entries as of the same instant. (Reading them in
        # two commands lets a concurrent add evict a picked member in between.)
        pipe = self.client.pipeline(transaction=True)
        pipe.zrange(zkey, 0, -1, withscores=True)
        pipe.hgetall(hkey)
        members, entries = pipe.execute()
        return members, entries

    def sample(self, prompt: str, n: int, generator: torch.Generator, signature: str = "") -> list[BufferEntry]:
        if self._pending:  # an outage's entries first, so that replay sees them
            self.flush_pending()
        zkey, hkey = self._keys(prompt, signature)
        members, raw = self._call(lambda: self._snapshot(zkey, hkey))
        if not members:
            return []
        members.sort(key=lambda m: m[0])  # a fixed order, so the generator alone decides
        picks = choose([s for _, s in members], n, self.sampling, self.sampling_temperature, generator)
        return [self._entry(hkey, members[i][0], raw, signature) for i in picks]

    def entries(self, prompt: str, signature: str = "") -> list[BufferEntry]:
        """Every entry stored for the prompt under the signature, best reward first."""
        zkey, hkey = self._keys(prompt, signature)
        members, raw = self._call(lambda: self._snapshot(zkey, hkey))
        members.sort(key=lambda m: (-m[1], m[0]))
        return [self._entry(hkey, member, raw, signature) for member, _ in members]

    def _entry(self, hkey: str, member: bytes, raw: dict, signature: str) -> BufferEntry:
        value = raw.get(member)
        if value is None:
            raise BufferEntryError(f"{hkey}: member {member!r} has no entry (foreign or corrupt data); {self.advice}")
        try:
            entry = BufferEntry.from_json(value)
        except BufferEntryError as err:
            raise BufferEntryError(f"{hkey}: {err} (foreign or corrupt data); {self.advice}") from None
        if entry.text.encode("utf-8") != member:
            raise BufferEntryError(f"{hkey}: entry for {member!r} holds the text {entry.text!r}; {self.advice}")
        if entry.signature != signature:
            raise BufferEntryError(f"{hkey}: entry for {member!r} is signed {entry.signature!r}, not {signature!r}; "
                                   f"{self.advice}")
        return entry

    def size(self, prompt: str, signature: str = "") -> int:
        return int(self._call(lambda: self.client.zcard(self._keys(prompt, signature)[0])))

    def foreign(self, signature: str) -> int:
        """Entries under this namespace stored with other signatures (other settings, other runs of
        a multirun, another reward phase): never replayed by a run with this signature."""
        own = f"{self.namespace}:z:{signature}:".encode()

        def count() -> int:
            keys = [k for k in self.client.scan_iter(match=f"{self.namespace}:z:*", count=1000) if not k.startswith(own)]
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.zcard(k)
            return sum(int(n) for n in pipe.execute()) if keys else 0

        return int(self._call(count))

    def state(self) -> dict:
        return {"kind": "redis", "namespace": self.namespace}
