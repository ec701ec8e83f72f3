"""ROME: rank-one model editing of one MLP layer (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT"), written for this project from the paper and its published hyper-parameters.

For an edit (subject, prompt, new object) at block ``layer``'s MLP output projection W (as a linear
map, out x in):

1. **Key** k*: the projection's input at the subject's last token (the prompt's last token when the
   subject is not in the prompt, ROME's ``fact_token: last``), averaged over the prompt behind
   ``n`` short prefixes sampled from the model (ROME's context templates: 10 of 5 and 10 of 10 tokens,
   plus the bare prompt).
2. **Value shift** δ: added to the projection's output at the subject's last token of every
   prefixed prompt, optimised (Adam, ``v_steps`` steps) so that the model continues each with the
   new object; a KL term keeps "{subject} is a" predicting what it did, a weight decay
   ``v_weight_decay * |δ| / |v₀|²`` and a norm ball ``|δ| <= clamp_norm_factor * |v₀|`` keep δ
   small (v₀: the output at the bare prompt).
3. **Rank-one update** (the paper's closed form): with C = E[k kᵀ] (``gflownet.editing.stats``),
   W' = W + δ (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*). It is the W' nearest W on the keys C describes
   (least ‖(W'−W)K‖ with KKᵀ ∝ C) for which W'k* = Wk* + δ. ROME's code divides by the bare prompt's
   key instead of k*; this module uses k* on both sides, which is the paper's formula and makes
   the update exactly that constrained least-squares solution (tested against a float64 solve).

Several edits are applied one after another (sequential ROME), each computed on the model that
the previous ones produced; C comes from the unedited model.
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
from gflownet.editing.requests import EditRequest, lookup_position, subject_span

log = logging.getLogger(__name__)


@dataclass
class RomeSettings:
    """ROME's GPT-2 XL hyper-parameters (hparams/ROME/gpt2-xl.json) as defaults; ``for_model`` gives
    EasyEdit's Llama values (hparams/ROME/llama-7b.yaml: 25 steps, weight decay 1e-3) for models
    other than GPT-2, whose small MLP outputs the GPT-2 weight decay would pin near zero."""

    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    templates: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))  # (tokens, count) of sampled prefixes
    ridge: float = 1e-4  # C + ridge * tr(C)/d * I is inverted (a safeguard for statistics from few tokens)
    seed: int = 0

    @classmethod
    def for_model(cls, model, **overrides) -> "RomeSettings":
        base = {} if getattr(model.config, "model_type", "") == "gpt2" else {"v_steps": 25, "v_weight_decay": 1e-3}
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["templates"] = [list(t) for t in self.templates]
        return d


@torch.no_grad()
def context_templates(model, tokenizer, settings: RomeSettings) -> list[str]:
    """"{}" and short prefixes sampled from the model (top-5 sampling, as ROME), each "<prefix>. {}"."""
    device = model_device(model)
    starts = ["The", "Therefore", "Because", "I", "You"]
    templates = ["{}"]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        for length, count in settings.templates:
            first = [tokenizer.encode(starts[i % len(starts)], add_special_tokens=False)[:1] for i in range(count)]
            ids = torch.tensor(first, device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5, top_p=1.0,
                                 temperature=1.0, max_new_tokens=max(0, length - 1), min_new_tokens=max(0, length - 1),
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
            for row in out:
                text = tokenizer.decode(row, skip_special_tokens=True)
                text = text.replace("{", "").replace("}", "").replace("\n", " ").strip()
                templates.append(text + ". {}")
    return templates


def _batch(tokenizer, texts: Sequence[str], device) -> tuple[Tensor, Tensor]:
    enc = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(len(e) for e in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros(len(enc), width, dtype=torch.long)
    for r, e in enumerate(enc):  # right padding: token positions are the unpadded ones
        ids[r, : len(e)] = torch.tensor(e)
        mask[r, : len(e)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def subject_key(model, tokenizer, site: MLPSite, request: EditRequest, templates: Sequence[str]) -> Tensor:
    """k*: the site's input at the subject's last token, averaged over the templated prompts."""
    texts = [t.format(request.prompt) for t in templates]
    idx = [lookup_position(tokenizer, x, request.subject) for x in texts]
    ids, mask = _batch(tokenizer, texts, model_device(model))
    keys = {}

    def grab(key, _out):
        keys["k"] = key[torch.arange(len(texts)), torch.tensor(idx)].float()

    with hooked(site, grab):
        model(input_ids=ids, attention_mask=mask)
    return keys["k"].mean(0)


def compute_delta(model, tokenizer, site: MLPSite, request: EditRequest, templates: Sequence[str],
                  settings: RomeSettings) -> tuple[Tensor, dict]:
    """δ, the shift of the site's output at the subject's last token that makes the prompts continue
    with the new object (step 2 of the module docstring), and a report of the optimisation."""
    device = model_device(model)
    target_ids = tokenizer.encode(" " + request.target_new.strip(), add_special_tokens=False)
    head = tokenizer.decode(target_ids[:-1])
    rewrite = [t.format(request.prompt) + head for t in templates]
    kl_prompt = f"{request.subject} is a"
    texts = rewrite + [kl_prompt]
    lookup = [lookup_position(tokenizer, t.format(request.prompt), request.subject) for t in templates]
    lookup.append(lookup_position(tokenizer, kl_prompt, request.subject))
    ids, mask = _batch(tokenizer, texts, device)
    lengths = mask.sum(1)
    n = len(rewrite)
    T = len(target_ids)
    # position predicting target token j: the last prompt token for j = 0, then each head token
    pred_pos = lengths[:n, None] - T + torch.arange(T, device=device)[None, :]  # (n, T)
    targets = torch.tensor(target_ids, device=device)[None, :].expand(n, T)
    rows = torch.arange(len(texts), device=device)
    look = torch.tensor(lookup, device=device)

    d_out = site.linear_weight().shape[0]
    delta = torch.zeros(d_out, device=device, requires_grad=True)
    state: dict = {}

    def shift(_key, out):
        if "v0" not in state:
            state["v0"] = out[0, look[0]].detach().float().clone()
        out = out.clone()
        out[rows, look] = out[rows, look] + delta.to(out.dtype)
        return out

    opt = torch.optim.Adam([delta], lr=settings.v_lr)
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    kl_init = None
    report = {}
    try:
        with hooked(site, shift):
            for step in range(settings.v_steps):
                opt.zero_grad()
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
                logp = logits[:n].log_softmax(-1)
                tok_lp = logp[torch.arange(n, device=device)[:, None], pred_pos]  # (n, T, V)
                nll = -tok_lp.gather(-1, targets[..., None]).squeeze(-1).mean(1).mean()
                kl_lp = logits[n, look[n]].log_softmax(-1)
                if kl_init is None:
                    kl_init = kl_lp.detach().clone()
                kl = settings.kl_factor * torch.nn.functional.kl_div(kl_lp, kl_init, log_target=True, reduction="sum")
                decay = settings.v_weight_decay * delta.norm() / state["v0"].norm() ** 2
                loss = nll + kl + decay
                report = {"steps": step + 1, "nll": nll.item(), "kl": kl.item(), "p_new": math.exp(-nll.item())}
                if loss.item() < 5e-2 or step == settings.v_steps - 1:
                    break
                loss.backward()
                opt.step()
                with torch.no_grad():
                    cap = settings.clamp_norm_factor * state["v0"].norm()
                    if delta.norm() > cap:
                        delta.mul_(cap / delta.norm())
    finally:
        for p, w in zip(model.parameters(), was):
            p.requires_grad_(w)
    return delta.detach().float(), report


def rank_one_update(C: Tensor, key: Tensor, delta: Tensor, ridge: float = 0.0) -> tuple[Tensor, Tensor]:
    """(value, key_dir) with W' = W + value ⊗ key_dir the least change of W on the keys C describes
    such that W'·key = W·key + delta: key_dir = C⁻¹key / (keyᵀC⁻¹key), value = delta. Solved in float64."""
    C64 = C.to(torch.float64)
    if ridge:
        C64 = C64 + ridge * torch.trace(C64) / C64.shape[0] * torch.eye(C64.shape[0], dtype=torch.float64)
    k = key.to(torch.float64).cpu()
    u = torch.linalg.solve(C64, k)
    return delta.to(torch.float64).cpu(), u / torch.dot(u, k)


def apply_rome(model, tokenizer, site: MLPSite, requests: Sequence[EditRequest], C: Tensor,
               settings: RomeSettings | None = None) -> list[dict]:
    """Edit ``model`` in place, one request after another; returns a report per edit."""
    settings = settings or RomeSettings.for_model(model)
    was_training = model.training
    model.eval()
    templates = context_templates(model, tokenizer, settings)
    reports = []
    progress = Progress("ROME edits", total=len(requests), unit="edits")
    try:
        for i, req in enumerate(requests):
            k = subject_key(model, tokenizer, site, req, templates)
            delta, rep = compute_delta(model, tokenizer, site, req, templates, settings)
            value, key_dir = rank_one_update(C, k, delta, settings.ridge)
            site.add_rank_one(value.to(site.weight.device), key_dir.to(site.weight.device))
            rep.update(edit=i, delta_norm=float(delta.norm()),
                       lookup="subject_last" if subject_span(req.prompt, req.subject) else "last")
            reports.append(rep)
            log.info("ROME edit %d/%d %r -> %r: p(new) %.3f after %d steps", i + 1, len(requests), req.prompt,
                     req.target_new, rep["p_new"], rep["steps"])
            progress.step()
    finally:
        model.train(was_training)
    return reports
