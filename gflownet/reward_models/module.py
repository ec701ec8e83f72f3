"""The reward model's LightningModule: losses by objective, validation metrics, lean checkpoints.

Losses:
* ``preference``: Bradley-Terry, ``-log sigmoid(s(chosen) - s(rejected))``;
* ``regression``: mean squared error on standardised targets (train mean and standard deviation);
* ``classification``: cross-entropy.

Validation (``val/*``, over the whole validation split, gathered across DDP ranks):
* ``preference``: ``accuracy`` (s(chosen) > s(rejected)) and ``mean_margin``;
* ``regression``: ``pearson``, ``spearman``, ``rmse`` in the target's units and ``rmse_constant``,
  the error of predicting the training mean (a model that beats nothing shows it here);
* ``classification``: ``accuracy`` and ``majority_accuracy`` (always the most frequent training class).
``val/metric`` repeats the main one (accuracy, or pearson) for checkpoint selection.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from gflownet.reward_models.model import build_reward_model


def correlations(pred: Tensor, target: Tensor) -> dict[str, float]:
    p, t = pred.double().cpu(), target.double().cpu()
    out = {"rmse": float(((p - t) ** 2).mean().sqrt())}
    if p.numel() < 3 or float(p.std()) == 0.0 or float(t.std()) == 0.0:
        return {**out, "pearson": float("nan"), "spearman": float("nan")}
    out["pearson"] = float(torch.corrcoef(torch.stack([p, t]))[0, 1])
    pr, tr = (torch.tensor(pd.Series(x.numpy()).rank().to_numpy()) for x in (p, t))  # average ranks for ties
    out["spearman"] = float(torch.corrcoef(torch.stack([pr, tr]))[0, 1])
    return out


class RewardModelModule(pl.LightningModule):
    def __init__(self, backbone: dict, readout: str = "layer_attention", objective: str = "regression", n_classes: int = 2,
                 lr: float = 1e-3, backbone_lr: float = 2e-5, weight_decay: float = 0.0, models_dir: str | None = None):
        super().__init__()
        backbone = dict(backbone)
        self.save_hyperparameters({"backbone": backbone, "readout": readout, "objective": objective,
                                   "n_classes": n_classes, "lr": lr, "backbone_lr": backbone_lr, "weight_decay": weight_decay})
        self.model = build_reward_model(backbone, readout, objective, n_classes, models_dir)
        self.backbone_cfg, self.objective = backbone, objective
        if not lr > 0 or not backbone_lr > 0:
            raise ValueError(f"optimizer lr and backbone_lr must be positive, got {lr} and {backbone_lr}")
        self.lr, self.backbone_lr, self.weight_decay = float(lr), float(backbone_lr), float(weight_decay)
        self.strict_loading = False  # checkpoints hold only what trains (and the head's statistics)
        self._val: list[tuple[Tensor, Tensor]] = []
        self.majority_class: int | None = None
        self.data_counts: dict[str, int] = {}
        self.last_val: dict[str, float] = {}

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or stage != "fit":
            return
        dm.setup(stage)
        self.data_counts = dict(dm.counts)
        if self.objective == "regression":  # a resumed run then loads the checkpoint's values over these
            mean, std = dm.target_stats()
            self.model.target_mean.fill_(mean)
            self.model.target_std.fill_(std)
        if self.objective == "classification":
            labels = torch.tensor([e.target for e in dm.train_set]).long()
            if int(labels.max()) >= self.model.head.out_features:
                raise ValueError(f"data has class {int(labels.max())} but n_classes={self.model.head.out_features}: "
                                 f"set n_classes (or data.classes)")
            self.majority_class = int(labels.bincount().argmax())

    # ------------------------------------------------------------------ scores and losses
    def raw_scores(self, texts: list[tuple[str, ...]]) -> Tensor:
        flat = [t for group in texts for t in group]
        out = self.model(**self.model.encode(flat))
        return out.view(len(texts), len(texts[0]), *out.shape[1:]).float()

    def loss_and_outputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        raw = self.raw_scores(batch["texts"])
        target = batch["target"].to(raw.device)
        if self.objective == "preference":
            margin = raw[:, 0] - raw[:, 1]
            return -F.logsigmoid(margin).mean(), margin, target
        if self.objective == "regression":
            pred = raw[:, 0]
            z = (target.float() - self.model.target_mean) / self.model.target_std
            return F.mse_loss(pred, z), pred * self.model.target_std + self.model.target_mean, target.float()
        logits = raw[:, 0]
        return F.cross_entropy(logits, target.long()), logits.argmax(-1).float(), target.float()

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.loss_and_outputs(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite reward-model loss {float(loss)} at step {self.global_step}: "
                                     f"lower optimizer.lr / optimizer.backbone_lr or check the data's targets")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, out, target = self.loss_and_outputs(batch)
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["texts"]))
        self._val.append((out.detach(), target.detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        out = torch.cat([o for o, _ in self._val])
        target = torch.cat([t for _, t in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:  # every rank's validation rows (the sampler pads to equal shares)
            out, target = self.all_gather(out).reshape(-1), self.all_gather(target).reshape(-1)
        metrics: dict[str, float] = {"n": float(out.numel())}
        if self.objective == "preference":
            metrics["accuracy"] = float((out > 0).float().mean())
            metrics["mean_margin"] = float(out.mean())
            metrics["metric"] = metrics["accuracy"]
        elif self.objective == "regression":
            metrics.update(correlations(out, target))
            metrics["rmse_constant"] = float(((target.double().cpu() - float(self.model.target_mean)) ** 2).mean().sqrt())
            metrics["metric"] = metrics["pearson"]
        else:
            metrics["accuracy"] = float((out == target).float().mean())
            if self.majority_class is not None:
                metrics["majority_accuracy"] = float((target == self.majority_class).float().mean())
            metrics["metric"] = metrics["accuracy"]
        self.last_val = metrics
        for key, value in metrics.items():
            if math.isfinite(value):
                self.log(f"val/{key}", value, rank_zero_only=True)

    # ------------------------------------------------------------------ optimiser and checkpoints
    def configure_optimizers(self):
        head = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        backbone = [p for n, p in self.model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
        groups = [{"params": head, "lr": self.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.backbone_lr})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{k}" for k in self.model.trainable_state()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["reward_model"] = {
            **self.model.describe(), "backbone_config": self.backbone_cfg, "n_classes": int(self.hparams.n_classes),
            "data": self.data_counts, "val": self.last_val,
        }
