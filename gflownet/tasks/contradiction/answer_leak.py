"""A leak reward read from the edited answerer's own answer, with no judge model: does the answer state
the old object?

For a question q about an edit (s, r, o_true -> o_new), the edited answerer answers q (greedy, as it
is asked everywhere else), and

    log R(q) = 0                      if q names the subject, not o_true, and the answer names o_true and not o_new
             = miss_log_reward        if q names the subject (and not o_true) but its answer does not
             = unrelated_log_reward   otherwise
             (+ likelihood_weight * log P_base(q | prompt), the shared likelihood term)

This is the evaluation's verified-leak rule (``leaks.is_verified_leak``) used as the reward, its
guards included: the question names the subject and no spelling of the original object (an answer
that repeats a leading question shows no knowledge; ``task.mask_objects``, on in
``experiment=edit_probe``, keeps the object's own tokens out of the sampler's vocabulary, not
"Buddhist" for Buddhism), and an edit whose subject's name holds the original object ("Nokia X
family", produced by Nokia) is not read at all (``leaks.readable``): every question about it earns
``unrelated_log_reward``, so its target is the likelihood term alone. Only questions that pass the
guard (``leaks.may_leak``, the question's half of the rule) are answered.

Why it exists: read by hand, 6.7% of the questions the margin reward flags on the 100-edit setup
are leaks, and 20.4% of the offline judge's (``docs/labels``); on fresh edits neither reward's
sampler found more verified leaks than untrained sampling where the edits took. Because this
reward *is* the figure the leak tables count, those counts no longer say by themselves that a
sampler trained on it finds real leaks: its flagged questions must be checked by hand labels
(``scripts/flagged_leaks.py``), as every reward's are. Where the edit did not take, every
on-subject question "leaks", so it is used with ``took_only=true`` (the default here).

With ``miss_log_reward`` -6 and ``unrelated_log_reward`` -10 the target (likelihood weight 1) is the
base LM tilted by e^6 = 400 towards leaking questions and by e^4 = 55 towards questions on the
subject: where 1 in 100 of the base LM's on-subject questions leaks, 80% of the target's do.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from gflownet.core.protocols import RewardEnv, RewardOutput
from gflownet.core.sampling import state_text
from gflownet.rewards.combine import WeightedSum
from gflownet.rewards.likelihood import likelihood_reward
from gflownet.tasks.contradiction.answerer import Answerer
from gflownet.tasks.contradiction.leaks import may_leak, states_original


class AnswerLeakTerm:
    """0 / ``miss_log_reward`` / ``unrelated_log_reward`` per scored state (module docstring). Only
    questions that pass the guard are answered."""

    def __init__(self, answerer: Answerer, tokenizer, miss_log_reward: float = -6.0, unrelated_log_reward: float = -10.0):
        if not float(miss_log_reward) < 0:
            raise ValueError(f"reward.miss_log_reward={miss_log_reward}: a question that does not leak must earn less "
                             "than one that does (0); use a value < 0")
        self.answerer, self.tokenizer = answerer, tokenizer
        self.miss, self.unrelated = float(miss_log_reward), float(unrelated_log_reward)

    def __call__(self, *, prompts: Sequence[str], sample_ids: Tensor, lengths: Tensor, scored: Tensor, step: int = 0,
                 edit_fact: Sequence[str], subject: Sequence[str], edited_answer: Sequence[str],
                 original_answer: Sequence[str], **context: Any) -> RewardOutput:
        B, T1 = scored.shape
        if not (len(edit_fact) == len(subject) == len(edited_answer) == len(original_answer) == B):
            raise ValueError("the answer-leak reward needs one edit fact, subject and pair of answers per trajectory")
        sample_ids, lengths, scored = sample_ids.cpu()[:, :T1], lengths.cpu(), scored.cpu()
        where = scored.nonzero().tolist()
        texts = [state_text(self.tokenizer, sample_ids[b, :t].tolist(), "?") for b, t in where]
        guarded = [may_leak(q, subject[b], original_answer[b]) for q, (b, _) in zip(texts, where)]
        asked = [k for k, g in enumerate(guarded) if g]
        answers = self.answerer([texts[k] for k in asked], [edit_fact[where[k][0]] for k in asked]) if asked else []
        by_state: dict[tuple[int, int], str] = {}
        log_r = torch.zeros(B, T1)
        leak = torch.full((B, T1), float("nan"))
        named = torch.zeros(B, T1)
        for b, t in where:
            log_r[b, t] = self.unrelated
        for k, a in zip(asked, answers):
            b, t = where[k]
            hit = states_original(a, original_answer[b], edited_answer[b], subject[b])
            log_r[b, t] = 0.0 if hit else self.miss
            leak[b, t], named[b, t] = float(hit), 1.0
            by_state[(b, t)] = a
        idx = torch.arange(B)
        return RewardOutput(
            log_r=log_r,
            components={"answer_leak": leak[idx, lengths], "names_subject": named[idx, lengths]},
            texts={"answer": [by_state.get((b, int(lengths[b])), "") for b in range(B)]},
            per_state={"answer_leak": leak},
        )


def answer_leak_reward(env: RewardEnv, answer: dict, answerer: dict | None = None, edit: dict | None = None,
                       likelihood_weight: float = 1.0, miss_log_reward: float = -6.0,
                       unrelated_log_reward: float = -10.0, took_only: bool = True,
                       failed_log_reward: float | None = None) -> WeightedSum:
    """Factory (rank 0 only): the answer-leak term plus ``likelihood_weight`` x the base LM's
    log-likelihood of the question. ``took_only`` (default): the term pays only on edits that took
    (``leaks.TookGate``); elsewhere every question earns ``failed_log_reward`` (default
    ``unrelated_log_reward``)."""
    from gflownet.tasks.contradiction.reward import build_answerer, check_took_only, gate_took

    if took_only:
        check_took_only(edit)  # before the answerer is built and edited
    term = AnswerLeakTerm(build_answerer(env, dict(answerer or {}), dict(answer), edit), env.tokenizer,
                          miss_log_reward=miss_log_reward, unrelated_log_reward=unrelated_log_reward)
    if took_only:
        term = gate_took(term, term.answerer, edit, unrelated_log_reward if failed_log_reward is None else failed_log_reward)
    return WeightedSum({"leak": (1.0, term), "likelihood": (float(likelihood_weight), likelihood_reward(env))})
