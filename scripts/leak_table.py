"""The leak table of one or more leak evaluations (``scripts/evaluate.py --edit-methods ...``), as markdown.

    python scripts/leak_table.py --method lora_ft NAME=RUN/evaluation.json [NAME=...]

One row per (name, variant): the judge-free verified-leak figures at the evaluation's k and at
k = 16 (the first 16 questions of each edit), with fluency, diversity and length; then each
evaluation's edit quality and the share of edits that took, the figures a leak needs beside it.
Every leak figure but the first column is over the edits that took and can be read alone (a leak only
counts where the edit took; ``leaks.readable``); an evaluation written before those counts existed
shows "-" there until ``scripts/rescore_leaks.py`` adds them.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lora_ft", help="the answerer edit whose results to show")
    ap.add_argument("evaluations", nargs="+", help="NAME=path/to/evaluation.json")
    args = ap.parse_args(argv)
    rows, notes, ks = [], [], set()
    for item in args.evaluations:
        name, _, path = item.partition("=")
        data = json.loads(Path(path).read_text())
        k = data["meta"]["k"]
        ks.add(k)
        for variant, res in data["results"][args.method].items():
            # one probe per edit: no diversity among an edit's questions to speak of
            cells = [None if variant == "benchmark_probes" and key in ("semantic_diversity", "subject_diversity") else res.get(key)
                     for key, _ in COLUMNS]
            rows.append(f"| {name} | {variant} | " + " | ".join(
                "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" for v in cells) + " |")
            took, can_read = res.get("edit_took"), res.get("edit_readable")
        quality = data.get("edit_quality", {}).get(args.method)
        if quality:
            notes.append(f"- {name}: {quality['edits']} edits, k = {k}; edit quality (efficacy / paraphrase / "
                         f"neighbourhood, %) {quality['efficacy']:.1f} / {quality['paraphrase']:.1f} / "
                         f"{quality['neighbourhood']:.1f}; edits that took where the answerer is asked: {took:.3f}"
                         + ("" if can_read is None else f"; edits that can be read: {can_read:.3f}")
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
