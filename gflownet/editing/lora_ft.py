"""Constrained fine-tuning of one MLP layer on the edit facts, in the style of FT-L (Zhu et al. 2020,
the constrained fine-tuning baseline of the ROME paper), through a low-rank (LoRA) change.

The change to the MLP output projection W of block ``layer`` is ΔW = B A (rank ``rank``). It is
trained on every edit at once: the loss is the mean negative log-likelihood of each new object's
tokens after its prompt. After every step the change is projected back into FT-L's constraint,
max |ΔW_ij| <= ``norm_constraint`` (B is scaled down, which keeps the rank), so the edited model
stays within an L-infinity ball around the original weights. At the end ΔW is added to W.

Written by hand rather than through ``peft`` because it needs the constraint after every step and
the merged change of one matrix; ``peft`` has neither (its LoRA is used for the sampler). Training
stops once the mean NLL of the new objects falls below ``stop_loss``.

A request's ``contexts`` are trained on beside its prompt, each as one more example. Trained on the
bare prompt alone, edits of SmolLM2-135M-Instruct barely reach its chat form (100 CounterFact edits:
the chat answerer asked 30 edit prompts named the new object for 3; docs/guide.md, "Probing an edited
model"); ``answer_format`` in ``configs/answerer/edit/lora_ft.yaml`` adds the answerer's own prompt
for the edit as a context (6 of 30).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor

from gflownet.core.progress import Progress
from gflownet.editing.model_parts import MLPSite, hooked, model_device
from gflownet.editing.requests import EditRequest

log = logging.getLogger(__name__)


@dataclass
class LoraFTSettings:
    rank: int = 8
    steps: int = 50
    lr: float = 5e-3
    norm_constraint: float = 0.1  # FT-L's L-infinity bound on each weight change (FT-L used 5e-3 on GPT-2 XL; docs/guide.md, "Edit quality")
    batch_size: int = 16
    stop_loss: float = 0.1  # stop once the mean NLL of the new objects (all edits) is below this: training on makes it less local
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _examples(tokenizer, requests: Sequence[EditRequest]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, new object ids) for each request's prompt and each of its ``contexts``."""
    out = []
    for r in requests:
        t = tokenizer.encode(" " + r.target_new.strip(), add_special_tokens=False)
        for text in (r.prompt, *r.contexts):
            p = tokenizer.encode(text, add_special_tokens=False)
            if not p or not t:
                raise ValueError(f"edit {text!r} -> {r.target_new!r} has an empty prompt or target")
            out.append((p, t))
    return out


def _loss(model, examples, device) -> Tensor:
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for r, (p, t) in enumerate(examples):
        ids[r, : len(p) + len(t)] = torch.tensor(p + t)
        mask[r, : len(p) + len(t)] = 1
        labels[r, len(p) : len(p) + len(t)] = torch.tensor(t)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
    labels = labels[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none")
    nll = nll.view(labels.shape)
    per_example = nll.sum(1) / (labels != -100).sum(1)
    return per_example.mean()


def apply_lora_ft(model, tokenizer, site: MLPSite, requests: Sequence[EditRequest],
                  settings: LoraFTSettings | None = None) -> dict:
    """Fine-tune ``model`` in place (the merged low-rank change of the site); returns a report."""
    s = settings or LoraFTSettings()
    device = model_device(model)
    out_dim, in_dim = site.linear_weight().shape
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    A = (torch.randn(s.rank, in_dim, generator=gen) / math.sqrt(in_dim)).to(device).requires_grad_(True)
    B = torch.zeros(out_dim, s.rank, device=device, requires_grad=True)
    examples = _examples(tokenizer, requests)

    def add_lora(key, out):
        return out + (key.float() @ A.T @ B.T).to(out.dtype)

    opt = torch.optim.Adam([A, B], lr=s.lr)
    was = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    order = torch.randperm(len(examples), generator=gen).tolist()
    first = last = float("nan")
    step = -1
    try:
        progress = Progress(f"LoRA-FT on {len(requests)} edits", total=s.steps, unit="steps")
        with hooked(site, add_lora):
            for step in range(s.steps):
                progress.step()
                start = (step * s.batch_size) % len(examples)
                batch = [examples[order[(start + i) % len(examples)]] for i in range(min(s.batch_size, len(examples)))]
                opt.zero_grad()
                loss = _loss(model, batch, device)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    biggest = (B @ A).abs().max()
                    if biggest > s.norm_constraint:
                        B.mul_(s.norm_constraint / biggest)
                first = loss.item() if step == 0 else first
                last = loss.item()
                if (step + 1) % max(1, -(-len(examples) // s.batch_size)) == 0:  # after each pass over the edits
                    with torch.no_grad():
                        if _loss(model, examples, device).item() < s.stop_loss:
                            break
            progress.finish(f"stopped early: loss below {s.stop_loss}")
            with torch.no_grad():
                final = _loss(model, examples, device).item()
    finally:
        for p, w in zip(model.parameters(), was):
            p.requires_grad_(w)
        model.train(was_training)
    with torch.no_grad():
        delta = (B @ A).detach()
        site.add_linear_delta(delta)
    report = {"steps": step + 1, "first_loss": first, "last_batch_loss": last, "final_loss": final, "max_abs_change": float(delta.abs().max())}
    log.info("LoRA-FT on %s: %d edits, loss %.3f -> %.3f, max |dW| %.2e", site.name, len(requests), first, final,
             report["max_abs_change"])
    return report
