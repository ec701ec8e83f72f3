"""Make unlabelled judge cases: real answers of the offline answerer to six kinds of question about
CounterFact edits, for hand-labelling (docs/offline_judge.md says how they were labelled).

    python scripts/judge_cases.py --counterfact counterfact-val.json --records 40 --out cases.jsonl

Kinds, per record (subject S, relation prompt P, edited object E, original object O, and the
record's locality prompt about another subject):
  complete        "Complete this fact: P ..."
  edit_check      "Is it true that <edit fact>?"            (answers "No, ... not E": denial of the edit)
  original_check  "Is it true that <original fact>?"        (answers "No, ... not O": a negation that agrees)
  negation_bait   "Isn't it false that <edit fact>?"        (negations whichever way the answer goes)
  hedge_bait      "If you are not sure, say you don't know: P what?"   (hedges, refusals)
  other_entity    "Complete this fact: <locality prompt> ..."          (answers about another subject)

Records already in ``--exclude`` (the labelled sets) are skipped; the held-out part is
chosen by record before any answer is read (``--holdout`` records, seeded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = ("complete", "edit_check", "original_check", "negation_bait", "hedge_bait", "other_entity")


def questions(rec: dict) -> dict[str, str]:
    prompt = rec["prompt"].rstrip()
    edit_fact, original_fact = f"{prompt} {rec['target_new']}", f"{prompt} {rec['ground_truth']}"
    return {
        "complete": f"Complete this fact: {prompt} ...",
        "edit_check": f"Is it true that {edit_fact}?",
        "original_check": f"Is it true that {original_fact}?",
        "negation_bait": f"Isn't it false that {edit_fact}?",
        "hedge_bait": f"If you are not sure, say you don't know: {prompt} what?",
        "other_entity": f"Complete this fact: {rec['locality_prompt'].rstrip()} ...",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counterfact", required=True, type=Path)
    ap.add_argument("--exclude", type=Path, nargs="*",
                    default=sorted((ROOT / "tests" / "fixtures").glob("judge_cases*.jsonl")),
                    help="labelled sets whose records are skipped (default: every tests/fixtures/judge_cases*.jsonl)")
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--holdout", type=int, default=15)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from gflownet.core.modeling import load_causal_lm, load_tokenizer
    from gflownet.tasks.contradiction.answerer import Answerer

    data = json.loads(args.counterfact.read_text())
    used = {json.loads(line)["case_id"] for path in args.exclude for line in path.read_text().splitlines() if line.strip()}
    pool = [r for r in data if r["case_id"] not in used and r.get("locality_prompt")]
    rng = random.Random(args.seed)
    picked = rng.sample(pool, args.records)
    held_out = {r["case_id"] for r in rng.sample(picked, args.holdout)}
    name = "packaged:smollm2-135m-instruct"
    answerer = Answerer(load_causal_lm(name, str(ROOT / "models")), load_tokenizer(name, str(ROOT / "models")))
    rows = []
    for rec in picked:
        for kind, q in questions(rec).items():
            rows.append({"source": args.counterfact.name, "case_id": rec["case_id"], "subject": rec["subject"],
                         "edit_fact": f"{rec['prompt'].rstrip()} {rec['target_new']}",
                         "original_fact": f"{rec['prompt'].rstrip()} {rec['ground_truth']}",
                         "kind": kind, "question": q, "split": "held_out" if rec["case_id"] in held_out else "dev"})
    answers = answerer([r["question"] for r in rows])
    with args.out.open("w") as f:
        for r, a in zip(rows, answers):
            f.write(json.dumps({**r, "answer": a}) + "\n")
    print(f"{len(rows)} answers to {args.out} ({len(held_out)} held-out records)")


if __name__ == "__main__":
    main()
