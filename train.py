"""Train the contradiction-question GFlowNet.

    python train.py                                  # offline default: SmolLM2-135M, offline judge, CPU
    python train.py experiment=demo                  # a short real run (the README's first command)
    python train.py experiment=full_scale            # gpt2-large, DeBERTa-v3 MNLI judge, 4-GPU DDP, Redis
    python train.py loss=tb buffer=redis reward.likelihood_weight=0.1 gfn.pf_temp_high=2.0
    python train.py ckpt_path=path/to/last.ckpt      # resume
    python train.py --cfg job                        # print the composed config

Everything is built from ``configs/`` (see ``configs/train.yaml``); this file only wires it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from gflownet.runner import main_with_refusals, run_training

    main_with_refusals(run_training, cfg)  # bad input: its message alone (HYDRA_FULL_ERROR=1: the traceback)


if __name__ == "__main__":
    main()
