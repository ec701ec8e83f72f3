"""Readouts: from a backbone's hidden states to one feature vector per text.

Every readout takes the tuple of hidden states a Hugging Face model returns with
``output_hidden_states=True`` (the embedding output, then one (B, T, H) tensor per layer) and the
attention mask (B, T), and returns (B, H). The head (``model.RewardModel``) maps that to a score.

* ``final_token``: the last layer's state at each text's last real token (the decoder output a
  causal LM's next-token head reads; for an encoder, its last token).
* ``layer_attention``: in every layer, attention pooling over the tokens (one learned query per
  layer); the per-layer vectors are combined by learned softmax weights over the layers.
* ``cross_layer_attention``: one attention pooling over all (layer, token) states at once, with a
  learned embedding of the layer added to each key: a layer and token are chosen together.
* ``first_token_attention``: the first token's state in every layer, pooled across the layers by
  attention. In an encoder (the packaged MiniLM, BERT's [CLS]) that state sees the whole text; in a
  causal decoder it sees only the first token, so this readout refuses causal backbones.

States are layer-normalised (no affine parameters) before pooling: their scale differs by orders of
magnitude between layers. The embedding output is not used; "layer" means a transformer block's output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

READOUTS = ("final_token", "layer_attention", "cross_layer_attention", "first_token_attention")


def _normed(h: Tensor) -> Tensor:
    return nn.functional.layer_norm(h.float(), h.shape[-1:])


def last_positions(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token, for left or right padding."""
    T = mask.size(1)
    return (torch.arange(T, device=mask.device)[None, :] * mask.long()).amax(1)


class FinalToken(nn.Module):
    def __init__(self, hidden: int, n_layers: int):
        super().__init__()

    def forward(self, states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        last = states[-1]
        return _normed(last[torch.arange(last.size(0), device=last.device), last_positions(mask)])


class LayerAttention(nn.Module):
    def __init__(self, hidden: int, n_layers: int):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(n_layers, hidden))  # zeros: mean pooling at the start
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))  # zeros: layers weighted equally
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        h = _normed(torch.stack(states[1:], dim=1))  # (B, L, T, H)
        scores = torch.einsum("blth,lh->blt", h, self.queries) * self.scale
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        pooled = torch.einsum("blt,blth->blh", scores.softmax(-1), h)  # (B, L, H)
        return torch.einsum("l,blh->bh", self.layer_logits.softmax(0), pooled)


class _QueryWithLayerKeys(nn.Module):
    """One learned query, and a learned embedding per layer added to the keys (zeros: uniform weights)."""

    def __init__(self, hidden: int, n_layers: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden))
        self.layer_keys = nn.Parameter(torch.zeros(n_layers, hidden))
        self.scale = 1.0 / math.sqrt(hidden)


class CrossLayerAttention(_QueryWithLayerKeys):
    def forward(self, states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        h = _normed(torch.stack(states[1:], dim=1))  # (B, L, T, H)
        keys = h + self.layer_keys[None, :, None, :]
        B, L, T, H = h.shape
        scores = (keys @ self.query * self.scale).masked_fill(~mask.bool()[:, None, :], float("-inf"))
        weights = scores.reshape(B, L * T).softmax(-1).reshape(B, L, T)
        return torch.einsum("blt,blth->bh", weights, h)


class FirstTokenAttention(_QueryWithLayerKeys):
    def forward(self, states: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        first = mask.long().argmax(1)  # the first real token (left padding included)
        rows = torch.arange(mask.size(0), device=mask.device)
        h = _normed(torch.stack([s[rows, first] for s in states[1:]], dim=1))  # (B, L, H)
        scores = (h + self.layer_keys[None]) @ self.query * self.scale
        return torch.einsum("bl,blh->bh", scores.softmax(-1), h)


def build_readout(kind: str, hidden: int, n_layers: int, causal: bool) -> nn.Module:
    classes = {"final_token": FinalToken, "layer_attention": LayerAttention,
               "cross_layer_attention": CrossLayerAttention, "first_token_attention": FirstTokenAttention}
    if kind not in classes:
        raise ValueError(f"unknown readout {kind!r}: use one of {', '.join(READOUTS)}")
    if kind == "first_token_attention" and causal:
        raise ValueError(
            "readout=first_token_attention reads the first token of every layer, which in a causal decoder sees "
            "only itself (every text with the same first token gets the same score): use an encoder backbone "
            "(backbone.name_or_path=packaged:all-minilm-l6-v2) or another readout"
        )
    return classes[kind](hidden, n_layers)
