"""Checkpoint files that are either whole or absent.

Lightning's default ``TorchCheckpointIO`` stages a checkpoint in the system temporary directory
and moves it into place; when that directory is on another filesystem the move is a copy, and a
copy that runs out of space leaves a truncated ``step_*.ckpt`` under its final name, which a
resume then loads (or fails on). ``AtomicCheckpointIO`` writes next to the target, under a name
that is not a checkpoint's (``.step_000010.ckpt.partial``), flushes it to disk, and renames it
over the target (atomic on one filesystem). A failed write removes the partial file and raises an
error that names the checkpoint directory.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; nothing that looks like a checkpoint was left behind."""


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file under ``path``: serialise in memory, write
    ``.<name>.partial`` beside it, flush it to disk, rename it over ``path`` (atomic on one filesystem)
    and make the rename durable. A failed write removes the partial file and re-raises."""
    path = Path(path)
    tmp = partial_path(path)
    data = io.BytesIO()
    torch.save(obj, data)  # serialise first (as Lightning does): a failed write is then a plain OSError
    try:
        with open(tmp, "wb") as f:
            f.write(data.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        if "://" in str(path):  # a remote URL (s3://...): Lightning's own fsspec path (Path() would mangle it)
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointWriteError(err.errno, f"cannot create the checkpoint directory {directory} ({err.strerror}); "
                                                  f"set callbacks.model_checkpoint.dirpath to a writable place") from err
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            hint = ("free space there" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                    else "check that it is writable")
            raise CheckpointWriteError(
                err.errno, f"could not write checkpoint {path.name} in {directory} ({err.strerror or err}); nothing was left "
                           f"under that name: {hint}, or set callbacks.model_checkpoint.dirpath to another directory"
            ) from err
