"""A reward's precision on the questions a sampler selects, from hand labels fixed before the scores
are read (issue 27, item 2; the procedure of ``docs/leak_check.md``).

Two steps, with a commit of the labels in between:

    # 1. the questions a reward flags, with the edited answerer's greedy answer and no score
    python scripts/flagged_leaks.py dump --run-dir RUN --evaluation RUN/checkpoints/evaluation.json \
        --method lora_ft --variant trained --sample 120 --out docs/labels/RUN_NAME.jsonl
    #    ... label every row by hand ("label": leak, echo or no; rule in docs/leak_check.md), commit ...
    # 2. precision per reward, and how the judge-free verified-leak rule agrees with the labels
    python scripts/flagged_leaks.py score --labels docs/labels/RUN_NAME.jsonl

    # the verified-leak rule's own precision: every question it counts, for several samplers
    python scripts/flagged_leaks.py verified untrained=eval_a/evaluation.json trained=eval_b/evaluation.json \
        --data edits.jsonl --out docs/labels/NAME.jsonl
    python scripts/flagged_leaks.py score --labels docs/labels/NAME.jsonl --by sampler

A question is **flagged** by the reward the run trained on: ``reward=leak_margin`` flags a question
that names the subject with a margin m > 0 (the edited answerer prefers the original object),
``reward=contradiction`` one whose answer the judge finds contradicting the edit (p > 0.5),
``reward=answer_leak`` one its rule pays (the verified-leak rule with its two extra guards). The dump
lists each distinct flagged question once, in the order sampled, without its score, so the labeller
does not see how strongly the reward flagged it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LABELS = ("leak", "echo", "no")


def flagged(columns: list[str], row: list) -> bool:
    """Whether the run's reward flags this example row (see the module docstring)."""
    value = dict(zip(columns, row))
    if "answer_leak" in value:
        return float(value["answer_leak"]) == 1.0  # NaN (not asked, or the edit did not take) is not flagged
    if "leak_margin" in value:
        return float(value["names_subject"]) > 0.5 and float(value["leak_margin"]) > 0
    if "log_contradiction" in value:
        return float(value["log_contradiction"]) > math.log(0.5)
    raise SystemExit(f"the evaluation's rows carry none of answer_leak, leak_margin or log_contradiction ({columns}): "
                     "flagging is defined for reward=answer_leak, leak_margin and contradiction")


def flagged_questions(evaluation: dict, method: str, variant: str) -> list[tuple[str, str]]:
    """(record description, question) of each distinct flagged question, in the order sampled."""
    columns = evaluation["example_columns"][method]
    seen, out = set(), []
    for description, rows in evaluation["examples"][method][variant]:
        for row in rows:
            key = (description, " ".join(str(row[0]).split()))
            if flagged(columns, row) and key not in seen:
                seen.add(key)
                out.append(key)
    return out


def dump(args) -> int:
    from rescore_leaks import load_run

    from gflownet.tasks.contradiction.leaks import find_answerer

    evaluation = json.loads(Path(args.evaluation).read_text())
    questions = flagged_questions(evaluation, args.method, args.variant)
    if not questions:
        print(f"no flagged questions for {args.method}/{args.variant}")
        return 1
    total = len(questions)
    if args.sample and args.sample < total:  # a seeded random subset, kept in the order sampled
        import random

        keep = set(random.Random(args.seed).sample(range(total), args.sample))
        questions = [q for i, q in enumerate(questions) if i in keep]
    run_edit, module, by_description = load_run(args.run_dir)
    if run_edit != args.method:
        sys.exit(f"--method {args.method}: this script answers with the run's own edited answerer ({run_edit})")
    answerer = find_answerer(module.reward)
    missing = sorted({d for d, _ in questions} - set(by_description))
    if missing:
        sys.exit(f"{len(missing)} evaluated records are not in the run's data (first: {missing[0]!r})")
    records = [by_description[d] for d, _ in questions]
    answers = answerer([q for _, q in questions], [r.edit_fact for r in records])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for i, ((description, question), record, answer) in enumerate(zip(questions, records, answers)):
            fh.write(json.dumps({"id": i, "edit": description, "subject": record.subject,
                                 "original": record.original_answer, "new": record.edited_answer,
                                 "question": question, "answer": answer, "label": ""}, ensure_ascii=False) + "\n")
    print(f"wrote {len(questions)} of {total} flagged questions to {out}: label each 'leak', 'echo' or 'no', commit, "
          "then score")
    return 0


