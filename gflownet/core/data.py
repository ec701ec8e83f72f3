"""A LightningDataModule over lists of records (any objects the task understands).

A task's data module subclasses ``RecordDataModule`` and implements ``load()``, returning its
train and validation records; batches are plain lists of records. Under DDP, Lightning's
distributed sampler gives every rank different records.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from gflownet.core import distributed
from gflownet.core.jsonl import read_jsonl  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
# torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates, once per epoch
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class RecordDataset(Dataset):
    def __init__(self, records: Sequence[Any]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Any:
        return self.records[idx]


def collate_records(batch: list) -> list:
    return list(batch)


class Padding:
    """A validation record repeated so that every rank runs as many validation batches as the others
    (the step's reward exchange is collective); it is rolled out like any record and counts for
    nothing in the validation means."""

    __slots__ = ("record",)

    def __init__(self, record: Any):
        self.record = record


def unpad(batch: list) -> tuple[list, list[bool]]:
    """(the records, which of them are real, not ``Padding``)."""
    return [r.record if isinstance(r, Padding) else r for r in batch], [not isinstance(r, Padding) for r in batch]


class PaddedRecords(RecordDataset):
    """The records, then (indices past them) ``Padding`` of the records from the first on."""

    def __getitem__(self, idx: int) -> Any:
        n = len(self.records)
        return self.records[idx] if idx < n else Padding(self.records[idx % n])


class EvenShards(DistributedSampler):
    """Validation under DDP: rank r takes records r, r + W, r + 2W, ... of ceil(N / W) * W, every
    rank the same number; indices past N are ``Padding``. (Lightning's own sampler repeats records
    as if they were new, so with 8 records on 3 ranks one was scored twice, and its per-rank means
    were then averaged unweighted.)"""

    def __init__(self, dataset: PaddedRecords, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))


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
        """A stateful loader (torchdata): Lightning saves how far into the epoch it is in each
        checkpoint and a resumed run continues with the records the uninterrupted run would have
        met (a plain DataLoader restarts the epoch's order, so a mid-epoch resume met some records
        twice and skipped others)."""
        dataset = RecordDataset(self.train_records)
        if distributed.world_size() <= 1:
            return StatefulDataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                                      collate_fn=collate_records)
        # Under DDP our own DistributedSampler (seeded as Lightning seeds its own): given torchdata's
        # shuffling sampler, Lightning would wrap it (DistributedSamplerWrapper) and draw the inner
        # order anew on resume, so a resumed run met other records
        sampler = DistributedSampler(dataset, num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=True,
                                     seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return StatefulDataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                                  collate_fn=collate_records)

    def val_dataloader(self) -> DataLoader:
        if distributed.world_size() <= 1:
            return self._loader(self.val_records, shuffle=False)
        dataset = PaddedRecords(self.val_records)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EvenShards(dataset, distributed.world_size(),
                          distributed.rank()), num_workers=self.num_workers, collate_fn=collate_records)
