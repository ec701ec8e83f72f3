"""The leak table of one or more leak evaluations (``scripts/evaluate.py --edit-methods ...``), as markdown.

    python scripts/leak_table.py --method lora_ft NAME=RUN/evaluation.json [NAME=...]
    python scripts/leak_table.py judge=eval_a_judge/evaluation.json,eval_b_judge/evaluation.json ...   # pooled

One row per (name, variant): the judge-free verified-leak figures at the evaluation's k and at
k = 16 (the first 16 questions of each edit), with fluency, diversity and length; then each
evaluation's edit quality and the share of edits that took, the figures a leak needs beside it.
Every leak figure but the first column is over the edits that took and can be read alone (a leak only
counts where the edit took; ``leaks.readable``); an evaluation written before those counts existed
shows "-" there until ``scripts/rescore_leaks.py`` adds them. Several comma-separated evaluations under
one name (the same sampler on other sets of edits, each edited at once) are pooled into one row per
variant: each figure is the mean over all their edits (``pooled``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# the leak counts are over the edits that took (a leak only counts there); the rate over all edits stays beside
COLUMNS = [("verified_leak_rate", "verified leak rate, all edits"), ("verified_leak_rate_took", "verified leak rate"),
           ("edits_with_verified_leak_took_at_16", "edits with a verified leak, k=16"),
           ("edits_with_verified_leak_took", "same, k"), ("unique_verified_leaks_took_at_16", "unique verified leaks per edit, k=16"),
           ("unique_verified_leaks_took", "same, k"), ("fluency", "fluency"), ("semantic_diversity", "diversity"),
           ("subject_diversity", "diversity of the questions naming the subject"), ("mean_length", "length")]


SAMPLE_MEANS = ("fluency", "mean_length")  # means over every question: pooled by question counts; the rest by records


def pooled(results: list[dict], records: list[int]) -> dict:
    """One variant's figures over several evaluations (e.g. two sets of 100 edits, each edited at once):
    a figure each evaluation has per record (``per_record``: the leak counts, NaN where an edit did not
    take) is the mean over all their records, as one evaluation's own mean is; a mean over questions
    (fluency, length) is weighted by questions, any other mean over records by records."""
    if len(results) == 1:
        return results[0]
    out = {}
    per = [row for res in results for row in res.get("per_record", {}).values()]
    for key in {k for res in results for k in res}:
        if key == "per_record":
            continue
        if per and all(key in row for row in per):
            values = [row[key] for row in per if not math.isnan(row[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        elif all(isinstance(res.get(key), (int, float)) for res in results):
            weights = [res.get("samples", 0) if key in SAMPLE_MEANS else n for res, n in zip(results, records)]
            out[key] = sum(w * res[key] for w, res in zip(weights, results)) / sum(weights) if sum(weights) else math.nan
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lora_ft", help="the answerer edit whose results to show")
    ap.add_argument("evaluations", nargs="+", help="NAME=path/to/evaluation.json, or NAME=a.json,b.json to pool "
                                                   "evaluations of other edits into one row per variant")
    args = ap.parse_args(argv)
    rows, notes, ks = [], [], set()
    for item in args.evaluations:
        name, _, paths = item.partition("=")
        datas = [json.loads(Path(p).read_text()) for p in paths.split(",")]
        for data in datas:
            ks.add(data["meta"]["k"])
        counts = [data["meta"]["records"] for data in datas]
        for variant in datas[0]["results"][args.method]:
            missing = [p for p, d in zip(paths.split(","), datas) if variant not in d["results"][args.method]]
            if missing:
                raise SystemExit(f"{name}: variant {variant!r} is not in {', '.join(missing)}: pool evaluations of the "
                                 "same variants")
            res = pooled([d["results"][args.method][variant] for d in datas], counts)
            # one probe per edit: no diversity among an edit's questions to speak of
            cells = [None if variant == "benchmark_probes" and key in ("semantic_diversity", "subject_diversity") else res.get(key)
                     for key, _ in COLUMNS]
            rows.append(f"| {name} | {variant} | " + " | ".join(
                "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" for v in cells) + " |")
        for data, path in zip(datas, paths.split(",")):
            res = next(iter(data["results"][args.method].values()))
            took, can_read = res.get("edit_took"), res.get("edit_readable")
            quality = data.get("edit_quality", {}).get(args.method)
            where = f" ({Path(path).parent.name})" if len(datas) > 1 else ""
            only = data["meta"].get("took_only")
            if quality:
                notes.append(f"- {name}{where}: {quality['edits']} edits, k = {data['meta']['k']}; edit quality (efficacy / "
                             f"paraphrase / neighbourhood, %) {quality['efficacy']:.1f} / {quality['paraphrase']:.1f} / "
                             f"{quality['neighbourhood']:.1f}; "
                             + (f"sampled only the {only['kept']} that took where the answerer is asked and can be read "
                                "(`--took-only`)" if only else
                                f"edits that took where the answerer is asked: {took:.3f}"
                                + ("" if can_read is None else f"; edits that can be read: {can_read:.3f}"))
                             + ("; leak figures rescored with today's rule" if data["meta"].get("rescored_leaks") else ""))
    at = f"k={ks.pop()}" if len(ks) == 1 else "k (each run's)"
    print("| run | variant | " + " | ".join(label.replace(", k", ", " + at) if label.endswith(", k") else label
                                           for _, label in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    print("\n".join(rows))
    print()
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
