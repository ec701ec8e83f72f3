"""Edit records: one schema for every source, and cleaning with counted drops (no Lightning or torch
import, so ``convert_data.py`` starts in well under a second; the DataModule is in ``data.py``).

An edit record is (subject, prompt, original_answer, edited_answer, original_fact, edit_fact).
``prompt`` is the relation prompt ("The manufacturer of X was") or a question ("Who made X?"),
whatever the source had. The sampler's prompt carries the edit (subject, relation prompt and
edited answer, ``gflownet.tasks.contradiction.task``); the judge compares answers with
``edit_fact``; the original fact is kept for judges and evaluation that need it.

Three raw layouts are converted (``convert_data.py`` is the command-line front end):

* ``zsre_pkl``: the original project's ``ZSRE_1000.pkl`` (a pandas DataFrame with the schema's
  own six columns).
* ``zsre_mend``: the MEND/EasyEdit zsRE json (``subject, src, pred, alt, ...``). It has no
  declarative facts, so facts are written as ``"{question} {answer}"``.
* ``counterfact``: flattened CounterFact json (``prompt, subject, ground_truth, target_new``);
  facts are ``"{prompt} {answer}"``, as in the zsRE pkl.
* ``counterfact_rome``: ROME's own nested CounterFact (``counterfact.json``: ``requested_rewrite``
  with ``prompt`` ("The mother tongue of {} is"), ``subject``, ``target_true.str``,
  ``target_new.str``; ``paraphrase_prompts``, ``neighborhood_prompts``), flattened
  (``flatten_counterfact``) to the layout above.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import random
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from gflownet.core.jsonl import read_jsonl

log = logging.getLogger(__name__)

FIELDS = ("subject", "prompt", "original_answer", "edited_answer", "original_fact", "edit_fact")

LAYOUTS: dict[str, tuple[str, ...]] = {
    "zsre_pkl": FIELDS,
    "zsre_mend": ("subject", "src", "pred", "alt"),
    "counterfact": ("subject", "prompt", "ground_truth", "target_new"),
    "counterfact_rome": ("requested_rewrite",),
}

DROP_REASONS = ("missing_field", "nan_answer", "empty_field", "unchanged_edit", "duplicate")
MAX_FIELD_CHARS = 2000  # a relation prompt, answer or fact is a sentence; longer means a broken file


@dataclass(frozen=True)
class EditRecord:
    subject: str
    prompt: str
    original_answer: str
    edited_answer: str
    original_fact: str
    edit_fact: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class CleanReport:
    """How many raw rows were kept and why the others were dropped."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = ", ".join(f"{r}={self.dropped[r]}" for r in DROP_REASONS if self.dropped[r])
        return f"{self.total} rows: kept {self.kept}, dropped {self.total - self.kept}" + (f" ({parts})" if parts else "")


def normalize_text(value: str) -> str:
    """Strip and collapse runs of whitespace to one space."""
    return " ".join(value.split())


