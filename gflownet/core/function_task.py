"""A task from two functions: a prompt function and a reward function over decoded texts.

    def prompt(record) -> str: ...                       # the sampler's prompt for one data record
    def reward(texts, **fields) -> list[float]: ...      # one log-reward per complete sample

As with TRL's reward functions, the reward receives the decoded samples (each with its termination
text) and, as keyword arguments, the record fields named in ``context_fields`` (one value per
sample) and ``prompts`` if it asks for them; it returns **unscaled log-rewards** (finite floats).
``FunctionTask`` and ``function_reward`` adapt the two functions to the core's ``Task`` and
``Reward`` protocols, and ``FunctionRecords`` reads the records (a JSON-lines file of objects, or
a list in the config). A reward function scores complete samples only, so train it with
Trajectory Balance (``loss=tb``); SubTB needs a reward for each scored prefix, which it refuses
unless ``prefixes: true`` asks to call the function on prefix texts as well. ``reward=function_lm``
adds the shared base-LM likelihood term (``gflownet.rewards.combine``), the prior that keeps samples
fluent where the function alone would reward any text.

    python train.py task=function_task                      # the example: examples/topic_questions.py
    python train.py task=function_task task.prompt=mypkg.mytask.prompt reward=function reward.fn=mypkg.mytask.reward \\
        data.path=records.jsonl "task.context_fields=[topic]"

Functions are given as dotted paths (``package.module.function``) in configs, or as callables in code.
"""

from __future__ import annotations

import importlib
import inspect
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gflownet.core.data import RecordDataModule
from gflownet.core.jsonl import read_jsonl
from gflownet.core.protocols import ActionLimits, RewardEnv, RewardOutput, Rollout, record_field
from gflownet.core.sampling import sample_texts


def resolve_function(ref: str | Callable, what: str) -> Callable:
    """A callable, or the function a dotted path ``package.module.name`` names."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or "." not in ref:
        raise ValueError(f"{what}: give a dotted path such as mypkg.mytask.function (got {ref!r})")
    module_name, _, name = ref.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what}={ref}: cannot import {module_name} ({err}); is its package on PYTHONPATH?") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{what}={ref}: {module_name} has no function {name!r}")
    return fn


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class FunctionTask:
    """A ``Task`` from a prompt function. ``chat``: put the prompt as the user's turn of the
    tokenizer's chat template (the sampler then answers as the assistant)."""

    def __init__(self, prompt: str | Callable, name: str = "function", termination_text: str = "?", min_len: int = 1,
                 max_len: int = 20, context_fields: Sequence[str] = (), chat: bool = False,
                 forbidden_tokens: Sequence[str] = ("eos", "newline", "termination"), describe_field: str | None = None):
        self.prompt_fn = resolve_function(prompt, "task.prompt")
        self.name = str(name)
        if int(min_len) < 0 or int(max_len) < max(int(min_len), 1):
            raise ValueError(f"task.min_len={min_len}, task.max_len={max_len}: need 0 <= min_len <= max_len and max_len >= 1")
        self.limits = ActionLimits(str(termination_text), int(min_len), int(max_len), tuple(forbidden_tokens))
        self.context_fields = tuple(context_fields)
        self.chat, self.describe_field = bool(chat), describe_field
        self.settings = {"prompt": _name(self.prompt_fn), "chat": self.chat}  # signed into buffer entries

    def prompt(self, record: Any, tokenizer) -> str:
        text = self.prompt_fn(record)
        if not isinstance(text, str) or not text:
            raise ValueError(f"task.prompt {self.settings['prompt']} returned {type(text).__name__} {text!r} for a "
                             "record: it must return a non-empty string")
        if not self.chat:
            return text
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("task.chat=true but the sampler's tokenizer has no chat template: set task.chat=false")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    def describe(self, record: Any) -> str:
        text = str(record_field(record, self.describe_field)) if self.describe_field else self.prompt_fn(record)
        return text if len(text) <= 60 else text[:57] + "..."

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        return {}


