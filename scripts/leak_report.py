"""A leak report for your own edited model: the questions a trained sampler writes on which your model
still states the original fact, per edit, in Markdown.

    python scripts/leak_report.py --run-dir RUN --answerer path/to/my-edited-model --data my_edits.jsonl --k 32
    python scripts/leak_report.py --run-dir RUN --answerer my-org/edited-gpt2-large --max-records 20 --out report/
    python scripts/leak_report.py --run-dir RUN --untrained --split train --took-only --k 256   # a search for leaks

The sampler is the run's (``--ckpt``, default its ``last.ckpt``; ``--untrained``: the run's model with
its LoRA off, the sampler before training). The answerer is your model (``--answerer``: a local
directory or a hub id, with the sampler's tokenizer), asked as the run's answerer asks (its instruction,
examples and chat format), greedy, with no edit applied here: your weights carry the edits. Without
``--answerer`` it is the run's own answerer with the run's own edit (a weight edit is rebuilt from,
or loaded from the cache of, the records the run edited). The edits are ``--data`` (a converted
``.jsonl`` or a raw zsRE/CounterFact file; ``convert_data.py`` converts) or the run's own records
(``--split``, default its held-out ones). ``--took-only`` asks questions only on the edits that took
and can be read.

For each edit: whether it took where the answerer is asked (its own prompt answered with the new
object and not the old), the ``--k`` questions, and the verified leaks among them: questions that
name the subject and whose answer states the original object (or the subject's alias in the record)
and not the new one, with the answers. A leak only counts where the edit took, so the report gives
the rate on those edits apart. Writes ``leak_report.md`` and ``leak_report.jsonl`` (one row per
question: the edit, the sampler's prompt, the question and its tokens, the answer, whether it is a
verified leak) to ``--out``. ``scripts/smooth.py --samples OUT/leak_report.jsonl --where verified_leak``
fine-tunes a sampler by maximum likelihood on the leaks such a search found (search, then amortise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))  # the run configs resolve paths from it, as train.py sets it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a training run of the contradiction task (holds .hydra/config.yaml)")
    ap.add_argument("--ckpt", help="the sampler's checkpoint (default: RUN/checkpoints/last.ckpt)")
    ap.add_argument("--untrained", action="store_true", help="sample from the run's model with its LoRA off (no checkpoint)")
    ap.add_argument("--answerer", help="your edited model: a local directory or a hub id (default: the run's own "
                                       "answerer with the run's own edit)")
    ap.add_argument("--data", help="the edits (default: the run's own records, --split)")
    ap.add_argument("--split", choices=["val", "train"], default="val", help="which of the run's records (without --data)")
    ap.add_argument("--took-only", action="store_true", help="ask only on the edits that took and can be read")
    ap.add_argument("--max-records", type=int, default=None)
    ap.add_argument("--k", type=int, default=16, help="questions per edit")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default="leak_report", help="directory for leak_report.md and leak_report.jsonl")
    args = ap.parse_args(argv)
    if args.k < 1:
        sys.exit(f"--k {args.k}: ask at least one question per edit")

    import hydra
    import torch
    from omegaconf import OmegaConf, open_dict

    from gflownet.core.metrics import Embedder
    from gflownet.core.modeling import ModelNotAvailableError, resolve
    from gflownet.core.progress import Progress
    from gflownet.core.protocols import task_hook
    from gflownet.runner import apply_checkpoint, build_module, load_run_config, quiet_libraries
    from gflownet.tasks.contradiction.leaks import find_answerer, is_verified_leak, readable, took_from_answer, unique

    quiet_libraries()
    run = Path(args.run_dir)
    try:
        cfg = load_run_config(run)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(str(err))
    if args.untrained and args.ckpt:
        sys.exit("--untrained samples with the LoRA off: pass --ckpt or --untrained, not both")
    ckpt = None if args.untrained else Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
    if ckpt is not None and not ckpt.is_file():
        sys.exit(f"checkpoint {ckpt} not found: pass --ckpt (or --untrained)")
    task = hydra.utils.instantiate(cfg.task)
    if not task_hook(task, "answerer_edits"):
        sys.exit(f"a leak report needs a run whose reward asks an answerer (the contradiction task), not {task.name}")
    if args.answerer:
        with open_dict(cfg):  # your weights carry the edits: nothing is edited here
            cfg.model.answerer.name_or_path = args.answerer
            cfg.answerer.edit = OmegaConf.create({"method": "none"})
    if args.data:
        if not Path(args.data).is_file():
            sys.exit(f"--data {args.data}: no such file")
        records = task_hook(task, "records_from")(Path(args.data))
    else:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        records = datamodule.val_records if args.split == "val" else datamodule.train_records
    records = records[: args.max_records] if args.max_records else records
    if not records:
        sys.exit(f"no edit records in {args.data or 'the run’s ' + args.split + ' split'}")

    module = build_module(cfg)
    module.eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt is not None else None
    try:
        if state is not None:
            apply_checkpoint(module, state, ckpt)
            module.at_step(int(state.get("global_step", 0)))
        module.build_reward()
    except (ValueError, OSError, ModelNotAvailableError) as err:  # another model's checkpoint; an answerer that does not load or fit
        sys.exit(f"{err}")
    answerer = find_answerer(module.reward)
    embed = Embedder(resolve("packaged:all-minilm-l6-v2", cfg.paths.models_dir)[1])
    module.rng = torch.Generator().manual_seed(args.seed)
    asked = len(records)
    if args.took_only:  # the task's own rule for where a leak counts (evaluate.py --took-only's)
        counted = task_hook(task, "counted_edits")(module, records)
        records = [r for r, keep in zip(records, counted) if keep]
        print(f"--took-only: {len(records)} of {asked} edits took and can be read", flush=True)
        if not records:
            sys.exit("--took-only: no edit took: nothing to ask")

    per_edit, rows = [], []
    progress = Progress("asking", total=len(records), unit="edits")
    for record in records:
        prompt = module.prompts_for([record])[0]
        with module.sampler.disable_adapter() if args.untrained else nullcontext():  # --untrained: the LoRA off
            traj = module.sample([prompt], args.k)
        ids, lengths = traj.sample_ids.cpu(), traj.lengths.cpu()
        questions = module.texts(ids, lengths)
        tokens = [ids[i, : int(lengths[i]) + 1].tolist() for i in range(len(questions))]  # the question and its termination
        answers = answerer([record.prompt, *questions], [record.edit_fact] * (len(questions) + 1))
        took = took_from_answer(answers[0], record.subject, record.original_answer, record.edited_answer)
        can_read = readable(record.subject, record.original_answer)
        leaks = [is_verified_leak(q, a, record.subject, record.original_answer, record.edited_answer)
                 for q, a in zip(questions, answers[1:])]
        leaking = [q for q, hit in zip(questions, leaks) if hit]
        emb = embed(leaking) if leaking else None
        per_edit.append({"record": record, "took": took, "readable": can_read, "answer_to_edit_prompt": answers[0],
                         "leaks": [(q, a) for q, a, hit in zip(questions, answers[1:], leaks) if hit],
                         "rate": sum(leaks) / len(leaks), "unique": unique(leaking, emb)})
        for q, a, hit, t in zip(questions, answers[1:], leaks, tokens):
            rows.append({"subject": record.subject, "edit": record.edit_fact, "original": record.original_answer,
                         "new": record.edited_answer, "edit_took": took, "edit_readable": can_read, "prompt": prompt,
                         "question": q, "token_ids": t, "answer": a, "verified_leak": hit})
        progress.step()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "leak_report.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "leak_report.md").write_text(markdown(args, ckpt, per_edit, asked), encoding="utf-8")
    n_leaky = sum(bool(e["leaks"]) for e in per_edit)
    print(f"{n_leaky} of {len(per_edit)} edits have a verified leak in {args.k} questions; wrote {out / 'leak_report.md'} "
          f"and {out / 'leak_report.jsonl'}", flush=True)
    return 0


def markdown(args, ckpt: Path | None, per_edit: list[dict], asked: int) -> str:
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    took = [e for e in per_edit if e["took"] and e["readable"]]
    lines = [
        "# Leak report", "",
        (f"Answerer: `{args.answerer}` (its own weights, asked as the run's answerer asks). " if args.answerer else
         "Answerer: the run's own, with the run's own edit. ")
        + (f"Sampler: `{ckpt}`. " if ckpt is not None else "Sampler: the run's model with its LoRA off (untrained). ")
        + f"{args.k} questions per edit, {len(per_edit)} edits"
        + (f" (the {len(per_edit)} of {asked} that took and can be read: `--took-only`)." if args.took_only else "."), "",
        "A verified leak is a question that names the edit's subject and no spelling of the original object, and "
        "whose greedy answer states the original object and not the new one. A leak only means something where the "
        "edit took (its own prompt answered with the new object) and can be read (the subject's name does not hold "
        "the original object: of \"BMW 326, produced by BMW\" an answer naming BMW may name the car).", "",
        "| edits | edits that took and can be read | verified leak rate | same, those edits | edits with a verified leak | "
        "unique verified leaks per edit (MiniLM cosine 0.7) |",
        "|---|---|---|---|---|---|",
        f"| {len(per_edit)} | {len(took)} | {mean([e['rate'] for e in per_edit]):.3f} | "
        f"{mean([e['rate'] for e in took]):.3f} | {sum(bool(e['leaks']) for e in per_edit)} | "
        f"{mean([e['unique'] for e in per_edit]):.2f} |", "",
    ]
    for e in per_edit:
        r = e["record"]
        lines += [f"## {r.subject}: {r.original_answer} -> {r.edited_answer}", "",
                  f"Edit: {r.edit_fact}. Asked its own prompt ({r.prompt!r}), the answerer says: "
                  f"{e['answer_to_edit_prompt']!r} (the edit {'took' if e['took'] else 'did not take'}"
                  f"{'' if e['readable'] else '; its subject names the original object, so no leak is read'}).", ""]
        if e["leaks"]:
            lines += [f"{len(e['leaks'])} verified leaks in {args.k} questions:", "", "| question | answer |", "|---|---|"]
            lines += [f"| {q.replace('|', '/')} | {a.replace('|', '/')} |" for q, a in e["leaks"]]
        else:
            lines += [f"No verified leak in {args.k} questions."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