def _is_nan(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() == "nan"


def check_field(value: Any, name: str, where: str) -> None:
    """Refuse a value that no cleaning can make an edit field, naming where it is and the fix."""
    if value is None or isinstance(value, str) or (isinstance(value, numbers.Number) and not isinstance(value, bool)):
        text = value if isinstance(value, str) else ""
    else:
        raise ValueError(f"{where}: field {name!r} is a {type(value).__name__}, not text; "
                         f"every edit field must be a string (fix or drop that row)")
    if len(text) > MAX_FIELD_CHARS:
        raise ValueError(f"{where}: field {name!r} is {len(text)} characters long (at most {MAX_FIELD_CHARS}); "
                         f"an edit field is one sentence: is the file broken? (fix or drop that row)")
    bad = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    if bad is not None:
        at = text.index(bad)
        raise ValueError(f"{where}: field {name!r} holds the control character {bad!r} at position {at} "
                         f"(near {text[max(0, at - 20):at + 20]!r}); remove it from the file")


def clean_records(rows: Iterable[dict[str, Any]], wheres: Sequence[str] | None = None) -> tuple[list[EditRecord], CleanReport]:
    """Validate and normalise schema rows; drop bad ones, counting each reason.

    A row is dropped when a field is missing (``missing_field``), an answer is NaN or the
    literal text ``nan`` (``nan_answer``; the zsRE pkl has NaN edited answers and writes
    ``... is nan`` into their edit facts), a field is empty after stripping (``empty_field``), the edit changes nothing
    (``unchanged_edit``: same answer or same fact), or it repeats an earlier row (``duplicate``).
    A value that is not text (a list, a dict), longer than ``MAX_FIELD_CHARS`` or holding control
    characters is an error naming ``wheres[i]`` (file and line), not a drop: the file is broken.
    """
    report = CleanReport()
    seen: set[tuple[str, ...]] = set()
    kept: list[EditRecord] = []
    for i, row in enumerate(rows):
        report.total += 1
        reason = None
        values: dict[str, str] = {}
        where = wheres[i] if wheres is not None else f"row {i + 1}"
        for name in FIELDS:
            check_field(row.get(name), name, where)
        for name in FIELDS:
            value = row.get(name)
            if value is None:
                reason = "missing_field"
                break
            if _is_nan(value):
                reason = "nan_answer"
                break
            text = normalize_text(str(value))
            if not text:
                reason = "empty_field"
                break
            values[name] = text
        if reason is None and (
            values["original_answer"].casefold() == values["edited_answer"].casefold()
            or values["original_fact"].casefold() == values["edit_fact"].casefold()
        ):
            reason = "unchanged_edit"
        if reason is None:
            key = tuple(values[f] for f in FIELDS)
            if key in seen:
                reason = "duplicate"
            else:
                seen.add(key)
        if reason is not None:
            report.dropped[reason] += 1
            continue
        kept.append(EditRecord(**values))
    report.kept = len(kept)
    return kept, report


def detect_layout(row: dict[str, Any]) -> str:
    """Name the raw layout of one row, or fail naming every layout's expected fields."""
    for name, needed in LAYOUTS.items():
        if all(k in row for k in needed):
            return name
    expected = "; ".join(f"{name}: {', '.join(needed)}" for name, needed in LAYOUTS.items())
    raise ValueError(
        f"unknown edit-data layout with fields {sorted(row)}; expected one of: {expected}"
    )


def flatten_counterfact(row: dict[str, Any], where: str = "row") -> dict[str, Any]:
    """A row of ROME's nested CounterFact in the flattened layout (``prompt`` with the subject filled
    in, ``subject``, ``ground_truth``, ``target_new``, and the probes: ``rephrase_prompt`` (every
    paraphrase, a list), ``locality_prompt`` (the first neighbourhood prompt) and
    ``locality_ground_truth`` (the true object, which ROME's neighbourhood prompts keep)). A row
    without ``requested_rewrite`` is returned as it is."""
    if "requested_rewrite" not in row:
        return row
    rewrite = row["requested_rewrite"]
    if not isinstance(rewrite, dict):
        raise ValueError(f"{where}: requested_rewrite is a {type(rewrite).__name__}, not an object with prompt, subject, "
                         "target_true and target_new (ROME's CounterFact layout)")

    def text(name: str) -> Any:
        value = rewrite.get(name)
        return value.get("str") if isinstance(value, dict) else value

    prompt, subject = rewrite.get("prompt"), rewrite.get("subject")
    if isinstance(prompt, str) and isinstance(subject, str):
        if "{}" not in prompt:
            raise ValueError(f"{where}: requested_rewrite.prompt {prompt!r} has no {{}} where the subject goes")
        prompt = prompt.replace("{}", subject)  # not str.format: other braces are text
    flat = {"case_id": row.get("case_id"), "subject": subject, "prompt": prompt, "ground_truth": text("target_true"),
            "target_new": text("target_new")}
    paraphrases = [p for p in row.get("paraphrase_prompts") or [] if isinstance(p, str) and p.strip()]
    neighbours = [p for p in row.get("neighborhood_prompts") or [] if isinstance(p, str) and p.strip()]
    if paraphrases:
        flat["rephrase_prompt"] = paraphrases
    if neighbours:
        flat["locality_prompt"], flat["locality_ground_truth"] = neighbours[0], flat["ground_truth"]
    return flat


def _join(text: Any, answer: Any) -> Any:
    if text is None or answer is None or _is_nan(answer):
        return answer  # leave the bad value for clean_records to count
    return f"{str(text).rstrip()} {str(answer).strip()}"


# Raw field names of the layouts whose facts are built as "{prompt} {answer}".
FIELD_MAPS: dict[str, dict[str, str]] = {
    "zsre_mend": {"prompt": "src", "original_answer": "pred", "edited_answer": "alt"},
    "counterfact": {"prompt": "prompt", "original_answer": "ground_truth", "edited_answer": "target_new"},
}


def to_schema_rows(rows: Sequence[dict[str, Any]], layout: str) -> list[dict[str, Any]]:
    """Map raw rows of a known layout to schema rows (not yet cleaned)."""
    if layout == "zsre_pkl":
        return [{f: r.get(f) for f in FIELDS} for r in rows]
    if layout not in FIELD_MAPS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    m = FIELD_MAPS[layout]
    return [
        {
            "subject": r.get("subject"),
            "prompt": r.get(m["prompt"]),
            "original_answer": r.get(m["original_answer"]),
            "edited_answer": r.get(m["edited_answer"]),
            "original_fact": _join(r.get(m["prompt"]), r.get(m["original_answer"])),
            "edit_fact": _join(r.get(m["prompt"]), r.get(m["edited_answer"])),
        }
        for r in rows
    ]


def read_raw(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Raw rows from a .pkl DataFrame, a JSON list, or JSON lines, and where each row is
    (``file:line``, ``file[index]`` or ``file row N``), for error messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edit data file not found: {path}")
    if path.suffix == ".pkl":
        import pandas as pd  # a pickle runs code when loaded: read only files you trust

        try:
            frame = pd.read_pickle(path)
        except Exception as err:  # truncated, not a pickle, a pickle of something pandas cannot rebuild
            raise ValueError(f"{path}: not a readable pandas pickle ({type(err).__name__}: {err}); "
                             f"pass the original ZSRE_1000.pkl, or a .json/.jsonl file") from None
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{path}: the pickle holds a {type(frame).__name__}, not a pandas DataFrame of edit rows")
        rows = [{str(k): (None if v is None else v) for k, v in r.items()} for r in frame.to_dict("records")]
        return rows, [f"{path} row {i + 1}" for i in range(len(rows))]
    if path.suffix == ".jsonl":
        lines = list(read_jsonl(path))
        bad = next(((lineno, row) for lineno, row in lines if not isinstance(row, dict)), None)
        if bad is not None:
            raise ValueError(f"{path}:{bad[0]}: expected a JSON object (one edit record per line), got a {type(bad[1]).__name__}")
        return [row for _, row in lines], [f"{path}:{lineno}" for lineno, _ in lines]
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); a .json file holds one list of edit objects, "
                         f"a .jsonl file one object per line") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got a {type(data).__name__}")
    bad_index = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
    if bad_index is not None:
        raise ValueError(f"{path}[{bad_index}]: expected a JSON object, got a {type(data[bad_index]).__name__}")
    return data, [f"{path}[{i}]" for i in range(len(data))]


