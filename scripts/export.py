"""Export a run's trained sampler: its LoRA as a PEFT adapter directory, or the merged model.

    python scripts/export.py --run-dir RUN --out sampler_adapter                    # RUN/checkpoints/last.ckpt
    python scripts/export.py --run-dir RUN --ckpt RUN/checkpoints/step_000200.ckpt --out merged --merged

The adapter directory (``adapter_config.json``, ``adapter_model.safetensors``, the tokenizer and
``sampler.json``: the base model, the task's prompt settings and the checkpoint) loads with
``PeftModel.from_pretrained(base, DIR)`` and in LoRA-serving inference servers. ``--merged`` writes
the base model with the LoRA folded in, a plain ``AutoModelForCausalLM`` directory. A run that
trains every weight (``model.lora: null``) is always written as a full model. The sampler's prompt
and action limits are the task's: draw with the run's config (``scripts/evaluate.py``) to keep them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a training run's output directory (holds .hydra/config.yaml)")
    ap.add_argument("--ckpt", help="the checkpoint (default: RUN/checkpoints/last.ckpt)")
    ap.add_argument("--out", required=True, help="the directory to write (must not exist, or be empty)")
    ap.add_argument("--merged", action="store_true", help="write the base model with the LoRA merged in")
    args = ap.parse_args(argv)

    import torch

    from gflownet.runner import apply_checkpoint, build_module, load_run_config, quiet_libraries

    quiet_libraries()
    run = Path(args.run_dir)
    ckpt = Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    out = Path(args.out)
    try:
        cfg = load_run_config(run)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} not found: pass --ckpt")
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--out {out} exists and is not empty: choose a new directory")
        module = build_module(cfg)
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        apply_checkpoint(module, state, ckpt)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(str(err))
    sampler = module.sampler
    is_peft = hasattr(sampler, "peft_config")
    kind = "adapter" if is_peft and not args.merged else "merged" if is_peft else "full"
    if kind == "merged":
        sampler = sampler.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    sampler.save_pretrained(out)
    module.tokenizer.save_pretrained(out)
    info = {"kind": kind, "base_model": str(cfg.model.sampler.name_or_path), "checkpoint": str(ckpt),
            "global_step": int(state.get("global_step", 0)), "task": module.task.name,
            "termination_text": module.task.limits.termination_text, "min_len": module.space.min_len,
            "max_len": module.space.max_len, "smoothing": state.get("smoothing")}
    (out / "sampler.json").write_text(json.dumps(info, indent=1))
    print(f"wrote the {kind} sampler of {ckpt} (step {info['global_step']}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
