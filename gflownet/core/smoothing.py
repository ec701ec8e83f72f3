"""The smoothing stage: maximum likelihood on the best distinct samples a GFlowNet run found.

After GFlowNet training, Lee et al. (2024, "Learning diverse attacks on large language models for
robust red-teaming and safety tuning", GFNOrg/red-teaming) fine-tune the *initial* policy by maximum
likelihood on the high-reward samples the GFlowNet collected. The GFlowNet is the explorer; the
smoothed policy spreads its mass over everything good that was found instead of over the modes the
GFlowNet happened to sharpen last, so it keeps the initial policy's diversity better.

Here the samples are a run's replay buffer (the best samples kept per prompt, already one per
group of near-duplicates when ``buffer.near_duplicate_similarity`` is set): per prompt, the entries
that pass the thresholds, best reward first, one per group of meaning (MiniLM cosine), at most
``top``. Nothing here knows a task: a prompt, its entries and the sampler are all it uses.
``scripts/smooth.py`` runs it on a checkpoint and writes a checkpoint that ``scripts/evaluate.py``
reads like any other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from gflownet.core import losses
from gflownet.core.metrics import distinct_indices
from gflownet.core.replay_buffer import BufferEntry, entries_to_batch

log = logging.getLogger(__name__)


def passes(entry: BufferEntry, minimum: Mapping[str, float]) -> bool:
    """Whether the entry's reward (``reward``) and each named numeric component are at least the
    given values. A component the entry does not have is an error: a threshold on a misspelt name
    would otherwise drop every entry without a word."""
    for name, value in minimum.items():
        if name == "reward":
            have = entry.reward
        elif name in entry.components and isinstance(entry.components[name], (int, float)):
            have = float(entry.components[name])
        else:
            numeric = sorted(k for k, v in entry.components.items() if isinstance(v, (int, float)))
            raise KeyError(f"threshold on {name!r}: the buffer's entries have no such numeric component "
                           f"(they have reward and {', '.join(numeric) or 'no components'})")
        if not have >= value:
            return False
    return True


def best_distinct(entries: Sequence[BufferEntry], top: int, minimum: Mapping[str, float] | None = None,
                  embed: Callable[[list[str]], Tensor] | None = None, cosine: float = 0.7) -> list[BufferEntry]:
    """At most ``top`` of ``entries``: those passing ``minimum``, best reward first, each one not within
    MiniLM cosine ``cosine`` of a better one kept (``embed``: texts -> (N, D) embeddings; without it
    only exact repeats merge)."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    good = sorted((e for e in entries if passes(e, minimum or {})), key=lambda e: (-e.reward, e.text))
    if not good:
        return []
    texts = [e.text for e in good]
    if embed is None:  # exact repeats only: the first (best) of each text
        first: dict[str, int] = {}
        for i, text in enumerate(texts):
            first.setdefault(text, i)
        kept = list(first.values())
    else:  # by meaning alone (an edit similarity above 1 never merges)
        kept = distinct_indices(texts, embed(texts), spelling_similarity=1.01, cosine=cosine)
    return [good[i] for i in kept[:top]]


def nll_per_token(module, prompts: Sequence[str], entries: Sequence[BufferEntry]) -> Tensor:
    """Mean negative log-likelihood per action (tokens and the termination) of ``entries`` after their
    ``prompts`` under the module's sampler, with gradients: the maximum-likelihood loss."""
    ids, lengths, _, _ = entries_to_batch(entries, module.tokenizer.pad_token_id)
    prompt_ids, prompt_mask = module.encode(list(prompts))
    log_pf, log_pterm = module.score_trajectories(prompt_ids, prompt_mask, ids, lengths, row_prompts=list(prompts))
    lengths = lengths.to(log_pf.device)
    return -losses.trajectory_log_prob(log_pf, log_pterm, lengths).sum() / (lengths + 1).sum()


def smooth(module, pairs: Sequence[tuple[str, BufferEntry]], steps: int, lr: float = 1e-4, batch_size: int = 16,
           clip: float = 1.0, seed: int = 0, held_out: Sequence[tuple[str, BufferEntry]] = (),
           every: int = 25, progress=None) -> list[dict]:
    """Fine-tune the module's trainable sampler parameters (its LoRA) by maximum likelihood on
    ``pairs`` (prompt, entry) for ``steps`` AdamW steps of ``batch_size``, in shuffled epochs.
    Returns the history: the training loss of each step and, before the first step, every ``every``
    steps and at the end, the NLL per token on ``held_out`` (pairs kept out of training, e.g. some
    prompts' entries)."""
    if not pairs:
        raise ValueError("no samples to smooth on: lower the thresholds or check the buffer")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    params = [p for n, p in module.sampler.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the sampler has no trainable parameters (model.lora: null trains nothing here)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    history: list[dict] = []

    def held_out_nll() -> float | None:
        if not held_out:
            return None
        with torch.no_grad():
            total, count = 0.0, 0
            for i in range(0, len(held_out), batch_size):
                chunk = held_out[i:i + batch_size]
                n = sum(len(e.token_ids) for _, e in chunk)
                total += float(nll_per_token(module, [p for p, _ in chunk], [e for _, e in chunk])) * n
                count += n
        return total / count

    if held_out:
        history.append({"step": 0, "held_out_nll": held_out_nll()})
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(pairs), generator=generator).tolist()
        batch = [pairs[i] for i in order[:batch_size]]
        del order[:batch_size]
        loss = nll_per_token(module, [p for p, _ in batch], [e for _, e in batch])
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"smoothing step {step}: the loss is {float(loss)}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        row = {"step": step + 1, "loss": float(loss.detach())}
        if (step + 1) % every == 0 or step + 1 == steps:
            row["held_out_nll"] = held_out_nll()
            log.info("smoothing step %d/%d: loss %.3f, held-out NLL %s", step + 1, steps, row["loss"],
                     "n/a" if row["held_out_nll"] is None else f"{row['held_out_nll']:.3f}")
        history.append(row)
        if progress is not None:  # core.progress.Progress: a line every so often, with the time to go
            progress.step()
    return history
