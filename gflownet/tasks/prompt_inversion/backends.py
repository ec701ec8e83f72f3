"""Reward backends for prompt inversion: ``log p(y | x)`` from a local Hugging Face model or from
any OpenAI-compatible endpoint, behind one interface, with a persistent cache.

A backend takes rendered pairs (``templates.Rendered``: a context and the continuation to score)
and returns one log-probability per pair (nats, summed over the continuation's tokens). Which
tokens are the continuation's is decided the same way everywhere: the string ``context +
continuation`` is tokenised as one text, and every token that starts at or after the end of the
context counts. So a local model and the same model behind a server give the same number, up to
the arithmetic of their kernels (tests/test_prompt_inversion.py measures it).

* ``LocalBackend``: teacher-forced, batched, one forward pass per batch of pairs.
* ``OpenAIBackend``: ``/v1/completions`` through the ``openai`` client. ``mode: echo`` (default)
  sends the whole string with ``echo=true, logprobs`` and reads the prompt tokens' log-probabilities
  (llama-cpp-python's server with ``logits_all``, vLLM, and other servers that echo). ``mode:
  generate`` is for endpoints that cannot score a given text: the model writes its own response to
  the context and the reward is that response's log-probability (see ``OpenAIBackend``).
  Concurrency limit, retries with exponential backoff on rate limits, server errors and time-outs
  (the client's own), a time-out per request, and counters of requests, HTTP attempts and tokens.
* ``CachedBackend``: a SQLite file keyed by (backend, mode, context, continuation), written after
  every batch, so that replayed or repeated inputs cost nothing, across steps and across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch

from gflownet.tasks.prompt_inversion.templates import Rendered

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A reward backend could not produce a log-probability (the message says why and what to do)."""


def continuation_slice(offsets: Sequence[int], context_chars: int, total_chars: int) -> list[int]:
    """Indices of the tokens that belong to the continuation: those starting at or after the end of
    the context (and before ``total_chars``, which leaves out tokens a server generated after it)."""
    return [i for i, start in enumerate(offsets) if context_chars <= start < total_chars]


def continuation_logprobs(tokens: Sequence[str], logprobs: Sequence[float | None], continuation: str,
                          generated: str | None = "") -> list[float | None] | None:
    """The log-probabilities of the echoed tokens that make up ``continuation``.

    Servers differ in where their text offsets start (llama-cpp-python leaves special tokens' text
    out of them) and in whether they list the generated token (``max_tokens=1``; llama-cpp-python
    does or does not, and may list an incomplete UTF-8 character as empty tokens), but every echo
    spells the prompt's end, then possibly the start of the generated text. So: the last token
    boundary where the echoed text ends with ``continuation`` and what follows it is the start of
    ``generated`` (the response text after the prompt; None when unknown: then at most 3 trailing
    tokens), and from there, backwards, the tokens that fit inside the continuation. A token that
    straddles the context's end is context, as in ``continuation_slice``. None when no boundary fits."""
    ends, pos = [], 0
    for t in tokens:
        pos += len(t)
        ends.append(pos)
    joined = "".join(tokens)
    # k: the last token of the continuation; a tail that is the whole generated text first (the
    # server listed it), then one that is its start (listed in part, or not at all)
    candidates = [k for k in range(len(tokens) - 1, -1, -1) if tokens[k] and joined[: ends[k]].endswith(continuation)]
    if generated is None:
        order = [k for k in candidates if len(tokens) - 1 - k <= 3]
    else:
        order = [k for k in candidates if joined[ends[k]:] == generated]
        order += [k for k in candidates if k not in order and generated.startswith(joined[ends[k]:])]
    if not order:
        return None
    taken, used, i = [], 0, order[0]
    while i >= 0 and used + len(tokens[i]) <= len(continuation):
        used += len(tokens[i])
        taken.append(logprobs[i])
        i -= 1
    return taken[::-1] if used else None


