"""Checkpoint and results files written beside their destination and renamed into place.

Lightning's own writer serialises the whole checkpoint into memory, writes it to a temporary file
in the system's temp folder and moves it; when the run folder is on another file system (the usual
case on a cluster) the move is a copy, so a kill during it leaves a torn file where the last good
one was. :func:`atomic_torch_save` writes ``.<name>.partial`` in the destination's own folder,
flushes it to disk, and only then renames it over the destination (``os.replace``, atomic on one
file system), so the previous checkpoint stays readable until the new one is complete. A full disk
(or quota, or read-only folder) removes the partial file and ends as one line naming the path, the
space the checkpoint needs and the space left. :class:`AtomicCheckpointIO` is the same as a
Lightning ``CheckpointIO`` plugin; ``python -m univg fit`` installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from univg.core.errors import UsageError, disk_error


class CheckpointWriteError(UsageError, OSError):
    """A checkpoint could not be written (full disk, quota, read-only folder); nothing partial is left."""


def tensor_bytes(obj: Any) -> int:
    """Bytes of tensor data in a (nested) checkpoint: about what its file needs.

    >>> tensor_bytes({"a": torch.zeros(4), "b": [torch.zeros(2, dtype=torch.float16), 3]})
    20
    """
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` that never leaves ``path`` torn: written as a partial file beside it,
    fsynced, then renamed over it. Raises :class:`CheckpointWriteError` (one line) when the disk
    cannot take it, after removing the partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as f:  # a Python file object: a failed write keeps its OSError
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        disk = disk_error(err)
        if disk is None:
            raise
        free = shutil.disk_usage(path.parent).free
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {disk.strerror or disk} (it needs about "
            f"{_gb(tensor_bytes(obj))}, {_gb(free)} free on that disk); the previous file, if any, is untouched"
        ) from err
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` as :func:`atomic_torch_save` writes a checkpoint: beside it, flushed,
    renamed into place (results files a reader must never see half-written)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def replace_folder(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` at ``out`` (same file system). A folder cannot be renamed over
    a non-empty one, so an old ``out`` is first renamed aside (``.<name>.old-<pid>``) and removed only
    once ``new`` is in place: at every moment one complete copy exists under one of the two names."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` writing through :func:`atomic_torch_save` (local paths;
    remote URLs keep Lightning's writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "atomic_torch_save",
    "atomic_write_text",
    "replace_folder",
    "tensor_bytes",
]
