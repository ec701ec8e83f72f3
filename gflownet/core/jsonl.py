"""Reading JSON-lines files (no Lightning or torch import: command-line converters use it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines file (a UTF-8 byte-order
    mark is read, not refused); a line that is not JSON raises naming the file and the line."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
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
