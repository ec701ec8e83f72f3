"""Reading JSON-lines files (no Lightning or torch import: command-line converters use it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines file (a UTF-8 byte-order
    mark is read, not refused). A line that is not UTF-8, not JSON, or an object with a key given
    twice raises naming the file and the line. A pickle or a whole JSON document (not one value per
    line) is refused with what to do instead."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(2)
        if head[:1] == b"\x80":  # a pickle's protocol marker
            raise ValueError(f"{path} is a pickle, not JSON lines: convert it first "
                             f"(python convert_data.py {path} out.jsonl)")
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start:err.start + 1]!r} at column "
                                 f"{err.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line, object_pairs_hook=_refuse_duplicates)
            except _DuplicateKey as err:
                raise ValueError(f"{path}:{lineno}: key {err.args[0]!r} appears twice in one object; keep one") from None
            except json.JSONDecodeError as err:
                if lineno == 1 and line.lstrip().startswith("["):
                    raise ValueError(f"{path}:1: a JSON array, not one JSON value per line: convert it first "
                                     f"(python convert_data.py {path} out.jsonl for edit data)") from None
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from None


def read_lines_or_field(path: str | Path, field: str, missing: str) -> list[str]:
    """One text per line of a text file, or the string ``field`` of each row of a ``.jsonl`` file.
    ``missing`` completes the error for an absent file (what to set instead)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {missing}")
    if path.suffix != ".jsonl":
        return path.read_text(encoding="utf-8-sig").splitlines()
    out = []
    for lineno, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ValueError(f'{path}:{lineno}: each row must be an object with a string field "{field}"')
        out.append(row[field])
    return out
