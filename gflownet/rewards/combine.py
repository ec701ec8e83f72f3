"""Rewards compose as a weighted sum of their unscaled per-state log-rewards.

    log R = sum_i w_i log R_i

Components and texts of every term are kept (names must not clash). Build one from config with
``weighted_sum`` (each term a reward factory config and a weight), or in code with ``WeightedSum``.
"""

from __future__ import annotations

from typing import Any, Mapping

import hydra

from gflownet.core.protocols import Reward, RewardEnv, RewardOutput


class WeightedSum:
    def __init__(self, terms: Mapping[str, tuple[float, Reward]]):
        if not terms:
            raise ValueError("a weighted sum of rewards needs at least one term")
        self.terms = dict(terms)

    def __call__(self, **batch: Any) -> RewardOutput:
        total, components, texts = None, {}, {}
        for name, (weight, reward) in self.terms.items():
            out = reward(**batch)
            part = float(weight) * out.log_r
            total = part if total is None else total + part
            for key in set(out.components) | set(out.texts):
                if key in components or key in texts:
                    raise ValueError(f"reward term {name!r} returns component {key!r}, which another term also returns")
            components.update(out.components)
            texts.update(out.texts)
        return RewardOutput(log_r=total, components=components, texts=texts)

    def phase(self, step: int) -> str:
        """The phases of the terms that have one (see ``Reward``), e.g. ``contradiction:hybrid``."""
        phases = [(name, reward.phase(step)) for name, (_, reward) in self.terms.items() if hasattr(reward, "phase")]
        return ",".join(f"{name}:{p}" for name, p in phases if p)


def weighted_sum(env: RewardEnv, terms: Mapping[str, Mapping[str, Any]]) -> WeightedSum:
    """Factory from config: ``terms: {name: {weight: w, reward: <reward factory config>}}``."""
    built = {}
    for name, term in terms.items():
        if "reward" not in term:
            raise ValueError(f"reward term {name!r} needs a 'reward' factory config and a 'weight'")
        # a term's reward config is a factory config like configs/reward/*.yaml (with or without _partial_): call it
        built[name] = (float(term.get("weight", 1.0)), hydra.utils.instantiate(term["reward"], env=env, _partial_=False))
    return WeightedSum(built)