def score(args) -> int:
    from collections import Counter

    from gflownet.core.jsonl import read_jsonl
    from gflownet.tasks.contradiction.leaks import about_subject, is_verified_leak, language_as_adjective

    rows = []  # several files pool their rows: held-out sets of different edits, scored as one
    for path in args.labels:
        mine = [row for _, row in read_jsonl(path)]
        bad = [r["id"] for r in mine if r.get("label") not in LABELS]
        if bad:
            sys.exit(f"{len(bad)} rows of {path} have no label among {LABELS} (first id {bad[0]}): label them first")
        rows += mine
    twice = [key for key, n in Counter((r["edit"], r["question"], r.get("sampler")) for r in rows).items() if n > 1]
    if twice:
        sys.exit(f"the question {twice[0][1]!r} of edit {twice[0][0]!r} is labelled twice (one row per sampler and "
                 "question): pool label files of different edits, not two labellings of the same set")
    counts = {label: sum(r["label"] == label for r in rows) for label in LABELS}
    leaks = [r for r in rows if r["label"] == "leak"]
    verified = [r for r in rows if is_verified_leak(r["question"], r["answer"], r["subject"], r["original"], r["new"])]
    edits = len({r["edit"] for r in leaks})

    def tally(chosen: list) -> str:  # how many a rule counts, and its precision and recall against the labels
        hits = sum(r["label"] == "leak" for r in chosen)
        return (f"{len(chosen)} verified, {hits} of those labelled leaks (precision {hits / max(len(chosen), 1):.1%}, "
                f"recall of the labelled leaks {hits / max(len(leaks), 1):.1%})")

    def original_fact(row) -> str:  # the edit's fact with the original object for the new one (its last mention)
        head, sep, tail = row["edit"].rpartition(row["new"])
        return head + row["original"] + tail if sep else row["edit"]

    print(f"{len(rows)} flagged questions: {counts['leak']} leaks ({counts['leak'] / len(rows):.1%} precision), "
          f"{counts['echo']} echoes, {counts['no']} not leaks; leaks on {edits} edits")
    print(f"verified-leak rule on them: {tally(verified)}")
    strict = [r for r in verified if about_subject(r["answer"], r["subject"], r["original"])]
    print(f"with the answer about the subject too (leaks.about_subject): {tally(strict)}")
    adjective = [language_as_adjective(r["answer"], r["subject"], r["original"], r["edit"], original_fact(r))
                 for r in verified]
    kept = [r for r, drop in zip(verified, adjective) if not drop]
    dropped = [r for r, drop in zip(verified, adjective) if drop]
    print(f"without a language said as an adjective (leaks.language_as_adjective): {tally(kept)}; it drops "
          f"{len(dropped)}, {sum(r['label'] == 'leak' for r in dropped)} of them labelled leaks")
    by = getattr(args, "by", None)
    if by:  # e.g. the sampler each row came from: precision, and the edits with a labelled leak, per group
        missing = [r["id"] for r in rows if by not in r]
        if missing:
            sys.exit(f"--by {by}: {len(missing)} rows have no such field (first id {missing[0]})")
        from gflownet.core.metrics import Embedder
        from gflownet.core.modeling import resolve
        from gflownet.tasks.contradiction.leaks import unique

        embed = Embedder(resolve("packaged:all-minilm-l6-v2", ROOT / "models")[1])
        for group in dict.fromkeys(r[by] for r in rows):
            mine = [r for r in rows if r[by] == group]
            hits = [r for r in mine if r["label"] == "leak"]
            clusters = 0  # the labelled leaks' unique count: greedy clusters at MiniLM cosine 0.7, per edit
            for edit in dict.fromkeys(r["edit"] for r in hits):
                questions = [r["question"] for r in hits if r["edit"] == edit]
                clusters += int(unique(questions, embed(questions)))
            print(f"  {group}: {len(mine)} flagged, {len(hits)} leaks ({len(hits) / len(mine):.1%}), "
                  f"{clusters} unique, on {len({r['edit'] for r in hits})} edits")
    return 0


