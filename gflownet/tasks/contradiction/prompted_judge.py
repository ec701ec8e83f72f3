"""A judge that is a language model asked the question: does the answer contradict the edit fact?

    log C(answer | fact) = log softmax(log p("Yes" | ask), log p("No" | ask))[Yes]

``ask`` is the judge's question (``question``, with the fact and the answer filled in) as the
model's user turn (its chat template, ``template: chat``) or as plain text (``template: raw``), and
"Yes" and "No" are scored as its reply. The log-probabilities come from a reward backend of the
prompt-inversion task (``tasks/prompt_inversion/backends.py``), so the same judge runs

* **locally** (``model``: a hub id, directory or ``packaged:NAME``), teacher-forced in batches, or
* **served** (``served``: an OpenAI-compatible ``/v1/completions`` endpoint that echoes prompt
  log-probabilities: vLLM, llama.cpp's server), with that client's concurrency, retries on 429,
  5xx and time-outs, its clear errors, and an optional SQLite cache of scored (model, text) pairs.

It is the contradiction reward's judge where the judge is a language model: at full scale an
instruct model served beside the trainer (issue 29: reward work that scales with the ranks), with
every rank's reward asking it. A 135M model is a weak judge (``docs/results.md``, "A served judge");
the offline ``FactJudge`` stays the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from gflownet.tasks.contradiction.judges import _check_lengths

QUESTION = ("Fact: {fact}\nStatement: {answer}\n"
            "Does the statement contradict the fact? Answer Yes or No.")
SERVED_KEYS = {"base_url", "model", "api_key", "api_key_env", "concurrency", "max_retries", "timeout"}


class PromptedJudge:
    def __init__(self, model: str | None = None, served: dict | None = None, tokenizer: str | None = None,
                 models_dir: str | Path | None = None, template: str = "chat", question: str = QUESTION,
                 yes_reply: str = "Yes", no_reply: str = "No", dtype: str = "float32", batch_size: int = 16,
                 cache: str | None = None, device: str | torch.device = "cpu"):
        from gflownet.core.modeling import load_causal_lm, load_tokenizer
        from gflownet.tasks.prompt_inversion.backends import CachedBackend, LocalBackend, OpenAIBackend

        if (model is None) == (served is None):
            raise ValueError("reward.judge: give either model (a local judge model) or served (an OpenAI-compatible "
                             "endpoint), not both and not neither")
        if template not in ("chat", "raw"):
            raise ValueError(f"reward.judge.template={template!r}: use chat (the model's chat template) or raw (plain text)")
        if "{fact}" not in question or "{answer}" not in question:
            raise ValueError("reward.judge.question must contain {fact} and {answer}")
        if not yes_reply.strip() or not no_reply.strip() or yes_reply.strip() == no_reply.strip():
            raise ValueError(f"reward.judge.yes_reply={yes_reply!r} and no_reply={no_reply!r} must be two different, "
                             "non-empty words")
        self.template, self.question, self.yes, self.no = template, question, yes_reply, no_reply
        if served is not None:
            served = dict(served)
            unknown = set(served) - SERVED_KEYS
            if unknown:
                raise ValueError(f"unknown reward.judge.served keys {sorted(unknown)}: use {', '.join(sorted(SERVED_KEYS))}")
            backend = OpenAIBackend(served.pop("base_url", None), served.pop("model", None), check=False, **served)
            self.tokenizer = load_tokenizer(tokenizer, models_dir) if tokenizer else None
            if template == "chat" and self.tokenizer is None:
                raise ValueError("a served judge with template=chat needs reward.judge.tokenizer (a model with the served "
                                 "model's tokenizer, whose chat template renders the question), or template=raw")
        else:
            lm = load_causal_lm(model, models_dir, dtype=dtype).to(device)
            self.tokenizer = load_tokenizer(tokenizer or model, models_dir, padding_side="right")
            backend = LocalBackend(lm, self.tokenizer, name=f"local:{model}", batch_size=batch_size)
        self.backend = CachedBackend(backend, cache) if cache else backend
        if served is not None:  # fail at start-up, not at the first step
            self(["The sky is blue."], ["The sky is green."])

    def pairs(self, fact: str, answer: str):
        from gflownet.tasks.prompt_inversion.templates import render

        ask = self.question.format(fact=fact.strip(), answer=answer.strip())
        return [render(self.template, ask, word, self.tokenizer) for word in (self.yes, self.no)]

    def __call__(self, premises: Sequence[str], hypotheses: Sequence[str], originals: Sequence[str] | None = None) -> Tensor:
        _check_lengths(premises, hypotheses, originals)
        if not premises:
            return torch.zeros(0)
        pairs = [p for fact, answer in zip(premises, hypotheses) for p in self.pairs(fact, answer)]
        lp = torch.tensor(self.backend.log_probs(pairs), dtype=torch.float64).view(-1, 2)
        return lp.log_softmax(-1)[:, 0].float()

    def metrics(self) -> dict[str, float]:
        return self.backend.metrics()
