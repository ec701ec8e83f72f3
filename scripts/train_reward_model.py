"""Train a reward model (``gflownet/reward_models``) with Hydra and Lightning, as train.py trains the sampler.

    python scripts/train_reward_model.py data.path=runs/x/samples.jsonl "data.template='{edit_fact} {sample}'" \\
        data.target_field=log_contradiction data.group_field=prompt
    python scripts/train_reward_model.py objective=preference data.format=hh_rlhf data.path=hh/train.jsonl.gz
    python scripts/train_reward_model.py --cfg job          # the composed config (configs/reward_model.yaml)

The run directory holds ``checkpoints/last.ckpt`` (a reward: ``reward=learned reward.checkpoint=...``)
and ``summary.json`` (data counts and the last validation metrics).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("train_reward_model")


def run(cfg: DictConfig) -> dict:
    import pytorch_lightning as pl

    from gflownet.core.checkpointing import AtomicCheckpointIO
    from gflownet.reward_models.module import RewardModelModule
    from gflownet.runner import instantiate_group, quiet_libraries

    quiet_libraries()
    if cfg.objective == "preference" and cfg.data.format != "hh_rlhf":
        raise ValueError(f"objective=preference trains on chosen/rejected pairs: set data.format=hh_rlhf (got {cfg.data.format})")
    if cfg.objective != "preference" and cfg.data.format == "hh_rlhf":
        raise ValueError("data.format=hh_rlhf holds preference pairs: set objective=preference")
    if cfg.objective == "classification" and cfg.data.format != "labelled":
        raise ValueError(f"objective=classification needs data.format=labelled (got {cfg.data.format})")
    if cfg.objective == "regression" and cfg.data.format != "scored":
        raise ValueError(f"objective=regression needs data.format=scored (got {cfg.data.format})")
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = RewardModelModule(OmegaConf.to_container(cfg.backbone, resolve=True), readout=cfg.readout,
                               objective=cfg.objective, n_classes=int(cfg.n_classes), models_dir=cfg.paths.models_dir,
                               **OmegaConf.to_container(cfg.optimizer, resolve=True))
    trainer = hydra.utils.instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False,
                                      callbacks=instantiate_group(cfg.get("callbacks")), plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    trainer.validate(module, datamodule=datamodule, verbose=False)  # the final weights, whatever the interval
    summary = {"global_step": trainer.global_step, "data": module.data_counts, "val": module.last_val,
               "last_checkpoint": str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"),
               "model": module.model.describe()}
    trainer.save_checkpoint(summary["last_checkpoint"])  # every rank calls it; rank 0 writes (final metrics inside)
    if trainer.is_global_zero:
        (Path(cfg.paths.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("reward model: %s", json.dumps(summary["val"]))
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="reward_model")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
