"""Build everything from a composed Hydra config and run ``trainer.fit`` (called by ``train.py``)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Hide download/loading progress bars and import-time noise that would bury the training log."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # The frozen base model is in eval mode by design (only LoRA trains; scoring switches modes).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`")
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a config group such as ``logger`` or ``callbacks``."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_task(cfg: DictConfig):
    from gflownet.lightning_module import ContradictionGFNTask

    def plain(node):
        return OmegaConf.to_container(node, resolve=True)

    return ContradictionGFNTask(
        model=plain(cfg.model), reward=plain(cfg.reward), loss=plain(cfg.loss), buffer=plain(cfg.buffer),
        task=plain(cfg.task), models_dir=str(cfg.paths.models_dir), seed=int(cfg.seed),
    )


def run_training(cfg: DictConfig) -> dict:
    quiet_libraries()
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    task = build_task(cfg)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist: pass an existing checkpoint or ckpt_path=null")
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)

    summary = {"global_step": trainer.global_step, "output_dir": str(cfg.paths.output_dir)}
    for cb in callbacks:
        if isinstance(cb, pl.callbacks.ModelCheckpoint):
            summary["last_checkpoint"] = cb.last_model_path or cb.best_model_path
    for lg in loggers:
        if isinstance(lg, pl.loggers.WandbLogger):
            summary["wandb_dir"] = lg.experiment.dir if hasattr(lg.experiment, "dir") else str(lg.save_dir)
    if trainer.is_global_zero:
        n_rows = int(cfg.get("final_probe_questions", 0))
        if n_rows > 0:
            print_probe_table(task, datamodule, n_rows)
        for key, value in summary.items():
            log.info("%s: %s", key, value)
    return summary


def print_probe_table(task, datamodule, n_rows: int) -> None:
    """Sample questions for held-out records and print them with their answers and rewards."""
    from rich.console import Console
    from rich.table import Table

    records = (datamodule.val_records or datamodule.train_records)[: max(1, min(4, n_rows))]
    per_record = max(1, math.ceil(n_rows / len(records)))
    table = Table(title=f"Sampled questions after {task.global_step} steps (temperature 1)", show_lines=True)
    for col in ("subject", "edit fact", "question", "answer", "log C", "log P", "log R"):
        table.add_column(col, overflow="fold")
    for record, res in task.probe(records, per_record):
        for i in range(len(res.questions)):
            table.add_row(
                record.subject, record.edit_fact, res.questions[i], res.answers[i] or "(empty)",
                f"{float(res.log_c[i]):.2f}", f"{float(res.log_p[i]):.1f}", f"{float(res.terminal_unscaled[i]):.2f}",
            )
    Console(width=160).print(table)
