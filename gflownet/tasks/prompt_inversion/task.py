"""The prompt-inversion task: for a target text y, sample inputs x with probability proportional
to ``p_prior(x) p(y | x)^beta`` (reward.py): which inputs make a model produce y.

The sampler's prompt carries the target (``sampler_prompt``), so one sampler serves a file of
targets and log Z is learned per target. A sample is ``min_len..max_len`` tokens ended by the
termination text (a newline by default: an input is one line).

Evaluation (rank 0, at each validation): for the first ``eval_targets`` targets,

* where the action space can be enumerated (at most ``max_enumerate`` inputs: the known-target
  setting, experiment=inversion_toy), the exact KL(sampler || target), L1 and log Z error;
* otherwise ``eval_samples`` inputs drawn at temperature 1 give the importance-sampled estimates
  of log Z and KL (``gflownet.core.exact``) beside the learned log Z.

``scripts/evaluate.py`` lists the best inputs found per target.
"""

from __future__ import annotations

import logging

import torch

from gflownet.core import exact
from gflownet.core.modeling import register_packaged
from gflownet.core.protocols import ActionLimits, Rollout
from gflownet.tasks.prompt_inversion.data import TargetRecord
from gflownet.tasks.toy.problem import build_toy_llama

log = logging.getLogger(__name__)


def build_toy_scorer(dest) -> None:
    """The known-target setting's reward model: a toy Llama (another seed) with strong preferences."""
    build_toy_llama(dest, seed=1, init_std=0.5)


# the known-target setting (experiment=inversion_toy): the toy Llama as sampler and prior, a sharper one as p(y | x)
register_packaged("toy-llama", build_toy_llama)
register_packaged("toy-llama-scorer", build_toy_scorer)


class PromptInversionTask:
    name = "prompt_inversion"
    context_fields = ("target",)

    def __init__(self, min_len: int = 3, max_len: int = 20, termination_text: str = "\n",
                 forbidden_tokens=("eos", "newline", "termination"), prompt_style: str = "chat",
                 sampler_prompt: str = "Write a message to an AI assistant to which it would reply: {target}",
                 eval_targets: int = 2, eval_samples: int = 32, max_enumerate: int = 20000):
        if prompt_style not in {"plain", "chat"}:
            raise ValueError(f"unknown task.prompt_style {prompt_style!r}: use plain or chat")
        try:
            sampler_prompt.format(target="y")
        except (KeyError, IndexError) as err:
            raise ValueError(f"task.sampler_prompt {sampler_prompt!r} may only use the field {{target}}") from err
        self.limits = ActionLimits(termination_text, int(min_len), int(max_len), tuple(forbidden_tokens))
        self.prompt_style, self.sampler_prompt = prompt_style, sampler_prompt
        self.eval_targets, self.eval_samples = int(eval_targets), int(eval_samples)
        self.max_enumerate = int(max_enumerate)
        self.settings = {"sampler_prompt": sampler_prompt, "prompt_style": prompt_style}

    def prompt(self, record: TargetRecord, tokenizer) -> str:
        text = self.sampler_prompt.format(target=record.target)
        if self.prompt_style == "plain":
            return text
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("task.prompt_style=chat but the sampler's tokenizer has no chat template; use task.prompt_style=plain")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)

    def describe(self, record: TargetRecord) -> str:
        return record.target if len(record.target) <= 60 else record.target[:57] + "..."

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        """Mean log p_prior(x) and log p(y | x) of the samples, and the best log R per target (averaged)."""
        out = {}
        for name in ("log_prior", "log_p_target"):
            if name in rollout.components:
                out[f"mean_{name}"] = float(rollout.components[name].float().nanmean())
        terminal = rollout.terminal_log_r.float().cpu()
        best: dict[str, float] = {}
        for p, v in zip(rollout.prompts, terminal.tolist()):
            best[p] = max(best.get(p, float("-inf")), v)
        if best:
            out["best_log_reward"] = sum(best.values()) / len(best)
        return out

    @torch.no_grad()
    def exact_metrics(self, module) -> dict[str, float]:
        """Distances to the target for the first ``eval_targets`` validation targets, averaged: exact
        where the inputs can be enumerated, importance-sampled otherwise (module docstring)."""
        dm = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
        records = (dm.val_records if dm is not None else [])[: self.eval_targets]
        rows: list[dict[str, float]] = []
        for record in records:
            found = exact.exact_metrics(module, record, self.max_enumerate)
            ro = module.rollout([record], self.eval_samples, collective=False)
            log_pf = module.sequence_log_prob(ro.prompts, ro.sample_ids, ro.lengths).cpu()
            est = exact.importance_metrics(log_pf, ro.terminal_log_r.cpu(), module.reward_temperature())
            head = exact.learned_log_z(module, ro.prompts[0])
            if head is not None:
                est["log_z_learned"] = head
            rows.append({**est, **(found or {})})
        keys = set.intersection(*(set(r) for r in rows)) if rows else set()
        return {k: sum(r[k] for r in rows) / len(rows) for k in sorted(keys)}
