"""Where an edit acts: the output projection of one transformer block's MLP, for GPT-2 and Llama-style
models, and hooks that read its input (the "key") and shift its output (the "value").

GPT-2's ``mlp.c_proj`` is a ``Conv1D`` whose weight is (in, out); Llama-style ``mlp.down_proj`` is a
``Linear`` whose weight is (out, in). ``MLPSite.add_rank_one`` applies ``W_lin += value ⊗ key_dir``
to either layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

# ROME's published layers (Meng et al. 2022, hparams/ROME/*.json) and EasyEdit's for Llama models.
PUBLISHED_LAYERS = {
    "gpt2-medium": 8,
    "gpt2-large": 12,
    "gpt2-xl": 17,
    "EleutherAI/gpt-j-6B": 5,
    "meta-llama/Llama-2-7b-hf": 5,
    "meta-llama/Llama-2-7b-chat-hf": 5,
}

_SITE_PATTERNS = (r"(^|\.)h\.(\d+)\.mlp\.c_proj$", r"(^|\.)layers\.(\d+)\.mlp\.down_proj$")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def n_layers(model) -> int:
    cfg = model.config
    for attr in ("num_hidden_layers", "n_layer"):
        if getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    raise ValueError(f"cannot tell how many layers {type(model).__name__} has")


def default_layer(model, name: str = "") -> int:
    """ROME's published layer for known models; otherwise a third of the depth for GPT-2 family models
    (17/48, 8/24 and 12/36 in ROME) and 5/32 of it for other (Llama-style) models (EasyEdit's Llama layer)."""
    for key, layer in PUBLISHED_LAYERS.items():
        if name == key or name.endswith("/" + key) or name.rstrip("/").endswith(key):
            return layer
    L = n_layers(model)
    if getattr(model.config, "model_type", "") == "gpt2":
        return L // 3
    return min(L - 1, max(0, round(L * 5 / 32)))


@dataclass
class MLPSite:
    name: str  # module path, e.g. transformer.h.12.mlp.c_proj
    module: nn.Module
    transposed: bool  # weight stored (in, out) (GPT-2 Conv1D)

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    def linear_weight(self) -> Tensor:
        """The weight as (out, in), whatever its storage."""
        return self.weight.T if self.transposed else self.weight

    @property
    def key_dim(self) -> int:
        return self.linear_weight().shape[1]

    @torch.no_grad()
    def add_rank_one(self, value: Tensor, key_dir: Tensor) -> None:
        """W_lin += value ⊗ key_dir (W_lin: the (out, in) view)."""
        w = self.weight
        upd = torch.outer(value.to(torch.float64), key_dir.to(torch.float64))
        w += (upd.T if self.transposed else upd).to(w.dtype)

    @torch.no_grad()
    def add_linear_delta(self, delta: Tensor) -> None:
        """W_lin += delta, delta (out, in)."""
        w = self.weight
        w += (delta.T if self.transposed else delta).to(w.dtype)


def mlp_site(model, layer: int) -> MLPSite:
    """The MLP output projection of block ``layer`` (GPT-2 ``c_proj`` or Llama-style ``down_proj``)."""
    L = n_layers(model)
    if not 0 <= layer < L:
        raise ValueError(f"edit layer {layer} is outside the model's {L} layers (0..{L - 1})")
    for name, module in model.named_modules():
        for pattern in _SITE_PATTERNS:
            m = re.search(pattern, name)
            if m and int(m.group(2)) == layer:
                transposed = type(module).__name__ == "Conv1D"
                if not transposed and not isinstance(module, nn.Linear):
                    raise ValueError(f"{name} is a {type(module).__name__}: only Linear and GPT-2 Conv1D MLPs can be edited")
                return MLPSite(name, module, transposed)
    raise ValueError(f"{type(model).__name__} has no GPT-2 (h.N.mlp.c_proj) or Llama-style (layers.N.mlp.down_proj) MLP "
                     "projection: weight edits support those architectures")


@contextmanager
def hooked(site: MLPSite, fn: Callable[[Tensor, Tensor], Tensor | None]) -> Iterator[None]:
    """Run ``fn(key, output)`` on every forward of the site (key: its input (B, T, in)); a tensor
    returned replaces the output."""

    def hook(_module, inputs, output):
        return fn(inputs[0], output)

    handle = site.module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def fingerprint(model) -> str:
    """A digest of a model's config and a sample of its weights: an edit set or key statistics made
    for one model are refused for another."""
    h = hashlib.sha1()
    config = model.config.to_dict()
    config.pop("_name_or_path", None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for pname, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if ".lora_" in pname:
            continue
        flat = p.detach().reshape(-1)
        h.update(pname.encode())
        h.update(flat[:: max(1, flat.numel() // 512)][:512].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
