"""Rewards compose as a weighted sum of their unscaled per-state log-rewards.

    log R = sum_i w_i log R_i

Components and texts of every term are kept (names must not clash). Build one from config with
``weighted_sum`` (each term a reward factory config and a weight), or in code with ``WeightedSum``.
"""

from __future__ import annotations

from typing import Any, Mapping

import hydra
import torch

from gflownet.core.protocols import Reward, RewardEnv, RewardOutput


class WeightedSum:
    def __init__(self, terms: Mapping[str, tuple[float, Reward]]):
        if not terms:
            raise ValueError("a weighted sum of rewards needs at least one term")
        self.terms = dict(terms)

    def __call__(self, **batch: Any) -> RewardOutput:
        total, components, texts, per_state = None, {}, {}, {}
        for name, (weight, reward) in self.terms.items():
            out = reward(**batch)
            part = float(weight) * out.log_r
            total = part if total is None else total + part
            for key in set(out.components) | set(out.texts):
                if key in components or key in texts:
                    raise ValueError(f"reward term {name!r} returns component {key!r}, which another term also returns")
            components.update(out.components)
            texts.update(out.texts)
            per_state.update(out.per_state)
        return RewardOutput(log_r=total, components=components, texts=texts, per_state=per_state)

    def phase(self, step: int) -> str:
        """The phases of the terms that have one (see ``Reward``), e.g. ``contradiction:hybrid``."""
        return _phases({name: reward for name, (_, reward) in self.terms.items()}, step)

    def metrics(self) -> dict[str, float]:
        """The terms' own counters (``Reward.metrics``), prefixed with the term's name."""
        return _metrics({name: reward for name, (_, reward) in self.terms.items()})


def _phases(rewards: Mapping[str, Reward], step: int) -> str:
    """``name:phase`` of each named reward that has a phase now, comma-separated."""
    phases = [(name, r.phase(step)) for name, r in rewards.items() if hasattr(r, "phase")]
    return ",".join(f"{name}:{p}" for name, p in phases if p)


def _metrics(rewards: Mapping[str, Reward]) -> dict[str, float]:
    """Each named reward's ``metrics()``, keys prefixed with its name."""
    return {f"{name}_{k}": v for name, r in rewards.items() if hasattr(r, "metrics") for k, v in r.metrics().items()}


def weighted_sum(env: RewardEnv, terms: Mapping[str, Mapping[str, Any]]) -> WeightedSum:
    """Factory from config: ``terms: {name: {weight: w, reward: <reward factory config>}}``."""
    built = {}
    for name, term in terms.items():
        if "reward" not in term:
            raise ValueError(f"reward term {name!r} needs a 'reward' factory config and a 'weight'")
        # a term's reward config is a factory config like configs/reward/*.yaml (with or without _partial_): call it
        built[name] = (float(term.get("weight", 1.0)), hydra.utils.instantiate(term["reward"], env=env, _partial_=False))
    return WeightedSum(built)


class ByState:
    """Complete samples scored by one reward, the other scored states (the prefixes SubTB scores) by another.

        log R(s_t) = terminal(s_t)      if t is the trajectory's length
                     intermediate(s_t)  otherwise

    The point: an expensive reward (answerer plus judge) is paid only for complete samples while a cheap
    one (a learned reward model, ``rewards.learned``) fills in the prefixes. Both are called with the
    same batch and their own ``scored`` mask; components, texts and per-state values are the terminal
    reward's (its per-state values exist at terminal states only). This changes the target wherever
    the intermediate reward differs from the terminal one on the same state: SubTB's constraints then
    mix two rewards.
    """

    def __init__(self, terminal: Reward, intermediate: Reward):
        self.terminal, self.intermediate = terminal, intermediate

    def __call__(self, *, scored, lengths, **batch: Any) -> RewardOutput:
        scored, lengths = scored.cpu(), lengths.cpu()
        B = scored.size(0)
        at_end = torch.zeros_like(scored)
        at_end[torch.arange(B), lengths] = True
        terminal_mask, prefix_mask = scored & at_end, scored & ~at_end
        out = self.terminal(scored=terminal_mask, lengths=lengths, **batch)
        log_r = torch.where(terminal_mask, out.log_r.cpu().float(), torch.zeros(scored.shape))
        if prefix_mask.any():
            prefix = self.intermediate(scored=prefix_mask, lengths=lengths, **batch)
            log_r = torch.where(prefix_mask, prefix.log_r.cpu().float(), log_r)
        return RewardOutput(log_r=log_r, components=out.components, texts=out.texts, per_state=out.per_state)

    def phase(self, step: int) -> str:
        return _phases({"terminal": self.terminal, "intermediate": self.intermediate}, step)

    def metrics(self) -> dict[str, float]:
        return _metrics({"terminal": self.terminal, "intermediate": self.intermediate})


def by_state(env: RewardEnv, terminal: Mapping[str, Any], intermediate: Mapping[str, Any],
             checkpoint: str | None = None) -> ByState:
    """Factory from config: ``terminal`` and ``intermediate`` are reward factory configs (configs/reward/*.yaml).
    ``checkpoint`` is not used here: configs put a learned model's path there for their terms to interpolate
    (configs/reward/contradiction_distilled.yaml)."""
    return ByState(hydra.utils.instantiate(terminal, env=env, _partial_=False),
                   hydra.utils.instantiate(intermediate, env=env, _partial_=False))