def convert(path: str | Path, layout: str = "auto") -> tuple[list[EditRecord], CleanReport, str]:
    """Read a raw file of any known layout and return cleaned records, the report and the layout."""
    rows, wheres = read_raw(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    if layout == "auto":
        layout = detect_layout(rows[0])
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)} or auto")
    if layout == "counterfact_rome":
        for row, where in zip(rows, wheres):
            if "requested_rewrite" not in row:
                raise ValueError(f"{where}: no requested_rewrite; every row of ROME's CounterFact layout has one")
        rows = [flatten_counterfact(row, where) for row, where in zip(rows, wheres)]
    mapped = "counterfact" if layout == "counterfact_rome" else layout
    for row, where in zip(rows, wheres):  # the raw fields the layout maps from
        for name in LAYOUTS[mapped]:
            check_field(row.get(name), name, where)
    records, report = clean_records(to_schema_rows(rows, mapped), wheres)
    return records, report, layout


def write_jsonl(records: Iterable[EditRecord], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(path)  # never leave a half-written file under the final name


def load_records(path: str | Path) -> list[EditRecord]:
    """Load a schema .jsonl file with the converter's cleaning (``clean_records``: the same drops,
    counted and logged the same way); a line that is not an edit record is an error naming the
    file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"edit data {path} not found: run `python convert_data.py` for the zsRE pkl, "
            f"or set data.path to a .jsonl file of edit records"
        )
    rows, wheres = [], []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            hint = " (a raw data file? convert it with convert_data.py)" if isinstance(row, list) else ""
            raise ValueError(f"{where}: expected a JSON object (one edit record per line), got a {type(row).__name__}{hint}")
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"{where}: field(s) {missing} missing; an edit record has {list(FIELDS)} "
                             f"(convert raw data with convert_data.py)")
        not_text = [f for f in FIELDS if isinstance(row[f], (int, float)) and not _is_nan(row[f])]  # numbers
        if not_text:
            f = not_text[0]
            raise ValueError(f"{where}: field {f!r} is {type(row[f]).__name__} {row[f]!r}, not text; write it as a "
                             f"string (\"{row[f]}\") if that is the value meant")
        rows.append(row)
        wheres.append(where)
    records, report = clean_records(rows, wheres)
    if report.kept < report.total:
        log.info("%s: %s", path, report.summary())
    if not records:
        raise ValueError(f"{path}: no edit records ({report.summary()})")
    return records


def split_by_subject(records: Sequence[EditRecord], val_size: int, seed: int = 0, where: str = "data") -> tuple[list, list]:
    """(train, validation): subjects in a seeded random order go to validation until it holds at
    least ``val_size`` records; every record of a validation subject is in validation."""
    subjects = list(dict.fromkeys(r.subject for r in records))
    random.Random(seed).shuffle(subjects)
    val_subjects: set[str] = set()
    count = Counter(r.subject for r in records)
    taken = 0
    for s in subjects:
        if taken >= val_size:
            break
        val_subjects.add(s)
        taken += count[s]
    train = [r for r in records if r.subject not in val_subjects]
    val = [r for r in records if r.subject in val_subjects]
    if val_size and not train:
        raise ValueError(f"data.val_size={val_size} leaves no training records out of {len(records)} in {where}")
    return train, val


__all__ = [
    "EditRecord",
    "CleanReport",
    "split_by_subject",
    "clean_records",
    "convert",
    "detect_layout",
    "load_records",
    "normalize_text",
    "write_jsonl",
]
