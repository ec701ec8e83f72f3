"""A reward model: a transformer backbone, a readout (``readouts.py``) and a linear head.

    score(text) = head(readout(backbone hidden states of text))

The backbone is any Hugging Face model reference the rest of the project loads (hub id, local
directory, ``packaged:NAME``), a causal LM or an encoder; it is ``frozen``, adapted with ``lora``
or trained in ``full``. The objective fixes the head and what a score means:

* ``preference``: one scalar, trained with Bradley-Terry on chosen/rejected pairs; scores are
  log-odds up to a constant (P(a preferred to b) = sigmoid(s(a) - s(b))).
* ``regression``: one scalar in the target's own units (targets are standardised for training and
  the head's output is mapped back), e.g. a predicted log C.
* ``classification``: ``n_classes`` logits; ``score`` returns log-probabilities.

Checkpoints hold the readout, the head, the target statistics, the trainable backbone weights
(adapters, or everything in ``full``) and a fingerprint of the backbone, so that a checkpoint is
refused on a different backbone (``load_reward_model``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from gflownet.core.modeling import _from_pretrained, load_tokenizer, lora_target_modules, parse_dtype
from gflownet.reward_models.readouts import build_readout

log = logging.getLogger(__name__)

OBJECTIVES = ("preference", "regression", "classification")
TRAIN_MODES = ("frozen", "lora", "full")
ENCODER_LORA_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "deberta-v2": ["query_proj", "value_proj"]}


def is_causal(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_backbone(name_or_path: str, models_dir: str | Path | None = None, train: str = "frozen",
                  lora: dict | None = None, dtype: str = "float32"):
    """The backbone without its LM or classification head (``AutoModel``), set up for ``train``."""
    from transformers import AutoModel

    if train not in TRAIN_MODES:
        raise ValueError(f"unknown backbone.train {train!r}: use one of {', '.join(TRAIN_MODES)}")
    model = _from_pretrained(AutoModel.from_pretrained, name_or_path, models_dir, dtype=parse_dtype(dtype))
    model.config.use_cache = False
    if train == "frozen":
        model.requires_grad_(False)
        model.eval()
        return model
    if train == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = dict(lora or {})
    targets = lora.pop("target_modules", "auto")
    model_type = getattr(model.config, "model_type", None)
    if targets == "auto" and model_type in ENCODER_LORA_TARGETS:
        targets = ENCODER_LORA_TARGETS[model_type]
    targets = lora_target_modules(model, targets)
    config = LoraConfig(r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 16)), lora_dropout=float(lora.get("dropout", 0.0)),
                        target_modules=targets, fan_in_fan_out=model_type == "gpt2")
    return get_peft_model(model, config)


class RewardModel(nn.Module):
    def __init__(self, backbone, tokenizer, readout: str = "layer_attention", objective: str = "regression",
                 n_classes: int = 2, max_length: int = 256, backbone_name: str = "", train: str = "frozen"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
        if objective == "classification" and n_classes < 2:
            raise ValueError(f"classification needs n_classes >= 2, got {n_classes}")
        config = backbone.config.get_text_config() if hasattr(backbone.config, "get_text_config") else backbone.config
        hidden, n_layers = int(config.hidden_size), int(config.num_hidden_layers)
        self.backbone, self.tokenizer = backbone, tokenizer
        self.objective, self.train_mode, self.max_length = objective, train, int(max_length)
        self.backbone_name, self.readout_kind = backbone_name, readout
        self.causal = is_causal(backbone.config)
        self.readout = build_readout(readout, hidden, n_layers, self.causal)
        self.head = nn.Linear(hidden, n_classes if objective == "classification" else 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # regression targets are standardised for training; score() maps back to their units
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        from gflownet.editing.model_parts import fingerprint

        self.backbone_fingerprint = fingerprint(backbone)  # before training: what the reference must load again

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("a reward model scores a non-empty list of strings")
        batch = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Raw head output: (B,) standardised score, or (B, C) logits for classification."""
        grad = torch.is_grad_enabled() and self.train_mode != "frozen"
        with torch.set_grad_enabled(grad):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        features = self.readout(out.hidden_states, attention_mask)
        logits = self.head(features.to(self.head.weight.dtype))
        return logits if self.objective == "classification" else logits.squeeze(-1)

    @torch.no_grad()
    def score(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """(B,) scores in the objective's units (classification: (B, C) log-probabilities), on CPU."""
        was_training = self.training
        self.eval()
        try:
            parts = []
            for i in range(0, len(texts), batch_size):
                raw = self(**self.encode(texts[i:i + batch_size])).float()
                if self.objective == "classification":
                    parts.append(raw.log_softmax(-1).cpu())
                elif self.objective == "regression":
                    parts.append((raw * self.target_std + self.target_mean).cpu())
                else:
                    parts.append(raw.cpu())
            return torch.cat(parts)
        finally:
            self.train(was_training)

    def trainable_state(self) -> dict[str, Tensor]:
        """What a checkpoint keeps: readout, head, target statistics and the trainable backbone weights."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("backbone.") or k in trainable}

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone_name, "train": self.train_mode, "readout": self.readout_kind,
                "objective": self.objective, "n_classes": self.head.out_features, "max_length": self.max_length,
                "backbone_fingerprint": self.backbone_fingerprint}


def build_reward_model(backbone: dict, readout: str, objective: str, n_classes: int = 2,
                       models_dir: str | Path | None = None) -> RewardModel:
    """From config: ``backbone: {name_or_path, train, lora, dtype, max_length}``."""
    backbone = dict(backbone)
    name = backbone.get("name_or_path")
    if not name:
        raise ValueError("reward model: set backbone.name_or_path (a hub id, a directory or packaged:NAME)")
    train = backbone.get("train", "frozen")
    model = load_backbone(name, models_dir, train=train, lora=backbone.get("lora"), dtype=backbone.get("dtype", "float32"))
    tokenizer = load_tokenizer(name, models_dir, padding_side="right")
    return RewardModel(model, tokenizer, readout=readout, objective=objective, n_classes=n_classes,
                       max_length=int(backbone.get("max_length", 256)), backbone_name=name, train=train)


def load_reward_model(checkpoint: str | Path, models_dir: str | Path | None = None,
                      device: str | torch.device = "cpu") -> RewardModel:
    """A trained reward model from a ``scripts/train_reward_model.py`` checkpoint (Lightning ``.ckpt``)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"reward model checkpoint {path} does not exist: train one with "
                                f"`python scripts/train_reward_model.py ...` and pass its checkpoints/last.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    spec = state.get("reward_model")
    if not isinstance(spec, dict):
        raise ValueError(f"{path} is not a reward-model checkpoint (no 'reward_model' entry): "
                         f"pass a checkpoint written by scripts/train_reward_model.py")
    model = build_reward_model(spec["backbone_config"], spec["readout"], spec["objective"], spec["n_classes"], models_dir)
    found = model.backbone_fingerprint
    if found != spec["backbone_fingerprint"]:
        raise ValueError(f"{path} was trained on backbone {spec['backbone_config']['name_or_path']!r} with fingerprint "
                         f"{spec['backbone_fingerprint']}, but that reference now loads a model with fingerprint {found}: "
                         f"point backbone.name_or_path at the model it was trained on, or retrain")
    weights = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"{path} holds weights this reward model does not have: {unexpected[:5]}")
    needed = set(model.trainable_state())
    lost = sorted(needed & set(missing))
    if lost:
        raise ValueError(f"{path} lacks trained weights {lost[:5]}: the checkpoint is incomplete")
    model.requires_grad_(False)
    return model.to(device).eval()
