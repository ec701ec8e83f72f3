"""What a training step logs: the loss, the means of log R, length and each reward component over
every rank's fresh and replayed trajectories apart, the schedules, the buffer's counters, and a
table of a few samples (the probe table). ``log`` returns the step's pooled per-source metrics
(rank 0; empty elsewhere) for the step's outputs, where ``ProgressLog`` reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from gflownet.core import distributed
from gflownet.core.protocols import Rollout


class StepMetrics:
    def __init__(self, probe_every: int):
        self.probe_every = int(probe_every)
        self.probe_rows: list[list[Any]] = []

    def log(self, module, batch: list, n: int, rollout: Rollout, loss, temp: float, lr: float) -> dict[str, float]:
        bs = len(rollout)
        module.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        by_source = self.by_source(module, rollout, temp)
        module.log("train/skipped_nonfinite", float(module.skipped_nonfinite), batch_size=bs, sync_dist=True, reduce_fx="max")
        module.log("scheduled/reward_temperature", temp, batch_size=bs)
        module.log("scheduled/learning_rate", lr, batch_size=bs)
        size = module.replay.size(rollout.prompts, module.signature)
        if size is not None:
            module.log("buffer/size", size, batch_size=bs)
        module.log("buffer/hit_rate", module.replay.steps / module.train_steps, batch_size=bs, sync_dist=True)
        module.log("buffer/unavailable", float(module.replay.unavailable), batch_size=bs, sync_dist=True, reduce_fx="max")
        if module.global_rank == 0 and self.probe_every > 0 and module.global_step % self.probe_every == 0:
            self.probes(module, batch, n, rollout)
        return by_source

    @staticmethod
    def by_source(module, rollout: Rollout, temp: float) -> dict[str, float]:
        """``train/fresh/*`` and ``train/replay/*``: the means of log R, length and each reward
        component over every rank's fresh (sampled this step) and replayed trajectories, apart.

        A replayed trajectory's reward is that of a stored sample the buffer keeps because it
        scored well, so a mixed mean would say the sampler got better when replay got more
        frequent. Each rank sends its sums and counts to rank 0 (a gather every step, on every
        rank, whatever its source: a key logged with sync_dist on some ranks only would hang),
        which logs the pooled means of the sources that occurred."""
        terminal = rollout.terminal_log_r.detach().double().cpu()
        sums = {"avg_log_reward_unscaled": (float(terminal.sum()), terminal.numel()),
                "avg_log_reward_scaled": (float((terminal / temp).sum()), terminal.numel()),
                "avg_length": (float(rollout.lengths.double().sum()), rollout.lengths.numel())}
        for name, values in rollout.components.items():
            v = values.detach().double().cpu()
            ok = torch.isfinite(v)  # NaN where a component was not computed (a replayed entry that lacks it)
            sums[f"avg_{name}"] = (float(v[ok].sum()), int(ok.sum()))
        gathered = distributed.gather_to_rank0({rollout.source: sums})
        if gathered is None:
            return {}
        pooled: dict[str, dict[str, list[float]]] = {}
        for per_rank in gathered:
            for source, metrics in per_rank.items():
                for name, (total, count) in metrics.items():
                    acc = pooled.setdefault(source, {}).setdefault(name, [0.0, 0])
                    acc[0] += total
                    acc[1] += count
        out = {f"train/{source}/{name}": total / count for source, metrics in pooled.items()
               for name, (total, count) in metrics.items() if count}
        if rollout.pooled_diversity is not None:  # computed on rank 0 over this step's fresh samples of every rank
            out["train/fresh/semantic_diversity"] = rollout.pooled_diversity
        reward_metrics = getattr(module.reward, "metrics", None)  # counters of a reward (API requests, cache hits)
        if callable(reward_metrics):
            out.update({f"reward/{k}": float(v) for k, v in reward_metrics().items()})
        # Straight to the loggers: Lightning re-sends the last value of a key that was not logged at a
        # step, so a replay-only step would show the previous fresh step's numbers as its own.
        for lg in module.loggers:
            lg.log_metrics(out, step=module.global_step)
        return out

    def probes(self, module, batch: list, n: int, rollout: Rollout) -> None:
        """The probe table: three samples of this step with their texts, log R and components (last 60 rows)."""
        terminal = rollout.terminal_log_r
        text_names, component_names = sorted(rollout.texts), sorted(rollout.components)
        for i in range(min(3, len(rollout))):
            extras = [rollout.texts[k][i] for k in text_names]
            comps = [float(rollout.components[k][i]) for k in component_names]
            self.probe_rows.append([module.global_step, module.task.describe(batch[i // n]), rollout.samples[i], *extras,
                                    float(terminal[i]), *comps])
        columns = ["step", "record", "sample", *text_names, "log_reward_unscaled", *component_names]
        rows = [r for r in self.probe_rows[-60:] if len(r) == len(columns)]
        for lg in module.loggers:
            if hasattr(lg, "log_table"):
                lg.log_table(key="generation_probes", columns=columns, data=rows)


class ValidationMeans:
    """Validation means over the distinct validation records of every rank: each batch adds its
    metrics weighted by its real trajectories (``Padding`` records weigh nothing), and ``means`` sums
    the weighted values and the weights over ranks, so a mean is exact whatever the number of ranks
    (Lightning's ``sync_dist`` averages the ranks' means unweighted). Collective: ``means``."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, values: dict[str, Any], weight: int) -> None:
        for name, value in values.items():
            value = float(value)
            self.sums[name] = self.sums.get(name, 0.0) + (value * weight if weight else 0.0)
            self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self, device=None) -> dict[str, float]:
        names = sorted(self.sums)
        totals = distributed.sum_over_ranks([self.sums[k] for k in names] + [self.weights[k] for k in names], device=device)
        return {k: totals[i] / totals[len(names) + i] for i, k in enumerate(names) if totals[len(names) + i] > 0}