def verified(args) -> int:
    """Every distinct question the verified-leak rule counts on the edits that took and can be read, for
    each evaluation's variants, with the edited answerer's greedy answer the evaluation stored, unlabelled
    and shuffled (seeded), so that the rule's own precision can be read by hand (``score --by sampler``)."""
    import random

    from gflownet.tasks.contradiction.leaks import is_verified_leak
    from gflownet.tasks.contradiction.task import ContradictionTask

    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"--data {data}: no such file (the edit records the evaluations asked about)")
    records = ContradictionTask.records_from(data)  # what evaluate.py --data read
    by_description = {r.edit_fact: r for r in records}
    rows = []
    for spec in args.evaluations:
        name, sep, file = spec.partition("=")
        if not sep or not name or not Path(file).is_file():
            sys.exit(f"{spec!r}: use NAME=path/to/evaluation.json (an existing file)")
        evaluation = json.loads(Path(file).read_text())
        columns = evaluation.get("example_columns", {}).get(args.method)
        if not isinstance(columns, list):
            sys.exit(f"{file}: no leak evaluation under --method {args.method} (evaluate.py --edit-methods {args.method})")
        if "answer" not in columns:
            sys.exit(f"{file}: its examples keep no answers (the run's reward asks no answerer): evaluate the questions "
                     "with a run whose reward answers them (reward=contradiction or answer_leak)")
        at = columns.index("answer")
        for variant, per_record in evaluation["examples"][args.method].items():
            figures = evaluation["results"][args.method][variant].get("per_record", {})
            seen = set()
            for description, examples in per_record:
                mine = figures.get(description, {})
                if mine.get("edit_took") != 1 or mine.get("edit_readable") != 1:
                    continue  # a leak counts only where the edit took and can be read
                record = by_description.get(description)
                if record is None:
                    sys.exit(f"{file}: record {description!r} is not in --data {data}")
                for example in examples:
                    question, answer = str(example[0]), str(example[at])
                    key = (description, " ".join(question.split()))
                    if key in seen or not is_verified_leak(question, answer, record.subject, record.original_answer,
                                                           record.edited_answer):
                        continue
                    seen.add(key)
                    rows.append({"edit": description, "subject": record.subject, "original": record.original_answer,
                                 "new": record.edited_answer, "question": question, "answer": answer, "label": "",
                                 "sampler": f"{name}/{variant}"})
    random.Random(args.seed).shuffle(rows)  # the labeller reads them out of sampler order
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} verified leaks to {out}: label each 'leak', 'echo' or 'no' (reading edit, question and "
          "answer only), commit, then score --by sampler")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="write the flagged questions with their answers, unlabelled")
    d.add_argument("--run-dir", required=True)
    d.add_argument("--evaluation", required=True, help="evaluation.json of scripts/evaluate.py on that run")
    d.add_argument("--method", default="lora_ft", help="the answerer edit (the run's own)")
    d.add_argument("--variant", default="trained")
    d.add_argument("--out", required=True)
    d.add_argument("--sample", type=int, default=0, help="label a seeded random subset of this many (0: all)")
    d.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="precision from the labelled file(s)")
    s.add_argument("--labels", required=True, nargs="+", help="one labelled file, or several of different edits, pooled")
    s.add_argument("--by", help="also per value of this field of the rows (e.g. sampler)")
    v = sub.add_parser("verified", help="write every question the verified-leak rule counts, unlabelled")
    v.add_argument("evaluations", nargs="+", metavar="NAME=EVALUATION", help="evaluation.json files of evaluate.py")
    v.add_argument("--data", required=True, help="the edit records they asked about (evaluate.py --data)")
    v.add_argument("--method", default="lora_ft", help="the answerer edit")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return {"dump": dump, "score": score, "verified": verified}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
