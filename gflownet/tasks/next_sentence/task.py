"""The next-sentence task: given a prompt of 1-3 sentences, the sampler writes one sentence that
ends at ``.``; the reward is the reward LM's log-likelihood of that sentence after the prompt
(``gflownet.rewards.likelihood``, every prefix scored exactly from one teacher-forced pass), with
the reward temperature annealed from 1.0 to 0.8 (configs/task/next_sentence.yaml). The target
``P_LM(s | prompt)^(1/T)`` with T < 1 sharpens the LM towards likely sentences while a GFlowNet
keeps sampling them in proportion, unlike greedy or beam search (Hu et al. 2023).
"""

from __future__ import annotations

from gflownet.core.protocols import ActionLimits, Rollout
from gflownet.tasks.next_sentence.data import PromptRecord


class NextSentenceTask:
    name = "next_sentence"
    context_fields = ()

    def __init__(self, min_len: int = 1, max_len: int = 20, forbidden_tokens=("eos", "newline", "termination")):
        self.limits = ActionLimits(".", int(min_len), int(max_len), tuple(forbidden_tokens))

    def prompt(self, record: PromptRecord, tokenizer) -> str:
        return record.text

    def describe(self, record: PromptRecord) -> str:
        return record.text if len(record.text) <= 60 else record.text[:57] + "..."

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        """Mean and max log-likelihood of the samples under the reward LM, plain (per prompt, averaged),
        and the mean under the banned-token penalty (``mean_penalized_log_likelihood``), the reward's
        own value, where the reward has one."""
        log_p = rollout.components.get("log_likelihood")
        if log_p is None:
            return {}
        best = {}
        for p, v in zip(rollout.prompts, log_p.tolist()):
            best[p] = max(best.get(p, float("-inf")), v)
        out = {"mean_log_likelihood": float(log_p.mean()), "max_log_likelihood": sum(best.values()) / len(best)}
        penalised = rollout.components.get("penalized_log_likelihood")
        if penalised is not None:
            out["mean_penalized_log_likelihood"] = float(penalised.mean())
        return out
