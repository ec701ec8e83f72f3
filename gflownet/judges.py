"""Contradiction judges behind one call: ``judge(premises, hypotheses, originals) -> log p(contradiction)``.

* ``NLIJudge``: any Hugging Face sequence-classification NLI model (the full-scale default is
  ``NDugar/v3-Large-mnli``). premise = edit fact, hypothesis = answer; the contradiction
  index is read from ``config.id2label``.
* ``EmbeddingJudge``: the offline judge (no NLI model installs from the package registries).
  It embeds the answer, the edit fact and the original fact with the packaged
  all-MiniLM-L6-v2 and reads "the answer contradicts the edit" as "the answer is closer to the
  original fact than to the edited one": ``log softmax([cos(a, original), cos(a, edit)] / T)[0]``.
  Limits: it needs the record's original fact; it cannot tell an answer that merely mentions
  the original object from one that asserts it; an answer unrelated to both facts gets about
  log 0.5, not a low score.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import torch
from torch import Tensor

from gflownet.modeling import load_sequence_classifier, load_tokenizer, resolve

log = logging.getLogger(__name__)


class Judge(Protocol):
    def __call__(self, premises: Sequence[str], hypotheses: Sequence[str], originals: Sequence[str] | None = None) -> Tensor:
        """log p(contradiction) of each hypothesis given its premise, shape (N,), on the CPU."""


def _check_lengths(premises: Sequence[str], hypotheses: Sequence[str], originals: Sequence[str] | None) -> None:
    if len(premises) != len(hypotheses) or (originals is not None and len(originals) != len(premises)):
        raise ValueError(
            f"judge needs one premise per hypothesis, got {len(premises)} premises, {len(hypotheses)} hypotheses"
            + (f" and {len(originals)} originals" if originals is not None else "")
        )


def contradiction_index(id2label: dict) -> int:
    matches = [int(i) for i, name in id2label.items() if str(name).lower().startswith("contradict")]
    if len(matches) != 1:
        raise ValueError(
            f"cannot find the contradiction label in the judge's id2label {id2label}: "
            "use an NLI model whose config names a 'contradiction' label"
        )
    return matches[0]


class NLIJudge:
    def __init__(
        self,
        name_or_path: str,
        models_dir: str | Path | None = None,
        batch_size: int = 32,
        max_length: int = 256,
        temperature: float | None = None,
        device: str | torch.device = "cpu",
    ):
        self.tokenizer = load_tokenizer(name_or_path, models_dir, padding_side="right")
        self.model = load_sequence_classifier(name_or_path, models_dir).to(device)
        self.contradiction = contradiction_index(self.model.config.id2label)
        self.batch_size = batch_size
        limit = getattr(self.tokenizer, "model_max_length", max_length) or max_length
        self.max_length = min(max_length, limit)
        self.temperature = temperature or 1.0
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, premises, hypotheses, originals=None) -> Tensor:
        _check_lengths(premises, hypotheses, originals)
        out = []
        for i in range(0, len(premises), self.batch_size):
            enc = self.tokenizer(
                list(premises[i : i + self.batch_size]), list(hypotheses[i : i + self.batch_size]),
                padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            logits = self.model(**enc).logits.float() / self.temperature
            out.append(logits.log_softmax(-1)[:, self.contradiction].cpu())
        return torch.cat(out) if out else torch.zeros(0)


class EmbeddingJudge:
    def __init__(
        self,
        name_or_path: str = "packaged:all-minilm-l6-v2",
        models_dir: str | Path | None = None,
        temperature: float = 0.05,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ):
        from sentence_transformers import SentenceTransformer

        if temperature <= 0:
            raise ValueError(f"judge temperature must be > 0, got {temperature}")
        _, location = resolve(name_or_path, models_dir)
        self.model = SentenceTransformer(location, device=str(device))
        self.temperature = temperature
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Tensor:
        return self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True,
            show_progress_bar=False,
        ).float().cpu()

    @torch.no_grad()
    def __call__(self, premises, hypotheses, originals=None) -> Tensor:
        if originals is None:
            raise ValueError("the embedding judge needs the original facts (originals=...) beside the edit facts")
        _check_lengths(premises, hypotheses, originals)
        if not premises:
            return torch.zeros(0)
        facts = list(dict.fromkeys([*premises, *originals]))  # embed each distinct fact once
        index = {f: i for i, f in enumerate(facts)}
        fact_emb = self.embed(facts)
        ans_emb = self.embed(hypotheses)
        sim_edit = (ans_emb * fact_emb[[index[p] for p in premises]]).sum(-1)
        sim_orig = (ans_emb * fact_emb[[index[o] for o in originals]]).sum(-1)
        return torch.stack([sim_orig, sim_edit], dim=-1).div(self.temperature).log_softmax(-1)[:, 0]
