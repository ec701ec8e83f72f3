"""Edit quality as the knowledge-editing field measures it, on CounterFact records, per edit method.

For every record, with all N edits applied together (as the contradiction task's edited answerer
carries them):

* efficacy: the new object is more probable than the true one after the edit prompt;
* paraphrase: the same on the record's rephrased prompt;
* neighbourhood: the true object stays more probable than the new one on a prompt about another
  subject that shares the true object (locality).

"More probable" compares the mean per-token log-probability of " <object>" after the prompt, as
ROME's ``compute_rewrite_quality_counterfact`` does (EasyEdit instead reports teacher-forced token
accuracy). ``in_context`` puts "New fact: <edit fact>" before every prompt of the record.

    python scripts/edit_quality.py --data path/to/counterfact-val.json --n 20 --methods none,in_context,rome,lora_ft

CounterFact in the flattened layout (``prompt, subject, target_new, ground_truth, rephrase_prompt,
locality_prompt, locality_ground_truth``) or in ROME's nested one is read; the scoring is
``gflownet.tasks.contradiction.probes``; edit sets are saved under ``edits/`` and reused.
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

from gflownet.core.modeling import load_causal_lm, load_tokenizer  # noqa: E402
from gflownet.editing.requests import EditRequest  # noqa: E402
from gflownet.tasks.contradiction.probes import FIELDS, counterfact_json, scores, with_one_paraphrase  # noqa: E402

# Meng et al. 2022 ("Locating and Editing Factual Associations in GPT"), CounterFact, GPT-2 XL, one edit at a time.
PUBLISHED_GPT2_XL = {"unedited": (22.2, 24.7, 78.1), "FT-L": (99.1, 48.7, 70.3), "ROME": (100.0, 96.4, 75.4)}


def read_counterfact(path: Path, n: int, offset: int = 0) -> list[dict]:
    rows = [with_one_paraphrase(r) for r in counterfact_json(path)]  # ValueError naming a file that is not CounterFact
    missing = [f for f in FIELDS if f not in rows[0]]
    if missing:
        raise ValueError(f"{path}: records lack {missing}; this script reads CounterFact ({', '.join(FIELDS)}, or ROME's layout)")
    return rows[offset : offset + n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="flattened CounterFact JSON (e.g. EasyEdit's counterfact-val.json)")
    ap.add_argument("--n", type=int, default=20, help="records (edits applied together)")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--methods", default="none,in_context,rome,lora_ft")
    ap.add_argument("--model", default="packaged:smollm2-135m-instruct")
    ap.add_argument("--models-dir", default=os.environ.get("GFN_MODELS_DIR", str(ROOT / "models")))
    ap.add_argument("--stats-tokens", type=int, default=50_000, help="tokens of sampled text for ROME's key statistics")
    ap.add_argument("--cache-dir", default=str(ROOT / "edits"))
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--settings", default="{}", help='JSON settings for the weight-editing methods, e.g. '
                    '\'{"lora_ft": {"norm_constraint": 0.02, "lr": 0.005}}\' (defaults: configs/answerer/edit/*.yaml)')
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.data.is_file():
        print(f"error: {args.data} not found (a CounterFact JSON file)", file=sys.stderr)
        return 2

    from gflownet.editing.store import edited_model

    try:
        method_settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        print(f"error: --settings is not JSON ({err.msg}): pass e.g. '{{\"lora_ft\": {{\"lr\": 0.005}}}}'", file=sys.stderr)
        return 2
    rows = read_counterfact(args.data, args.n, args.offset)
    requests = [EditRequest(r["subject"], r["prompt"], r["target_new"], r["ground_truth"]) for r in rows]
    tok = load_tokenizer(args.model, args.models_dir)
    results = {}
    for method in args.methods.split(","):
        model = load_causal_lm(args.model, args.models_dir)
        started = time.perf_counter()
        context = [""] * len(rows)
        if method == "in_context":
            context = [f"New fact: {r.fact()}\n" for r in requests]
        elif method in ("rome", "lora_ft"):
            edited_model(method, model, tok, requests, model_name=args.model, cache_dir=args.cache_dir,
                         settings=method_settings.get(method), stats={"text": "sampled", "n_tokens": args.stats_tokens})
        elif method != "none":
            raise SystemExit(f"unknown method {method!r}: use none, in_context, rome or lora_ft")
        edit_s = time.perf_counter() - started
        results[method] = dict(scores(model, tok, rows, context), edits=len(rows), edit_seconds=round(edit_s, 1),
                               settings=method_settings.get(method, {}))
        r = results[method]
        print(f"{method:>10}: efficacy {r['efficacy']:5.1f}  paraphrase {r['paraphrase']:5.1f}  "
              f"neighbourhood {r['neighbourhood']:5.1f}  ({len(rows)} edits, {edit_s:.0f} s to edit or load)", flush=True)
    print("published, GPT-2 XL, one edit at a time (Meng et al. 2022, table 4): "
          + "; ".join(f"{k} {v[0]}/{v[1]}/{v[2]}" for k, v in PUBLISHED_GPT2_XL.items()))
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "data": str(args.data), "n": len(rows), "offset": args.offset,
                                        "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
