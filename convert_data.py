"""Convert raw knowledge-edit data to the project's edit-record .jsonl schema.

    python convert_data.py                       # data/ZSRE_1000.pkl -> data/zsre_1000.jsonl (the original's step)
    python convert_data.py path/to/zsre_mend_train.json data/zsre_mend.jsonl
    python convert_data.py path/to/counterfact.json data/counterfact.jsonl --layout counterfact
    python convert_data.py --task next_sentence my_prompts.txt data/my_prompts.jsonl   # one prompt per line

Layouts (auto-detected from the fields of the first row): the original zsRE pandas pickle,
the MEND/EasyEdit zsRE json, and flattened CounterFact json. Rows with a missing, empty or
``nan`` answer, edits that change nothing, and duplicates are dropped, with a count per reason.
Only convert pickles you trust: loading a pickle can run code.

``--task next_sentence`` converts a text file with one prompt per line to the next-sentence
task's .jsonl (``{"text": ...}`` rows), dropping empty lines, lines with control characters,
over-long lines and repeats, with a count per reason (the same cleaning as training applies).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gflownet.tasks.contradiction.records import LAYOUTS, convert, write_jsonl

DEFAULT_INPUT = Path("data/ZSRE_1000.pkl")
DEFAULT_OUTPUT = Path("data/zsre_1000.jsonl")

log = logging.getLogger("convert_data")


def default_output(src: Path) -> Path:
    return DEFAULT_OUTPUT if src == DEFAULT_INPUT else Path("data") / f"{src.stem.lower()}.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", type=Path, default=DEFAULT_INPUT, help=f"raw file (default {DEFAULT_INPUT})")
    parser.add_argument("output", nargs="?", type=Path, help="output .jsonl (default data/<input stem>.jsonl)")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS], help="raw layout (default: detect)")
    parser.add_argument("--task", default="contradiction", choices=["contradiction", "next_sentence"],
                        help="which task's records to write (default: edit records for the contradiction task)")
    parser.add_argument("--max-prompt-chars", type=int, default=1000, help="next_sentence: longer prompts are dropped")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.task == "next_sentence":
        return convert_prompts(args)

    if not args.input.is_file():
        log.error(
            "%s not found: put the original ZSRE_1000.pkl there, or pass the raw file to convert, "
            "e.g. `python convert_data.py ../shared/data/zsre_mend_train-1k.json`",
            args.input,
        )
        return 2
    output = args.output or default_output(args.input)
    try:
        records, report, layout = convert(args.input, args.layout)
    except ValueError as err:
        log.error("%s: %s", args.input, err)
        return 2
    if not records:
        log.error("%s: every row was dropped (%s); nothing written", args.input, report.summary())
        return 1
    write_jsonl(records, output)
    log.info("%s (%s layout): %s", args.input, layout, report.summary())
    log.info("wrote %d records to %s", len(records), output)
    return 0


def convert_prompts(args) -> int:
    from gflownet.tasks.next_sentence.data import DROP_REASONS, load_prompts, write_prompts_jsonl

    if args.input == DEFAULT_INPUT or not args.input.is_file():
        log.error("%s not found: pass a text file with one prompt per line, "
                  "e.g. `python convert_data.py --task next_sentence prompts.txt data/prompts.jsonl`", args.input)
        return 2
    output = args.output or Path("data") / f"{args.input.stem.lower()}.jsonl"
    try:
        records, dropped = load_prompts(args.input, args.max_prompt_chars)
    except (ValueError, UnicodeDecodeError) as err:
        log.error("%s: %s", args.input, err)
        return 2
    write_prompts_jsonl(records, output)
    detail = ", ".join(f"{r}={dropped[r]}" for r in DROP_REASONS if dropped[r])
    log.info("%s: kept %d prompts, dropped %d%s", args.input, len(records), sum(dropped.values()),
             f" ({detail})" if detail else "")
    log.info("wrote %d prompts to %s", len(records), output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
