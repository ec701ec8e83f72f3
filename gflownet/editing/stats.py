"""The second moment of an MLP's keys, C = E[k kᵀ] over the tokens of a text, which ROME's update uses
to disturb other keys as little as possible (the update's direction is C⁻¹k*).

ROME computes C on 100,000 Wikipedia texts. Nothing like Wikipedia installs from the package
registries, so the offline default (``text: sampled``) is text *sampled from the unedited model
itself*: sequences of ``seq_len`` tokens drawn at temperature 1 from short generic openings.
Why that is adequate: C only has to say which key directions the layer sees in use, so that the
edit leaves them alone; text the model itself produces is, by construction, text whose keys are
typical of the model, and it covers the answerer's own register (short declarative sentences
about people, places and things). The measured effect is in the edit-quality table of docs/guide.md
(neighbourhood success with these statistics). A user with a corpus passes ``text: /path/to/file.txt``
(one document per line, or plain running text) and the statistics are computed over its tokens.

Statistics are cached per model fingerprint, layer, text and token count under ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor

from gflownet.core.checkpointing import atomic_torch_save
from gflownet.core.progress import Progress
from gflownet.editing.model_parts import MLPSite, fingerprint, hooked, model_device

log = logging.getLogger(__name__)

OPENINGS = ("The", "In", "A", "It", "He", "She", "They", "This", "On", "After", "When", "I", "We", "His", "Her", "One")


@torch.no_grad()
def sampled_text_ids(model, tokenizer, n_tokens: int, seq_len: int = 64, batch_size: int = 32, seed: int = 0) -> list[list[int]]:
    """Token sequences sampled from the model at temperature 1, opening with generic words."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = model_device(model)
    seqs: list[list[int]] = []
    total, i = 0, 0
    progress = Progress("sampling text for ROME's key statistics", total=n_tokens, unit="tokens")
    while total < n_tokens:
        openings = [OPENINGS[(i + j) % len(OPENINGS)] for j in range(batch_size)]
        i += batch_size
        first = [tokenizer.encode(o, add_special_tokens=False)[:1] for o in openings]  # one token each
        out_ids = torch.tensor(first, device=device)
        step_in, past = out_ids, None
        for _ in range(seq_len - 1):
            out = model(input_ids=step_in, past_key_values=past, use_cache=True)
            past = out.past_key_values
            probs = out.logits[:, -1].float().softmax(-1).cpu()
            step_in = torch.multinomial(probs, 1, generator=gen).to(device)
            out_ids = torch.cat([out_ids, step_in], dim=1)
        for row in out_ids.tolist():
            seqs.append(row)
            total += len(row)
        progress.step(min(out_ids.numel(), n_tokens - progress.done))
    return seqs


def file_text_ids(tokenizer, path: str | Path, n_tokens: int, seq_len: int = 128) -> list[list[int]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"key-statistics text {path} not found: pass an existing text file, or text=sampled")
    ids: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                ids += tokenizer.encode(line.strip() + "\n", add_special_tokens=False)
            if len(ids) >= n_tokens:
                break
    if len(ids) < seq_len:
        raise ValueError(f"{path} has only {len(ids)} tokens: key statistics need at least {seq_len}")
    return [ids[i : i + seq_len] for i in range(0, min(len(ids), n_tokens), seq_len)]


@torch.no_grad()
def key_second_moment(model, site: MLPSite, seqs: list[list[int]], batch_size: int = 16) -> tuple[Tensor, int]:
    """(C, tokens): the float64 mean of k kᵀ over every token of ``seqs`` at the site's input."""
    device = model_device(model)
    d = site.key_dim
    acc = torch.zeros(d, d, dtype=torch.float64)
    count = 0

    def grab(key, _out):
        nonlocal acc, count
        k = key.reshape(-1, d)[mask_flat].to(torch.float64).cpu()
        acc += k.T @ k
        count += k.shape[0]
        return None

    with hooked(site, grab):
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            mask_flat = mask.reshape(-1).bool().to(device)
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
    if count == 0:
        raise ValueError("no tokens for key statistics")
    return acc / count, count


def stats_path(cache_dir: str | Path, model, layer: int, text: str, n_tokens: int) -> Path:
    tag = "sampled" if text == "sampled" else hashlib.sha1(str(Path(text).resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"keys-{fingerprint(model)}-layer{layer}-{tag}-{n_tokens}.pt"


def cached_second_moment(model, tokenizer, site: MLPSite, layer: int, cache_dir: str | Path | None, text: str = "sampled",
                         n_tokens: int = 50_000, seed: int = 0) -> Tensor:
    """C for the site, from the cache when present (computed once, written atomically)."""
    path = stats_path(cache_dir, model, layer, text, n_tokens) if cache_dir else None
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["C"]
    log.info("key statistics for %s: %d tokens of %s text (computed once%s)", site.name, n_tokens, text,
             f", cached at {path}" if path else "")
    if text == "sampled":
        seqs = sampled_text_ids(model, tokenizer, n_tokens, seed=seed)
    else:
        seqs = file_text_ids(tokenizer, text, n_tokens)
    C, count = key_second_moment(model, site, seqs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"C": C, "tokens": count, "site": site.name, "text": text}, path)
    return C
