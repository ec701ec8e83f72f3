"""Convert raw knowledge-edit data to the project's edit-record .jsonl schema.

    python convert_data.py                       # data/ZSRE_1000.pkl -> data/zsre_1000.jsonl (the original's step)
    python convert_data.py path/to/zsre_mend_train.json data/zsre_mend.jsonl
    python convert_data.py path/to/counterfact.json data/counterfact.jsonl --layout counterfact

Layouts (auto-detected from the fields of the first row): the original zsRE pandas pickle,
the MEND/EasyEdit zsRE json, and flattened CounterFact json. Rows with a missing, empty or
``nan`` answer, edits that change nothing, and duplicates are dropped, with a count per reason.
Only convert pickles you trust: loading a pickle can run code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gflownet.data import LAYOUTS, convert, write_jsonl

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

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


if __name__ == "__main__":
    sys.exit(main())
