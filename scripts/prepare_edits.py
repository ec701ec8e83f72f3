"""Compute and save a run's weight edit set before training (answerer/edit=rome or lora_ft).

    python scripts/prepare_edits.py experiment=edit_probe data=counterfact data.max_records=16

Takes train.py's overrides, builds the edited answerer exactly as the run's reward will, and saves
the edit set where the run looks for it (``answerer.edit.path``, or its digest-named file under
``answerer.edit.cache_dir``). The run then loads it instead of editing. Use it before a multi-GPU
run: under DDP the reward (and so the edit) is built on rank 0 while the other ranks wait for it in
their first collective, and hundreds of ROME edits can outlast the process group's timeout.
``run_4gpu_ddp.sh`` and ``scripts/slurm_multinode.sbatch`` run it first. With no weight edit
configured it says so and exits 0.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from gflownet.runner import compose_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = compose_config(argv)
    edit = cfg.get("answerer", {}).get("edit") if "answerer" in cfg else None
    method = edit.get("method", "none") if edit is not None else "none"
    if method not in ("rome", "lora_ft"):
        print(f"prepare_edits: answerer/edit={method} changes no weights: nothing to prepare")
        return 0
    import torch

    from gflownet.core.modeling import load_causal_lm, load_tokenizer
    from gflownet.tasks.contradiction.answerer import Answerer
    from gflownet.tasks.contradiction.reward import edit_weights

    answerer = cfg.model.answerer
    source = cfg.model.sampler.name_or_path if answerer.name_or_path == "shared" else answerer.name_or_path
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(source, cfg.paths.models_dir, dtype=answerer.get("dtype", "float32")).to(device)
    tokenizer = load_tokenizer(source, cfg.paths.models_dir)
    # the reward's own answer prompt: answerer.edit.answer_format trains each edit in it (a different edit set)
    answer = OmegaConf.to_container(cfg.reward.answer, resolve=True) if "answer" in cfg.reward else {}
    manifest = edit_weights(model, tokenizer, source, OmegaConf.to_container(edit, resolve=True),
                            answer_prompt=Answerer(model, tokenizer, **answer).prompt)
    print(f"prepare_edits: {manifest['edits']} {method} edits of {source} ready ({manifest.get('seconds', 0)} s when computed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
