"""Diagnostics of samples shared by every task: semantic diversity, distinct-n, distinct items, glitches."""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor


GLITCH = re.compile(r"[\ufffd\x00-\x08\x0b-\x1f\x7f]|[^\w\s.]{3,}|\S{25,}")  # "..." is text, "@#%" is not


def is_glitchy(text: str) -> bool:
    """A question no reader would write: a replacement or control character, a run of three or more
    symbols, or a 25-character run without a space."""
    return bool(GLITCH.search(text))


def semantic_diversity(embeddings: Tensor, weights: Tensor | None = None) -> float:
    """Mean pairwise cosine distance (1 - cos) over distinct pairs of (N, D) embeddings; 0 for N < 2.
    With ``weights`` (N,), pair (i, j) counts w_i * w_j: the diversity of a weighted sample."""
    n = embeddings.size(0)
    if n < 2:
        return 0.0
    dtype = torch.float32 if weights is None else torch.float64
    e = torch.nn.functional.normalize(embeddings.to(dtype), dim=-1)
    pair = torch.ones(n, n, dtype=dtype) if weights is None else weights.to(dtype)[:, None] * weights.to(dtype)[None, :]
    pair.fill_diagonal_(0.0)
    # identical embeddings give 1 - cos a hair below 0 in floating point: a distance is >= 0
    return max(0.0, float((pair * (1.0 - e @ e.T)).sum() / pair.sum()))


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams (whitespace tokens) of the texts; 0 when there are none."""
    grams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_items(texts: Sequence[str], embeddings: Tensor | None = None, spelling_similarity: float = 0.85,
                   cosine: float = 0.9) -> int:
    """How many of ``texts`` remain once near-duplicates are removed (``distinct_indices``)."""
    return len(distinct_indices(texts, embeddings, spelling_similarity, cosine))


def distinct_indices(texts: Sequence[str], embeddings: Tensor | None = None, spelling_similarity: float = 0.85,
                     cosine: float = 0.9) -> list[int]:
    """The indices of ``texts`` kept once near-duplicates are removed: in order, a text is dropped when a
    kept one is within ``spelling_similarity`` (normalised Levenshtein similarity of lower-cased text without
    punctuation, ``rapidfuzz``) or, given ``embeddings`` (N, D), within cosine similarity ``cosine``."""
    from rapidfuzz.distance import Levenshtein

    from gflownet.core.replay_buffer import normalise_text

    kept: list[int] = []
    norms = [normalise_text(t) for t in texts]
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1) if embeddings is not None else None
    for i, n in enumerate(norms):
        near = any(Levenshtein.normalized_similarity(n, norms[j]) >= spelling_similarity for j in kept)
        if not near and e is not None and kept:
            near = bool((e[kept] @ e[i]).max() >= cosine)
        if not near:
            kept.append(i)
    return kept


def semantic_diversity_per_prompt(embeddings: Tensor, prompts: Sequence[str]) -> float:
    """``semantic_diversity`` of each prompt's samples, averaged over prompts with at least two
    samples (0 when none has): it does not grow with the number of prompts in a batch, so it
    reads the same at any batch size or world size."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    values = [semantic_diversity(embeddings[rows]) for rows in groups.values() if len(rows) > 1]
    return sum(values) / len(values) if values else 0.0


class Embedder:
    """Sentence embeddings with a SentenceTransformer directory (the packaged all-MiniLM-L6-v2)."""

    def __init__(self, location: str, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(location, device=device)

    def __call__(self, texts: Sequence[str]) -> Tensor:
        return self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False).float().cpu()
