"""A LightningDataModule over lists of records (any objects the task understands).

A task's data module subclasses ``RecordDataModule`` and implements ``load()``, returning its
train and validation records; batches are plain lists of records. Under DDP, Lightning's
distributed sampler gives every rank different records.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from gflownet.core.jsonl import read_jsonl  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


class RecordDataset(Dataset):
    def __init__(self, records: Sequence[Any]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Any:
        return self.records[idx]


def collate_records(batch: list) -> list:
    return list(batch)


class RecordDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 1, num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_records: list = []
        self.val_records: list = []

    def load(self) -> tuple[list, list]:
        """(train records, validation records)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.train_records, self.val_records = self.load()
        if not self.train_records:
            raise ValueError(f"{type(self).__name__}: no training records")
        log.info("%s: %d train, %d validation records", type(self).__name__, len(self.train_records), len(self.val_records))

    def _loader(self, records: list, shuffle: bool) -> DataLoader:
        return DataLoader(RecordDataset(records), batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_records)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_records, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_records, shuffle=False)
