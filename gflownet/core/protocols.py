"""The two seams between the core and a task, and the one object a step passes around.

* ``Task``: what a job is about. It turns a data record into the sampler's prompt, names the
  text that ends a sample and the action-space limits, lists the record fields its reward needs
  (context columns), and computes its evaluation metrics.
* ``Reward``: called on rank 0 only, with the prompts, the token trajectories, their lengths,
  which states to score and the context columns as keyword arguments; returns *unscaled*
  per-state log-rewards and named components (``RewardOutput``). Rewards are built by a factory
  (``RewardFactory``) that only rank 0 calls, so reward models never load on other ranks.
* ``Rollout``: trajectories with their prompts, rewards and components, fresh or replayed.

Shapes follow ``gflownet.core.losses``: ``sample_ids`` (B, T+1) holds the ``L_b`` sampled
tokens, then the termination token, then padding; per-state tensors are (B, T+1).
See ``docs/design.md`` for the data flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


def record_field(record: Any, name: str) -> Any:
    """A field of a data record, whether the record is a mapping or an object with attributes."""
    if isinstance(record, dict):
        if name not in record:
            raise KeyError(f"record has no field {name!r} (fields: {sorted(record)})")
        return record[name]
    if not hasattr(record, name):
        raise KeyError(f"{type(record).__name__} record has no field {name!r}")
    return getattr(record, name)


@dataclass
class ActionLimits:
    """What the task says about its action space; the core turns it into an ``ActionSpace``."""

    termination_text: str  # a sample ends with the single token that is exactly this text ("?", ".")
    min_len: int  # tokens before the termination token
    max_len: int
    forbidden: Sequence[str] = ("eos", "newline", "termination")  # token classes never sampled (core.sampling)


@runtime_checkable
class Task(Protocol):
    name: str
    limits: ActionLimits
    context_fields: tuple[str, ...]  # record fields the reward receives as keyword arguments

    def prompt(self, record: Any, tokenizer) -> str:
        """The sampler's prompt for one record (the buffer and log Z are keyed by it)."""

    def describe(self, record: Any) -> str:
        """A short label of the record for tables and logs."""

    def metrics(self, rollout: "Rollout") -> dict[str, float]:
        """Evaluation metrics of rewarded samples (validation logs them as ``val/<name>``)."""

    # Optional hooks: see ``TASK_HOOKS`` (their defaults) and ``task_hook``.


# Optional ``Task`` hooks and their defaults (what the core and the scripts use when a task lacks one):
TASK_HOOKS: dict[str, Any] = {
    # a JSON-able dict of what else shapes prompts or actions, signed into the replay buffer's entries
    "settings": None,
    # forbidden_ids(record, tokenizer) -> Iterable[int]: tokens the sampler may not use for this record
    # (on top of ``limits.forbidden``); e.g. the contradiction task's object mask
    "forbidden_ids": None,
    # exact_metrics(module) -> dict: exact distances to the target, logged at validation (the toy)
    "exact_metrics": None,
    # baseline_prompt(record, tokenizer) -> str: scripts/evaluate.py's plain_prompting baseline asks this
    "baseline_prompt": None,
    # evaluation_metrics(module, record, samples, embeddings) -> dict: a record's extra evaluation
    # figures (the contradiction task's verified leaks)
    "evaluation_metrics": None,
    # scripts/evaluate.py's default variants (None: trained, untrained and the decoding baselines)
    "evaluation_variants": None,
    # (name, component, threshold): a sample whose reward component exceeds the threshold is a hit;
    # scripts/evaluate.py reports <name>_rate and distinct_<name>s (contradiction: log C > log 0.5)
    "hit": None,
    # whether the reward has an answerer that scripts/evaluate.py --edit-methods can edit
    "answerer_edits": False,
    # records_from(path) -> list: the task's records read from a file (scripts/evaluate.py --data)
    "records_from": None,
    # probes_file(path) -> bool: whether a file holds the benchmark's own probes of the records
    # (scripts/evaluate.py: a --data file that does is used as --probes too)
    "probes_file": None,
    # benchmark_probes(path, records) -> list[list[str]]: each record's probe prompts, asked as
    # questions (scripts/evaluate.py's benchmark_probes variant; contradiction: CounterFact paraphrases)
    "benchmark_probes": None,
    # edit_quality(module, method, path, records) -> dict | None: the edit method's own scores on the
    # evaluated edits, beside every leak figure (contradiction: efficacy, paraphrase, neighbourhood)
    "edit_quality": None,
    # counted_edits(module, records) -> list[bool] | None: per record, whether a leak found on it would
    # count (contradiction: its edit took under the reward's edited answerer and can be read);
    # scripts/evaluate.py --took-only samples only those
    "counted_edits": None,
}


