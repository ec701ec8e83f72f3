"""Smooth a trained run: maximum likelihood on the best distinct samples its replay buffer kept.

    python scripts/smooth.py --run-dir RUN --ckpt RUN/checkpoints/step_000200.ckpt --top 4
    python scripts/evaluate.py --run-dir RUN --ckpt RUN/checkpoints/smoothed.ckpt --variants trained ...

The smoothing stage of GFNOrg/red-teaming (Lee et al. 2024; ``gflownet/core/smoothing.py``): the
GFlowNet run explores, and the *untrained* sampler (the run's model with a fresh LoRA) is then
fine-tuned by maximum likelihood on what it found: for every training prompt, the buffer's entries
at the checkpoint's reward signature that pass ``--min`` thresholds, best reward first, one per group
of meaning (MiniLM cosine ``--cosine``), at most ``--top``. Only training records' prompts are used
(the run's held-out records never reach the buffer). ``--held-out-share`` of those prompts is kept
out of the maximum-likelihood data to report a held-out NLL per token while it trains.

``--samples FILE.jsonl`` smooths on the questions a search found instead of the buffer (search, then
amortise): rows with ``prompt`` (the sampler's prompt), ``question`` and ``token_ids`` (the question's
tokens and the termination), as ``scripts/leak_report.py`` writes them, kept where each ``--where``
field is true (``--where verified_leak``), on the run's training prompts only; ``--ckpt`` then gives
the reward step and the log Z head, and its buffer is not read. Repeat ``--samples`` to pool searches
(e.g. two seeds); ``--drop-glitchy`` leaves out the questions ``core.metrics.is_glitchy`` flags (the
rule of evaluate.py's ``glitch_share``: a sampler fine-tuned on them learns to write them).

Writes a checkpoint (default ``smoothed.ckpt`` beside ``--ckpt``) that holds the smoothed sampler's
LoRA, the source's log Z head (a GFlowNet quantity: it does not describe the smoothed sampler) and
its ``global_step`` (so the evaluation scores with the same reward phase and temperature), plus a
``smoothing`` block; and ``smoothing.json`` beside it with the settings, the loss history and the
questions trained on. The in-memory buffer is read from the checkpoint; the Redis buffer from the
Redis the run's configuration names (it must still hold the run's entries).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--min {text!r}: use NAME=VALUE, e.g. --min reward=-40 or "
                                         f"--min log_contradiction=-0.69") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a training run's output directory (holds .hydra/config.yaml)")
    ap.add_argument("--ckpt", required=True, help="the checkpoint whose buffer (and reward step) to smooth on")
    ap.add_argument("--top", type=int, default=4, help="at most this many distinct questions per prompt")
    ap.add_argument("--min", type=threshold, action="append", default=[], metavar="NAME=VALUE",
                    help="keep entries whose reward (NAME=reward) or numeric reward component is >= VALUE; repeatable")
    ap.add_argument("--cosine", type=float, default=0.7, help="questions this similar (MiniLM cosine) are one")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--held-out-share", type=float, default=0.1,
                    help="share of the prompts kept out of training to report a held-out NLL (0: none)")
    ap.add_argument("--samples", action="append", default=[], metavar="FILE",
                    help="a JSONL of searched questions to smooth on instead of the buffer "
                         "(scripts/leak_report.py's leak_report.jsonl); repeatable")
    ap.add_argument("--drop-glitchy", action="store_true",
                    help="leave out glitchy questions (control characters, symbol runs, 25 characters without a space)")
    ap.add_argument("--where", action="append", default=[], metavar="FIELD",
                    help="with --samples: keep rows whose FIELD is true (e.g. verified_leak); repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="the smoothed checkpoint (default: smoothed.ckpt beside --ckpt)")
    args = ap.parse_args(argv)
    if not 0 <= args.held_out_share < 1:
        sys.exit(f"--held-out-share {args.held_out_share}: use a share in [0, 1)")
    if args.where and not args.samples:
        sys.exit("--where filters --samples rows: pass --samples FILE")
    if args.samples and args.min:
        sys.exit("--min thresholds a buffer's rewards; searched --samples are filtered with --where")
    for path in args.samples:
        if not Path(path).is_file():
            sys.exit(f"--samples {path}: no such file")

    import hydra
    import torch

    from gflownet.core.metrics import Embedder, is_glitchy
    from gflownet.core.modeling import resolve
    from gflownet.core.progress import Progress
    from gflownet.core.smoothing import best_distinct, smooth
    from gflownet.runner import build_module, load_run_config, quiet_libraries

    quiet_libraries()
    run, ckpt = Path(args.run_dir), Path(args.ckpt)
    try:
        cfg = load_run_config(run)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(str(err))
    if not ckpt.is_file():
        sys.exit(f"checkpoint {ckpt} not found")
    out = Path(args.out) if args.out else ckpt.parent / "smoothed.ckpt"
    if out.resolve() == ckpt.resolve():
        sys.exit(f"--out {out} is the source checkpoint: write the smoothed one elsewhere")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "smoothing" in state:
        sys.exit(f"{ckpt} is already a smoothed checkpoint: smooth the GFlowNet run's own checkpoint")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg)  # the untrained sampler: the run's model with a fresh LoRA
    module.eval()
    source = state["state_dict"]
    sampler_keys = {n for n, p in module.named_parameters() if p.requires_grad and n.startswith("sampler.")}
    missing = sorted(sampler_keys - set(source))
    if missing:  # checked before the work, not after it
        sys.exit(f"{ckpt} does not fit this run's model: it lacks {missing[:3]}")
    step = int(state.get("global_step", 0))
    module.at_step(step)
    module.build_reward()  # the reward phase at that step decides which entries are the run's own
    signature = module.buffer_signature()

    embedder = module.embedder or Embedder(resolve("packaged:all-minilm-l6-v2", module.models_dir)[1])
    prompts = list(dict.fromkeys(module.prompts_for(datamodule.train_records)))
    minimum = dict(args.min)
    if args.samples:
        try:
            found = searched_entries([Path(p) for p in args.samples], args.where, set(prompts))
        except ValueError as err:
            sys.exit(str(err))
        source_of = lambda prompt: found.get(prompt, [])  # noqa: E731
    else:
        module.buffer = module.buffer_factory()
        saved = (state.get("gfn_state") or {}).get("buffer") or {}
        if saved.get("kind") == "memory":
            for per_rank in saved.get("per_rank", []):
                module.buffer.load_state(per_rank)
        elif saved.get("kind") != "redis":
            sys.exit(f"{ckpt} holds no replay buffer (kind {saved.get('kind')!r}): smoothing needs the run's buffer "
                     "(or searched questions: --samples)")
        source_of = lambda prompt: module.buffer.entries(prompt, signature)  # noqa: E731
    chosen: dict[str, list] = {}
    glitchy = 0
    try:
        for prompt in prompts:
            entries = list(source_of(prompt))
            if args.drop_glitchy:
                kept = [e for e in entries if not is_glitchy(e.text)]
                glitchy += len(entries) - len(kept)
                entries = kept
            picked = best_distinct(entries, args.top, minimum, embedder, args.cosine)
            if picked:
                chosen[prompt] = picked
    except KeyError as err:
        sys.exit(str(err.args[0]))
    if args.drop_glitchy:
        print(f"--drop-glitchy: {glitchy} glitchy questions left out", flush=True)
    if not chosen and args.samples:
        sys.exit(f"no rows of {', '.join(args.samples)} with {' and '.join(args.where) or 'any fields'} true on the {len(prompts)} "
                 "training prompts: search more questions, or search the run's training records (leak_report.py --split train)")
    if not chosen:
        sys.exit(f"no buffer entries at the checkpoint's signature pass {minimum or 'no thresholds'} for the "
                 f"{len(prompts)} training prompts: lower --min, or check that the run stored entries")
    generator = torch.Generator().manual_seed(args.seed)
    with_entries = list(chosen)
    order = torch.randperm(len(with_entries), generator=generator).tolist()
    n_held = int(round(args.held_out_share * len(with_entries)))
    held_prompts = {with_entries[i] for i in order[:n_held]}
    pairs = [(p, e) for p in with_entries if p not in held_prompts for e in chosen[p]]
    held_out = [(p, e) for p in with_entries if p in held_prompts for e in chosen[p]]
    print(f"smoothing on {len(pairs)} questions from {len(with_entries) - n_held} prompts "
          f"({len(held_out)} from {n_held} prompts held out; {len(prompts) - len(with_entries)} prompts had none)",
          flush=True)

    t0 = time.perf_counter()
    history = smooth(module, pairs, args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     held_out=held_out, progress=Progress("smoothing", args.steps, unit="steps"))
    seconds = time.perf_counter() - t0

    smoothed = module.state_dict()
    settings = {"source": str(ckpt), "samples": args.samples, "where": args.where, "drop_glitchy": args.drop_glitchy, "top": args.top, "min": minimum,
                "cosine": args.cosine, "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "held_out_share": args.held_out_share, "seed": args.seed,
                "signature": signature, "questions": len(pairs), "held_out_questions": len(held_out),
                "seconds": round(seconds, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "state_dict": {k: (smoothed[k].detach().cpu().clone() if k in sampler_keys else v) for k, v in source.items()},
        "global_step": step, "epoch": state.get("epoch", 0),
        "pytorch-lightning_version": state.get("pytorch-lightning_version"),
        "smoothing": settings,
    }, out)
    report = {"settings": settings, "history": history,
              "questions": {p: [e.text for e in es] for p, es in chosen.items()},
              "held_out_prompts": sorted(held_prompts)}
    (out.parent / f"{out.stem}.json").write_text(json.dumps(report, indent=1))
    trained = [row for row in history if "loss" in row]
    held = [row["held_out_nll"] for row in history if row.get("held_out_nll") is not None]
    print(f"smoothed in {seconds:.0f} s: loss {trained[0]['loss']:.3f} -> {trained[-1]['loss']:.3f}"
          + (f", held-out NLL per token {held[0]:.3f} -> {held[-1]:.3f}" if held else "")
          + f"; wrote {out} and {out.parent / (out.stem + '.json')}", flush=True)
    return 0


def searched_entries(paths: list[Path], where: list[str], training_prompts: set[str]) -> dict[str, list]:
    """Per training prompt, the rows of searches' JSONL files (``prompt``, ``question``, ``token_ids``) whose
    ``where`` fields are all true, as buffer entries of reward 0 (all equal: ``best_distinct`` then keeps
    one per meaning). Rows on other prompts (held-out records) are left out and counted; a row that lacks
    a field is an error naming its line."""
    from gflownet.core.replay_buffer import BufferEntry, BufferEntryError

    found: dict[str, list] = {}
    kept = other = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
                lacking = [k for k in ("prompt", "question", "token_ids", *where) if k not in row]
                if lacking:
                    raise ValueError(f"{path}:{n}: the row has no {', '.join(lacking)} (write it with scripts/leak_report.py)")
                if not all(row[k] is True for k in where):
                    continue
                if row["prompt"] not in training_prompts:
                    other += 1
                    continue
                try:
                    ids = [int(t) for t in row["token_ids"]]
                    entry = BufferEntry(text=row["question"], token_ids=ids, log_r=[None] * (len(ids) - 1) + [0.0], reward=0.0)
                except (BufferEntryError, TypeError, ValueError) as err:
                    raise ValueError(f"{path}:{n}: {err}") from None
                found.setdefault(row["prompt"], []).append(entry)
                kept += 1
    print(f"--samples: {kept} rows kept on {len(found)} training prompts"
          + (f"; {other} on other prompts (not the run's training records) left out" if other else ""), flush=True)
    return found


if __name__ == "__main__":
    sys.exit(main())