class LocalBackend:
    """``log p(continuation | context)`` from a local causal LM, one teacher-forced pass per batch.

    ``disable_adapters``: the model is the sampler itself and is scored with its LoRA adapters
    disabled (the base weights). No special tokens are added: the rendered context carries its
    own (``templates.with_bos``), and special-token text in it is read as those tokens."""

    def __init__(self, model, tokenizer, name: str, batch_size: int = 16, disable_adapters: bool = False):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"local reward backend {name!r}: needs a fast tokenizer (offsets) to find the scored tokens")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.disable_adapters = int(batch_size), disable_adapters
        self.mode = "echo"
        self.calls = 0
        self.tokens = 0

    def encode(self, pair: Rendered) -> tuple[list[int], list[int]]:
        text = pair.context + pair.continuation
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids = enc["input_ids"]
        scored = continuation_slice([s for s, _ in enc["offset_mapping"]], len(pair.context), len(text))
        if not scored:
            raise BackendError(f"no token of the continuation {pair.continuation[:40]!r} starts after the context: "
                               "the target is empty or merges into the context's last token")
        return ids, scored

    @torch.no_grad()
    def log_probs(self, pairs: Sequence[Rendered], responses: list | None = None) -> list[float]:
        out: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(pairs), self.batch_size):
            chunk = [self.encode(p) for p in pairs[start:start + self.batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (row, _) in enumerate(chunk):  # right padding: positions are the plain 0..n-1
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ctx = self.model.disable_adapter() if self.disable_adapters else nullcontext()
            was_training = self.model.training
            self.model.eval()
            try:
                with ctx:
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            finally:
                self.model.train(was_training)
            lp = logits.log_softmax(-1)
            for i, (row, scored) in enumerate(chunk):
                pos = torch.tensor(scored, device=device)
                tok = ids[i, pos].to(device)
                out.append(float(lp[i, pos - 1].gather(-1, tok[:, None]).sum()))
                self.tokens += len(row)
            self.calls += 1
        return out

    def metrics(self) -> dict[str, float]:
        return {"forward_passes": float(self.calls), "tokens": float(self.tokens)}


class OpenAIBackend:
    """``log p(continuation | context)`` from an OpenAI-compatible ``/v1/completions`` endpoint.

    ``mode: echo`` sends ``context + continuation`` with ``echo=true, logprobs=1, max_tokens=1``
    and sums the returned log-probabilities of the continuation's prompt tokens (by character
    offset, as ``continuation_slice``).

    ``mode: generate`` sends only the context and lets the model write up to
    ``max_response_tokens`` tokens at temperature 1; the log-probability is that of the response it
    wrote, and the target y is not used. The reward ``p(x) p(ŷ | x)^β`` with ŷ drawn from the
    model then favours inputs on which the model's answer is predictable: high for inputs whose
    response the model is sure of (memorised text, fixed formats), low for open ones. It is a
    different target from ``p(x) p(y | x)^β`` and a noisy one (ŷ changes per call); use it where
    an endpoint scores no given text.

    The key comes from ``api_key`` or the environment variable ``api_key_env``; a local server
    accepts any value (``api_key: local``). Rate limits (429), server errors (5xx), connection
    errors and time-outs are retried ``max_retries`` times with exponential backoff by the
    ``openai`` client; at most ``concurrency`` requests are in flight."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 mode: str = "echo", concurrency: int = 4, max_retries: int = 5, timeout: float = 60.0,
                 max_response_tokens: int = 64, check: bool = True):
        try:
            import httpx
            import openai
        except ImportError as err:  # pragma: no cover - both are pinned requirements
            raise BackendError("the OpenAI-compatible backend needs the openai package: pip install -r requirements.txt") from err
        if mode not in {"echo", "generate"}:
            raise ValueError(f"backend.mode={mode!r}: use echo (score the target) or generate (score the model's own response)")
        if not base_url:
            raise ValueError("backend.base_url is empty: give the endpoint's URL, e.g. http://127.0.0.1:8080/v1")
        if not model:
            raise ValueError("backend.model is empty: give the model name the endpoint serves")
        key = api_key or os.environ.get(api_key_env or "", "")
        if not key:
            raise BackendError(f"no API key for {base_url}: set the environment variable {api_key_env} or backend.api_key "
                               "(a local server accepts any value: backend.api_key=local)")
        self.base_url, self.model, self.mode = base_url.rstrip("/"), model, mode
        self.name = f"openai:{model}"  # what the cache keys on: the model, not where it is served
        self.max_response_tokens = int(max_response_tokens)
        self.concurrency = max(1, int(concurrency))
        self.counts = {"requests": 0, "http_attempts": 0, "http_errors": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.Lock()

        def on_response(response):
            with self._lock:
                self.counts["http_attempts"] += 1
                if response.status_code >= 400:
                    self.counts["http_errors"] += 1

        self._openai = openai
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=key, max_retries=int(max_retries), timeout=float(timeout),
            http_client=httpx.Client(event_hooks={"response": [on_response]}, timeout=float(timeout)),
        )
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="reward-api")
        if check:
            self.check()

    def check(self) -> None:
        """One request at start-up: the endpoint answers and returns the log-probabilities this mode needs."""
        self._one(Rendered("Hello", " world"))

    def _request(self, pair: Rendered):
        if self.mode == "echo":
            return self._create(prompt=pair.context + pair.continuation, max_tokens=1, echo=True, logprobs=1, temperature=0.0)
        return self._create(prompt=pair.context, max_tokens=self.max_response_tokens, logprobs=1, temperature=1.0)

    def complete(self, prompts: Sequence[str], max_tokens: int, stop: Sequence[str] = ("\n",)) -> list[str]:
        """Greedy completions (temperature 0) of each prompt, cut at the first ``stop`` string, at most
        ``max_tokens`` tokens; at most ``concurrency`` requests in flight, retried as every request is."""
        def one(prompt: str) -> str:
            response = self._create(prompt=prompt, max_tokens=int(max_tokens), temperature=0.0, stop=list(stop))
            with self._lock:
                self.counts["requests"] += 1
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self.counts["prompt_tokens"] += int(usage.prompt_tokens or 0)
                    self.counts["completion_tokens"] += int(usage.completion_tokens or 0)
            return response.choices[0].text or ""

        return list(self.pool.map(one, prompts))

    def _create(self, **kwargs):
        """One ``/v1/completions`` request; each way it can fail, after the client's retries, as a
        ``BackendError`` that names the fix."""
        o = self._openai
        try:
            return self.client.completions.create(model=self.model, **kwargs)
        except o.APIConnectionError as err:  # includes time-outs, after the client's retries
            kind = "timed out" if isinstance(err, o.APITimeoutError) else "not reachable"
            raise BackendError(f"OpenAI-compatible endpoint {kind} at {self.base_url} (after retries): start the server "
                               "(scripts/serve_llama_cpp.sh serves the packaged SmolLM2 locally) or fix backend.base_url") from err
        except o.AuthenticationError as err:
            raise BackendError(f"{self.base_url} refused the API key (401): check backend.api_key or the key's variable") from err
        except o.NotFoundError as err:
            raise BackendError(f"{self.base_url} has no model {self.model!r} or no /completions route (404): "
                               "check backend.model and backend.base_url (it usually ends in /v1)") from err
        except o.RateLimitError as err:
            raise BackendError(f"{self.base_url} kept answering 429 (rate limit) after retries: lower backend.concurrency "
                               "or raise backend.max_retries") from err
        except o.APIStatusError as err:
            raise BackendError(f"{self.base_url} answered HTTP {err.status_code} after retries: {str(err)[:200]}") from err

    def _one(self, pair: Rendered) -> tuple[float, str | None]:
        response = self._request(pair)
        with self._lock:
            self.counts["requests"] += 1
            usage = getattr(response, "usage", None)
            if usage is not None:
                self.counts["prompt_tokens"] += int(usage.prompt_tokens or 0)
                self.counts["completion_tokens"] += int(usage.completion_tokens or 0)
        choice = response.choices[0]
        lp = choice.logprobs
        if lp is None or not lp.token_logprobs or not lp.text_offset:
            raise BackendError(
                f"{self.base_url} model {self.model!r} returned no token log-probabilities"
                + (" for an echoed prompt" if self.mode == "echo" else "") + ": use a server that returns them "
                "(llama-cpp-python's server needs logits_all for echo), or backend.mode=generate")
        if self.mode == "generate":
            values = [v for v in lp.token_logprobs if v is not None]
            return float(sum(values)), choice.text
        sent = pair.context + pair.continuation
        generated = choice.text[len(sent):] if (choice.text or "").startswith(sent) else None
        values = continuation_logprobs(lp.tokens, lp.token_logprobs, pair.continuation, generated)
        if values is None:
            raise BackendError(f"{self.base_url}: the echoed tokens do not end with the scored continuation "
                               f"{pair.continuation[-40:]!r} (tokens ...{lp.tokens[-6:]}, generated {generated!r}): the "
                               "server does not echo the prompt's tokens, or splits them differently; use backend.mode=generate")
        if not values or any(v is None for v in values):
            raise BackendError(f"{self.base_url} returned no log-probability for the continuation's tokens: "
                               "the server does not echo prompt log-probabilities")
        return float(sum(values)), None

    def log_probs(self, pairs: Sequence[Rendered], responses: list | None = None) -> list[float]:
        results = list(self.pool.map(self._one, pairs))
        if responses is not None:
            responses.extend(r for _, r in results)
        return [v for v, _ in results]

    def metrics(self) -> dict[str, float]:
        with self._lock:
            out = {k: float(v) for k, v in self.counts.items()}
        out["retries"] = out["http_attempts"] - out["requests"]  # attempts the client repeated after a 429, 5xx or time-out
        return out


class CachedBackend:
    """A persistent cache in front of a backend: SQLite, keyed by the backend's name (``local:`` or
    ``openai:`` and the model's name), its mode and the exact context and continuation (so the
    template and the chat format are part of the key). The endpoint's URL is not: a server moved to
    another port keeps its entries; give a different model name, or another cache file, to a
    different model behind the same name.
    Misses are sent to the backend in one call and written (committed) before returning.

    ``mode: generate`` draws a new response each call, so its values are not cached (a cached draw
    would freeze one response per input); the cache then passes every call through."""

    def __init__(self, inner, path: str | Path):
        self.inner, self.path = inner, Path(path)
        self.name, self.mode = inner.name, inner.mode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS logprob (key TEXT PRIMARY KEY, value REAL NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS completion (key TEXT PRIMARY KEY, text TEXT NOT NULL)")
            self.db.commit()
        except sqlite3.DatabaseError as err:
            raise BackendError(f"reward cache {self.path} is not a usable SQLite file ({err}): delete it or set "
                               "backend.cache=null") from err
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def key(self, pair: Rendered) -> str:
        return hashlib.sha256(json.dumps([self.name, self.mode, pair.context, pair.continuation]).encode()).hexdigest()

    def log_probs(self, pairs: Sequence[Rendered], responses: list | None = None) -> list[float]:
        if self.mode == "generate":
            self.misses += len(pairs)
            return self.inner.log_probs(pairs, responses)
        keys = [self.key(p) for p in pairs]
        values = self._cached("logprob", "value", keys, pairs, self.inner.log_probs)
        if responses is not None:
            responses.extend([None] * len(pairs))
        return values

    def complete(self, prompts: Sequence[str], max_tokens: int, stop: Sequence[str] = ("\n",)) -> list[str]:
        """Greedy completions, cached: a greedy completion is a function of (model, prompt, limits)."""
        keys = [hashlib.sha256(json.dumps([self.name, "greedy", int(max_tokens), list(stop), p]).encode()).hexdigest()
                for p in prompts]
        return self._cached("completion", "text", keys, prompts,
                            lambda todo: self.inner.complete(todo, max_tokens, stop))

    def _cached(self, table: str, column: str, keys: list[str], items: Sequence, compute) -> list:
        """Each key's value from ``table``; the missing ones computed by ``compute`` (a list of items, once
        per distinct key, in one call), written and committed before returning."""
        found: dict[str, object] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = self.db.execute(f"SELECT key, {column} FROM {table} WHERE key IN ({','.join('?' * len(part))})", part)
                found.update(rows.fetchall())
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        self.misses += len(todo)  # sent to the backend; a repeat within the call is a hit
        self.hits += len(keys) - len(todo)
        if todo:
            first: dict[str, object] = {}
            for k, item in zip(keys, items):
                first.setdefault(k, item)
            values = compute([first[k] for k in todo])
            with self._lock:
                self.db.executemany(f"INSERT OR REPLACE INTO {table} (key, {column}) VALUES (?, ?)", list(zip(todo, values)))
                self.db.commit()
            found.update(zip(todo, values))
        return [found[k] for k in keys]

    def metrics(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {**self.inner.metrics(), "cache_hits": float(self.hits), "cache_misses": float(self.misses),
                "cache_hit_rate": self.hits / total if total else 0.0}