def task_hook(task: Any, name: str) -> Any:
    """The task's optional hook ``name``, or its default (``TASK_HOOKS``)."""
    if name not in TASK_HOOKS:
        raise KeyError(f"{name!r} is not an optional task hook (known: {', '.join(TASK_HOOKS)})")
    return getattr(task, name, TASK_HOOKS[name])


@dataclass
class RewardOutput:
    """What a reward returns for B trajectories. ``log_r`` is unscaled (the core divides by the
    reward temperature); entries at unscored states are ignored. ``components`` are per-trajectory
    terminal values (NaN where absent), ``texts`` per-trajectory strings (e.g. the answer)."""

    log_r: Tensor  # (B, T+1)
    components: dict[str, Tensor] = field(default_factory=dict)  # name -> (B,)
    texts: dict[str, list[str]] = field(default_factory=dict)  # name -> B strings
    # optional: name -> (B, T+1) values at every scored state (NaN elsewhere), e.g. the contradiction
    # term's log C of each prefix; written by gfn.sample_log_states=all (reward-model training data)
    per_state: dict[str, Tensor] = field(default_factory=dict)


class Reward(Protocol):
    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int,
                 **context: Sequence[Any]) -> RewardOutput: ...

    # Optional: ``metrics() -> dict[str, float]``: counters of the reward itself (API requests, tokens,
    # cache hits), logged by rank 0 after every step as ``reward/<name>``.
    # Optional: ``phase(step) -> str`` names the reward's phase when it changes with the step (the
    # contradiction reward's hybrid phase). The replay buffer signs entries with it, so entries
    # scored in one phase are never replayed in another.


@dataclass
class RewardEnv:
    """What a reward factory may use: the sampler (its base weights with adapters disabled can be
    the reward LM) and its model name, its tokenizer, the device, where packaged models live, and
    the action limits."""

    sampler: Any
    tokenizer: Any
    device: torch.device
    models_dir: str
    limits: ActionLimits
    termination_id: int
    sampler_name: str = ""  # the sampler's model (name or path): a reward that needs its own copy loads this


RewardFactory = Callable[[RewardEnv], Reward]


@dataclass
class Rollout:
    """B trajectories (n per record, in record order) with their rewards.

    ``log_r`` is unscaled and meaningful where ``scored``; ``components`` and ``texts`` come from
    the reward (for replayed trajectories: what was stored with them)."""

    prompts: list[str]  # one per trajectory
    sample_ids: Tensor  # (B, T+1) long
    lengths: Tensor  # (B,) long
    log_r: Tensor  # (B, T+1) unscaled
    scored: Tensor  # (B, T+1) bool
    samples: list[str]  # decoded samples, termination text included
    components: dict[str, Tensor] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    source: str = "fresh"  # fresh | replay
    # the semantic diversity of every rank's fresh samples of this step's exchange (per prompt,
    # averaged; computed on rank 0 and sent with the rewards), where the module has an embedder
    pooled_diversity: float | None = None
    # fresh rollouts: the prompts and context rank 0 computed these rewards for (step traces)
    reward_for: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.lengths.numel()

    def select(self, rows: Sequence[int]) -> "Rollout":
        """The trajectories ``rows`` (in that order), with their rewards, components and texts."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        pick = lambda t: t[index.to(t.device)]  # noqa: E731
        return Rollout([self.prompts[i] for i in rows], pick(self.sample_ids), pick(self.lengths), pick(self.log_r),
                       pick(self.scored), [self.samples[i] for i in rows],
                       {k: pick(v) for k, v in self.components.items()},
                       {k: [v[i] for i in rows] for k, v in self.texts.items()}, self.source, self.pooled_diversity,
                       self.reward_for)

    @property
    def terminal_log_r(self) -> Tensor:
        """(B,) unscaled log-reward of each complete sample."""
        return self.log_r.gather(1, self.lengths.to(self.log_r.device)[:, None]).squeeze(1)
