"""Is a checkpoint file readable? Checked before a run builds anything, so a truncated or wrong file
gives one line naming it instead of torch's raw error (or its advice to load untrusted pickles).

A Lightning ``.ckpt`` is a ``torch.save`` zip archive whose central directory sits at the end of
the file: a file cut short by a full disk or an interrupted copy loses it, and so does anything
that is not a checkpoint at all. Reading the directory costs a few kilobytes, whatever the size.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint that is missing or cannot be read; the message names the option and the file."""


def check_checkpoint(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a :class:`Path` when it is a readable ``torch.save`` archive, else raise.

    ``option`` is how the user named it (``--ckpt_path``, ``init_checkpoint``), for the message.
    A directory is passed through (sharded checkpoints are folders; their loader checks them).

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "x.ckpt"
    >>> _ = bad.write_bytes(b"garbage")
    >>> check_checkpoint(bad, "--ckpt_path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    univg.checkpoints.CheckpointError: --ckpt_path .../x.ckpt: not a readable checkpoint (not a torch.save archive: truncated or not a checkpoint)
    """
    path = Path(path)
    if path.is_dir():
        return path
    if not path.exists():
        raise CheckpointError(f"{option} {path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{option} {path}: not a readable checkpoint (not a torch.save archive: truncated or not a checkpoint)"
        ) from None
    except OSError as err:
        raise CheckpointError(f"{option} {path}: cannot be read ({err.strerror or err})") from None
    if not any(name.endswith("data.pkl") for name in names):
        raise CheckpointError(
            f"{option} {path}: not a readable checkpoint (a zip archive without torch data)"
        )
    return path


def unreadable(path: str | os.PathLike[str], option: str, err: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint that passed :func:`check_checkpoint` but failed to load."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return CheckpointError(f"{option} {path}: not a readable checkpoint ({type(err).__name__}: {first})")


__all__ = ["CheckpointError", "check_checkpoint", "unreadable"]
