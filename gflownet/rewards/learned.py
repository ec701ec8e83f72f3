"""A trained reward model as a GFlowNet reward (``reward=learned reward.checkpoint=...``).

    log R(s_t) = scale * score(template.format(sample=text of s_t, prompt=..., <context fields>))

for every scored state ``s_t``, where the text of a state is its ``t`` tokens decoded and stripped
with the termination text appended (as the core writes samples, ``core.sampling.sample_texts``).
``score`` is the model's output in its objective's units (``reward_models.model``): a regression
model's prediction (e.g. log C), a preference model's score, or a classifier's log-probability of
``positive_class``. Identical texts in a call are scored once. Compose it with other rewards by
``reward=weighted_sum`` or use it for some states only with ``rewards.combine.by_state``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from gflownet.core.protocols import RewardEnv, RewardOutput
from gflownet.core.sampling import state_text
from gflownet.reward_models.data import StrictFields
from gflownet.reward_models.model import RewardModel, load_reward_model


class LearnedReward:
    def __init__(self, model: RewardModel, tokenizer, termination_text: str, template: str = "{sample}",
                 scale: float = 1.0, positive_class: int = 1, batch_size: int = 64, component: str = "learned_score"):
        if "{sample}" not in template and "{question}" not in template:  # {question}: its name before 2026-12-05
            raise ValueError(f"reward.template must contain {{sample}} (the text of the scored state), got {template!r}")
        if model.objective == "classification" and not 0 <= positive_class < model.head.out_features:
            raise ValueError(f"reward.positive_class={positive_class} but the model has {model.head.out_features} classes")
        self.model, self.tokenizer, self.termination_text = model, tokenizer, termination_text
        self.template, self.scale, self.positive_class = template, float(scale), int(positive_class)
        self.batch_size, self.component = int(batch_size), component
        self.scored_texts = 0  # texts sent to the model (distinct per call), for reward/* metrics

    def score_texts(self, texts: Sequence[str]) -> Tensor:
        """(N,) log-reward of each text (before ``scale``)."""
        out = self.model.score(list(texts), batch_size=self.batch_size)
        return out[:, self.positive_class] if self.model.objective == "classification" else out

    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 **context: Sequence[Any]) -> RewardOutput:
        sample_ids, lengths, scored = sample_ids.cpu(), lengths.cpu(), scored.cpu()
        B, T1 = scored.shape
        where = scored.nonzero().tolist()
        texts = []
        for b, t in where:
            fields = {k: v[b] for k, v in context.items()}
            text = state_text(self.tokenizer, sample_ids[b, :t].tolist(), self.termination_text)
            try:
                texts.append(self.template.format_map(StrictFields(fields, sample=text, question=text, prompt=prompts[b])))
            except KeyError as err:
                raise ValueError(f"reward.template {self.template!r} names {err.args[0]!r}, which this task does not "
                                 f"pass (fields: sample, prompt, {', '.join(context) or 'no context fields'})") from None
        log_r = torch.zeros(B, T1)
        if texts:
            unique = list(dict.fromkeys(texts))
            self.scored_texts += len(unique)
            values = dict(zip(unique, self.score_texts(unique).tolist()))
            for (b, t), text in zip(where, texts):
                log_r[b, t] = self.scale * values[text]
        idx = torch.arange(B)
        terminal = torch.where(scored[idx, lengths], log_r[idx, lengths], torch.full((B,), float("nan")))
        return RewardOutput(log_r=log_r, components={self.component: terminal})

    def metrics(self) -> dict[str, float]:
        return {"learned_scored_texts": float(self.scored_texts)}


def learned_reward(env: RewardEnv, checkpoint: str, template: str = "{sample}", scale: float = 1.0,
                   positive_class: int = 1, batch_size: int = 64, component: str = "learned_score") -> LearnedReward:
    """Factory (rank 0): load the reward model from a ``scripts/train_reward_model.py`` checkpoint."""
    if not checkpoint or checkpoint == "???":  # null in configs/reward/contradiction_distilled.yaml until set
        raise ValueError("reward=learned needs reward.checkpoint: a checkpoints/last.ckpt of scripts/train_reward_model.py")
    model = load_reward_model(checkpoint, env.models_dir, device=env.device)
    return LearnedReward(model, env.tokenizer, env.limits.termination_text, template=template, scale=scale,
                         positive_class=positive_class, batch_size=batch_size, component=component)
