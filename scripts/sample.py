"""Draw samples from a trained sampler for any task's records, with their rewards.

    python scripts/sample.py --run-dir RUN --n 16 --out samples.jsonl              # the run's held-out records
    python scripts/sample.py --run-dir RUN --ckpt RUN/checkpoints/step_000200.ckpt --split all --n 8 --out s.jsonl
    python scripts/sample.py --run-dir RUN --data my_records.jsonl --n 32 --out s.jsonl --csv s.csv

For each record: ``--n`` samples from the checkpoint's sampler (temperature 1, the policy itself),
scored by the run's own reward as at the checkpoint's step (for the contradiction task: the
answerer's answer, the judge's log C, the likelihood; with an edited answerer, that answerer).
Writes one JSON line per sample: the record (as ``describe`` names it), the sample, its log R
(unscaled), its log-probability under the sampler, and every reward component and text; ``--csv``
writes the same as a table. ``--data`` reads other records with the run's own data config
(``data.path`` set to the file, nothing held out). ``--untrained`` draws from the sampler before
training instead (a baseline).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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
    ap.add_argument("--split", choices=["val", "train", "all"], default="val", help="which of the run's records")
    ap.add_argument("--data", help="other records: a file the run's data config reads (data.path)")
    ap.add_argument("--max-records", type=int, default=None)
    ap.add_argument("--n", type=int, default=8, help="samples per record")
    ap.add_argument("--untrained", action="store_true", help="draw from the sampler before training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON lines, one per sample")
    ap.add_argument("--csv", help="also write the samples as CSV")
    args = ap.parse_args(argv)
    if args.n < 1:
        sys.exit(f"--n {args.n}: draw at least one sample per record")

    import hydra
    import torch
    from omegaconf import OmegaConf, open_dict

    from gflownet.core.losses import terminal_states, trajectory_log_prob
    from gflownet.core.progress import Progress
    from gflownet.runner import apply_checkpoint, build_module, load_run_config, quiet_libraries

    quiet_libraries()
    run = Path(args.run_dir)
    ckpt = Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    try:
        cfg = load_run_config(run)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(str(err))
    if not args.untrained and not ckpt.is_file():
        sys.exit(f"checkpoint {ckpt} not found: pass --ckpt, or --untrained")
    data_cfg = cfg.data
    if args.data:
        if not Path(args.data).is_file():
            sys.exit(f"--data {args.data}: no such file")
        if "path" not in data_cfg:
            sys.exit(f"the run's data config ({data_cfg.get('_target_')}) reads no file (no data.path): use --split")
        data_cfg = OmegaConf.merge(data_cfg, {"path": str(Path(args.data).resolve())})
        with open_dict(data_cfg):
            for key, value in (("val_size", 0), ("max_records", None)):
                if key in data_cfg:
                    data_cfg[key] = value
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.setup("fit")
    if args.data:
        records = datamodule.train_records + datamodule.val_records
    else:
        records = {"val": datamodule.val_records, "train": datamodule.train_records,
                   "all": datamodule.train_records + datamodule.val_records}[args.split]
    records = records[: args.max_records] if args.max_records else records
    if not records:
        sys.exit(f"no records to sample for ({args.data or args.split})")

    module = build_module(cfg)
    module.eval()
    step = 0
    if not args.untrained:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        try:
            apply_checkpoint(module, state, ckpt)
        except ValueError as err:
            sys.exit(str(err))
        step = int(state.get("global_step", 0))
    module.at_step(step)  # the reward's phase and temperature of the checkpoint's step
    module.build_reward()
    module.rng = torch.Generator().manual_seed(args.seed)

    rows, progress = [], Progress("sampling", len(records))
    for record in records:
        prompt = module.prompts_for([record])[0]
        if args.untrained and hasattr(module.sampler, "disable_adapter"):
            with module.sampler.disable_adapter():
                traj = module.sample([prompt], args.n, explore=False)
        else:
            traj = module.sample([prompt], args.n, explore=False)
        ids, lengths = traj.sample_ids.cpu(), traj.lengths.cpu()
        log_q = trajectory_log_prob(traj.log_pf, traj.log_pterm, traj.lengths).cpu()
        out = module.compute_rewards([prompt] * args.n, ids, lengths, terminal_states(lengths),
                                   module.context([record], args.n))
        samples = module.texts(ids, lengths)
        log_r = out.log_r.gather(1, lengths[:, None]).squeeze(1)
        for i in range(args.n):
            row = {"record": module.task.describe(record), "sample": samples[i], "log_r": float(log_r[i]),
                   "log_prob": float(log_q[i]), "length": int(lengths[i])}
            row.update({k: (float(v[i]) if math.isfinite(float(v[i])) else None) for k, v in out.components.items()})
            row.update({k: v[i] for k, v in out.texts.items()})
            rows.append(row)
        progress.step()

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if args.csv:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(args.csv, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    which = "the untrained sampler" if args.untrained else f"{ckpt} (step {step})"
    print(f"wrote {len(rows)} samples of {len(records)} records from {which} to {out_path}"
          + (f" and {args.csv}" if args.csv else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
