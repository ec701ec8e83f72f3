"""Targets for prompt inversion: one training record per target text y.

``data.targets`` (a list in the config) or ``data.path``: a text file with one target per line, or
a ``.jsonl`` file of ``{"target": ...}`` rows. The same cleaning as the next-sentence prompts
(whitespace collapsed; empty, control-character, over-long and repeated targets dropped and
counted). Inversion is per target, so validation samples for the same targets (the first
``val_size``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gflownet.core.data import RecordDataModule
from gflownet.core.jsonl import read_lines_or_field
from gflownet.tasks.next_sentence.data import clean_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetRecord:
    target: str


def read_targets(path: str | Path) -> list[str]:
    return read_lines_or_field(path, "target", "set data.path to a text file with one target per line "
                                               '(or a .jsonl of {"target": ...} rows), or give data.targets=[...]')


class TargetDataModule(RecordDataModule):
    def __init__(self, targets: list[str] | None = None, path: str | None = None, val_size: int = 4, max_chars: int = 2000,
                 batch_size: int = 1, num_workers: int = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        # data.targets, when given, replaces the file (the config's default path is the shipped targets)
        if targets is not None and not list(targets):
            raise ValueError("data.targets=[] holds no target: list at least one (data.targets=[\"...\"]) or leave it "
                             "unset to read data.path")
        if targets is None and not path:
            raise ValueError("prompt inversion needs its targets: give data.targets=[...] or data.path=FILE")
        self.targets = list(targets) if targets is not None else None
        self.path, self.val_size, self.max_chars = path, int(val_size), int(max_chars)

    def load(self) -> tuple[list, list]:
        lines = self.targets if self.targets is not None else read_targets(self.path)
        kept, dropped = clean_prompts(lines, self.max_chars)
        if dropped:
            log.info("targets: %d kept, dropped %s", len(kept), dict(dropped))
        records = [TargetRecord(r.text) for r in kept]
        return records, records[: max(1, self.val_size)]