class FunctionReward:
    """The ``Reward`` of a function over decoded texts (see the module docstring)."""

    def __init__(self, fn: Callable, tokenizer, termination_text: str, prefixes: bool = False):
        self.fn, self.tokenizer, self.termination_text, self.prefixes = fn, tokenizer, termination_text, prefixes
        params = inspect.signature(fn).parameters.values()
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.accepts = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                              inspect.Parameter.POSITIONAL_OR_KEYWORD)}

    def _call(self, texts: list[str], prompts: Sequence[str], context: dict[str, Sequence[Any]]) -> list[float]:
        kwargs = {"prompts": list(prompts), **{k: list(v) for k, v in context.items()}}
        if not self.takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
        values = self.fn(texts, **kwargs)
        if isinstance(values, Tensor):
            values = values.detach().cpu().tolist()
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"reward function {_name(self.fn)} must return one number per text, got {values!r:.200}") from None
        if len(values) != len(texts):
            raise ValueError(f"reward function {_name(self.fn)} returned {len(values)} values for {len(texts)} texts")
        bad = [t for t, v in zip(texts, values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"reward function {_name(self.fn)} returned a non-finite log-reward for {bad[0]!r}: return "
                             "finite log-rewards (a large negative number for 'never')")
        return values

    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 **context: Sequence[Any]) -> RewardOutput:
        B, T1 = scored.shape
        terminal = torch.zeros_like(scored)
        terminal[torch.arange(B), lengths] = True
        if not self.prefixes and bool((scored & ~terminal).any()):
            raise ValueError(f"reward function {_name(self.fn)} scores complete samples only, but the loss scores "
                             "prefixes: use loss=tb, or reward.prefixes=true to call it on each prefix's text too")
        log_r = torch.zeros(B, T1)
        texts = sample_texts(self.tokenizer, sample_ids, lengths, self.termination_text)
        log_r[torch.arange(B), lengths] = torch.tensor(self._call(texts, prompts, context))
        if self.prefixes:
            rows = [(b, t) for b, t in (scored & ~terminal).nonzero().tolist()]
            if rows:
                part = [self.tokenizer.decode(sample_ids[b, :t].tolist(), skip_special_tokens=True).strip() for b, t in rows]
                values = self._call(part, [prompts[b] for b, _ in rows],
                                    {k: [v[b] for b, _ in rows] for k, v in context.items()})
                for (b, t), v in zip(rows, values):
                    log_r[b, t] = v
        return RewardOutput(log_r=log_r, components={"reward_fn": log_r[torch.arange(B), lengths].clone()})


def function_reward(env: RewardEnv, fn: str | Callable, prefixes: bool = False) -> FunctionReward:
    """Factory (``reward: {_target_: gflownet.core.function_task.function_reward, _partial_: true, fn: ...}``)."""
    termination = env.limits.termination_text
    return FunctionReward(resolve_function(fn, "reward.fn"), env.tokenizer, termination, bool(prefixes))


class FunctionRecords(RecordDataModule):
    """Records for a function task: the objects of a JSON-lines file (``path``) or a list (``records``),
    shuffled with ``seed``; the last ``val_size`` are held out. ``steps_per_epoch`` repeats the
    training records so that an epoch is at least that many batches (one record can make a run)."""

    def __init__(self, path: str | None = None, records: Sequence[dict] | None = None, val_size: int = 0, seed: int = 0,
                 steps_per_epoch: int = 0, batch_size: int = 1, num_workers: int = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if (path is None) == (records is None):
            raise ValueError("function task data: give data.path (a .jsonl file of objects) or data.records, not both")
        self.path, self.records, self.val_size, self.seed = path, records, int(val_size), int(seed)
        self.steps_per_epoch = int(steps_per_epoch)

    def load(self) -> tuple[list, list]:
        if self.path is not None:
            rows = []
            for lineno, row in read_jsonl(self.path):
                if not isinstance(row, dict):
                    raise ValueError(f"{self.path}:{lineno}: each line must be a JSON object (a record)")
                rows.append(row)
        else:
            rows = [dict(r) for r in self.records]
        if len(rows) <= self.val_size:
            raise ValueError(f"{len(rows)} records and data.val_size={self.val_size}: keep at least one for training")
        random.Random(self.seed).shuffle(rows)
        train, val = (rows[: len(rows) - self.val_size], rows[len(rows) - self.val_size:]) if self.val_size else (rows, [])
        if self.steps_per_epoch:
            need = self.steps_per_epoch * self.batch_size
            train = (train * (need // len(train) + 1))[: max(need, len(train))]
        return train, val
