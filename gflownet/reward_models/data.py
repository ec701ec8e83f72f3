"""Training data of a reward model, from JSON-lines files (``.jsonl`` or ``.jsonl.gz``).

Three layouts (``data.format``):

* ``hh_rlhf``: Anthropic HH-RLHF's layout, one ``{"chosen": text, "rejected": text}`` per line
  (the whole dialogue each); the loss is Bradley-Terry on the pair.
* ``scored``: one scored text per line. ``template`` builds the text from the row's fields with
  ``str.format`` (``"{text}"`` by default; ``"{edit_fact}\\n{sample}"`` for the contradiction
  sample logs), and ``target_field`` names the number. Rows whose target is missing, NaN or
  infinite are skipped and counted (a sample log has NaN where a question was not judged).
* ``labelled``: like ``scored`` with ``label_field``: an integer class, or a string from ``classes``.

``filters`` keeps the rows whose fields equal the given values (``{stage: train}``: a sample log's
training samples only). Validation rows come from ``val_path``, or a ``val_fraction`` of the rows split by ``group_field``
(rows sharing that field's value, e.g. one prompt's questions, land on the same side), with ``seed``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

FORMATS = ("hh_rlhf", "scored", "labelled")


@dataclass
class Example:
    texts: tuple[str, ...]  # (chosen, rejected) for preferences, (text,) otherwise
    target: float  # score, class index, or 0 for preferences
    group: str = ""


class StrictFields(dict):
    """Fields for ``str.format_map`` that raise ``KeyError`` with the missing name (templates' errors name it)."""

    def __missing__(self, key):
        raise KeyError(key)


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else open(path, encoding="utf-8-sig")


def read_examples(path: str | Path, fmt: str, template: str = "{text}", target_field: str = "score",
                  label_field: str = "label", classes: Sequence[str] | None = None, group_field: str | None = None,
                  max_rows: int | None = None, filters: dict[str, Any] | None = None) -> tuple[list[Example], dict[str, int]]:
    """Examples of one file and counts (``rows``, ``filtered_out``, ``skipped_nonfinite``); bad rows are errors
    naming the line. ``filters``: keep only rows whose fields equal these values (``{"stage": "train"}``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown data.format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reward-model data file {path} does not exist (data.path / data.val_path)")
    examples, skipped, rows, filtered = [], 0, 0, 0
    filters = dict(filters or {})
    class_index = {c: i for i, c in enumerate(classes or [])}
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
            rows += 1
            if any(row.get(k) != v for k, v in filters.items()):
                filtered += 1
                continue
            group = str(row.get(group_field, "")) if group_field else ""
            if fmt == "hh_rlhf":
                pair = []
                for key in ("chosen", "rejected"):
                    value = row.get(key)
                    if not isinstance(value, str) or not value.strip():
                        raise ValueError(f"{where}: {key!r} must be a non-empty string (HH-RLHF layout: "
                                         f'{{"chosen": ..., "rejected": ...}}), got {type(value).__name__}')
                    pair.append(value)
                examples.append(Example(tuple(pair), 0.0, group or pair[0]))
            else:
                try:
                    # a sample log's text is "sample" (before 2026-12-05: "question"); a template may name either
                    names = {"sample": row["question"]} if "question" in row and "sample" not in row else (
                        {"question": row["sample"]} if "sample" in row and "question" not in row else {})
                    text = template.format_map(StrictFields(row, **names))
                except KeyError as err:
                    raise ValueError(f"{where}: data.template {template!r} needs field {err.args[0]!r}, "
                                     f"which this row lacks (fields: {sorted(row)})") from None
                if not text.strip():
                    raise ValueError(f"{where}: data.template {template!r} gives an empty text")
                if fmt == "scored":
                    value = row.get(target_field)
                    if value is None or (isinstance(value, float) and not math.isfinite(value)):
                        skipped += 1
                        continue
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ValueError(f"{where}: {target_field!r} must be a number, got {value!r} (data.target_field)")
                    target = float(value)
                else:
                    value = row.get(label_field)
                    if isinstance(value, str) and value in class_index:
                        target = float(class_index[value])
                    elif isinstance(value, int) and not isinstance(value, bool) and (not classes or 0 <= value < len(classes)):
                        target = float(value)
                    else:
                        raise ValueError(f"{where}: {label_field!r} is {value!r}: use an integer class or one of "
                                         f"data.classes={list(classes or [])}")
                examples.append(Example((text,), target, group or text))
            if max_rows and len(examples) >= max_rows:
                break
    if not examples:
        raise ValueError(f"{path}: no usable rows ({rows} read, {filtered} not matching data.filters={filters}, "
                         f"{skipped} with a missing or non-finite {target_field!r})")
    if skipped or filtered:
        log.info("%s: %d rows, %d not matching %s, %d skipped (missing or non-finite %r)", path, rows, filtered, filters,
                 skipped, target_field)
    return examples, {"rows": rows, "filtered_out": filtered, "skipped_nonfinite": skipped}


def split_by_group(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic split: a group goes to validation when its seeded hash falls below ``val_fraction``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")

    def unit(group: str) -> float:
        digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0 ** 64

    train = [e for e in examples if unit(e.group) >= val_fraction]
    val = [e for e in examples if unit(e.group) < val_fraction]
    if not train or not val:
        raise ValueError(f"data.val_fraction={val_fraction} leaves an empty split ({len(train)} train, {len(val)} "
                         f"validation, {len({e.group for e in examples})} groups): give more groups or a data.val_path")
    return train, val


def collate(batch: list[Example]) -> dict[str, Any]:
    return {"texts": [e.texts for e in batch], "target": torch.tensor([e.target for e in batch])}


class RewardDataModule(pl.LightningDataModule):
    def __init__(self, path: str, format: str = "scored", template: str = "{text}", target_field: str = "score",
                 label_field: str = "label", classes: Sequence[str] | None = None, val_path: str | None = None,
                 val_fraction: float = 0.2, group_field: str | None = None, batch_size: int = 32, seed: int = 0,
                 max_rows: int | None = None, num_workers: int = 0, filters: dict[str, Any] | None = None):
        super().__init__()
        self.read = dict(fmt=format, template=template, target_field=target_field, label_field=label_field,
                         classes=list(classes) if classes else None, group_field=group_field, max_rows=max_rows,
                         filters=dict(filters) if filters else None)
        self.path, self.val_path, self.val_fraction, self.seed = path, val_path, float(val_fraction), int(seed)
        self.format, self.batch_size, self.num_workers = format, int(batch_size), int(num_workers)
        self.train_set: list[Example] = []
        self.val_set: list[Example] = []
        self.counts: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        examples, counts = read_examples(self.path, **self.read)
        if self.val_path:
            self.train_set = examples
            self.val_set, val_counts = read_examples(self.val_path, **self.read)
            counts.update({f"val_{k}": v for k, v in val_counts.items()})
        else:
            self.train_set, self.val_set = split_by_group(examples, self.val_fraction, self.seed)
        self.counts = {**counts, "train": len(self.train_set), "val": len(self.val_set)}
        log.info("reward-model data: %s", self.counts)

    def target_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the training targets (regression standardises with them)."""
        t = torch.tensor([e.target for e in self.train_set], dtype=torch.float64)
        std = float(t.std()) if t.numel() > 1 else 1.0
        return float(t.mean()), (std if std > 1e-8 else 1.0)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, collate_fn=collate, num_workers=self.num_workers)
