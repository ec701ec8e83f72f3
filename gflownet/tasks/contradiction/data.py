"""The contradiction task's DataModule over edit records (``records.py``: the schema, cleaning and
conversion, re-exported here)."""

from __future__ import annotations

from gflownet.core.data import RecordDataModule
from gflownet.tasks.contradiction.records import (  # noqa: F401  (re-exported)
    FIELDS, LAYOUTS, CleanReport, EditRecord, clean_records, convert, detect_layout, load_records, normalize_text,
    read_raw, split_by_subject, to_schema_rows, write_jsonl,
)


class EditDataModule(RecordDataModule):
    """Train/validation split of edit records; each batch is a list of ``EditRecord``.

    The split is by subject: ``val_size`` validation records are drawn from whole subjects (in a
    seeded order), so no validation subject is ever trained on, also where a subject carries
    several edits. The last subject taken may bring the count past ``val_size``.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 1,
        val_size: int = 0,
        split_seed: int = 0,
        max_records: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.path = path
        self.val_size = val_size
        self.split_seed = split_seed
        self.max_records = max_records

    def load(self) -> tuple[list[EditRecord], list[EditRecord]]:
        records = load_records(self.path)
        if self.max_records is not None:
            records = records[: self.max_records]
        return split_by_subject(records, self.val_size, self.split_seed, where=str(self.path))


__all__ = [
    "FIELDS", "LAYOUTS", "CleanReport", "EditDataModule", "EditRecord", "clean_records", "convert", "detect_layout",
    "load_records", "normalize_text", "read_raw", "split_by_subject", "to_schema_rows", "write_jsonl",
]
