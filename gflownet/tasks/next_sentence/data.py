"""Prompts for the next-sentence task: a text file with one prompt (1-3 sentences) per line, or
a .jsonl file of ``{"text": ...}`` rows.

``data/next_sentence_prompts.txt`` holds prompts written for this project. For your own text
file, either point ``data.path`` at it or convert it once, which reports what it drops:

    python convert_data.py --task next_sentence my_prompts.txt data/my_prompts.jsonl

Cleaning (the same in both paths): whitespace runs collapse to one space; empty lines, lines with
control characters, lines over ``max_prompt_chars`` characters and repeats are dropped and counted.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from gflownet.core.data import RecordDataModule
from gflownet.core.jsonl import read_lines_or_field

log = logging.getLogger(__name__)

DROP_REASONS = ("empty", "control_characters", "too_long", "duplicate")


@dataclass(frozen=True)
class PromptRecord:
    text: str


def clean_prompts(lines: Iterable[str], max_chars: int = 1000) -> tuple[list[PromptRecord], Counter]:
    kept, seen, dropped = [], set(), Counter()
    for line in lines:
        text = " ".join(line.split())
        if not text:
            dropped["empty"] += 1
        elif any(ord(c) < 32 or ord(c) == 127 for c in line.rstrip("\r\n").replace("\t", " ")):
            dropped["control_characters"] += 1
        elif len(text) > max_chars:
            dropped["too_long"] += 1
        elif text in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(text)
            kept.append(PromptRecord(text))
    return kept, dropped


def read_prompt_lines(path: str | Path) -> list[str]:
    return read_lines_or_field(path, "text", "set data.path to a text file with one prompt per line "
                                             '(or a .jsonl of {"text": ...} rows)')


def load_prompts(path: str | Path, max_chars: int = 1000) -> tuple[list[PromptRecord], Counter]:
    records, dropped = clean_prompts(read_prompt_lines(path), max_chars)
    if not records:
        raise ValueError(f"{path}: no prompts left after cleaning ({dict(dropped)})")
    return records, dropped


def write_prompts_jsonl(records: Iterable[PromptRecord], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps({"text": r.text}, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


class PromptDataModule(RecordDataModule):
    """Seeded train/validation split of the prompts."""

    def __init__(self, path: str, batch_size: int = 1, val_size: int = 10, split_seed: int = 0, max_prompt_chars: int = 1000,
                 num_workers: int = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.path, self.val_size, self.split_seed, self.max_prompt_chars = path, val_size, split_seed, max_prompt_chars

    def load(self) -> tuple[list, list]:
        records, dropped = load_prompts(self.path, self.max_prompt_chars)
        if dropped:
            log.info("prompts %s: dropped %s", self.path, dict(dropped))
        if self.val_size >= len(records):
            raise ValueError(f"data.val_size={self.val_size} leaves no training prompts out of {len(records)} in {self.path}")
        order = list(range(len(records)))
        random.Random(self.split_seed).shuffle(order)
        val = set(order[: self.val_size])
        return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]
