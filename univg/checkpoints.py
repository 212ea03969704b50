"""Is a checkpoint file readable? Checked before a run builds anything, so a truncated or wrong file
gives one line naming it instead of torch's raw error (or its advice to load untrusted pickles).

A Lightning ``.ckpt`` is a ``torch.save`` zip archive whose central directory sits at the end of
the file: a file cut short by a full disk or an interrupted copy loses it, and so does anything
that is not a checkpoint at all. Reading the directory costs a few kilobytes, whatever the size.
:func:`load_model_weights` then reads a checkpoint's policy weights into a model.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


def read_model_weights(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The ``model.*`` weights (prefix removed) of a univg Lightning checkpoint: a ``.ckpt`` file
    or the sharded folder an FSDP run writes (read whole). ``mmap``: map the file instead of
    reading it (what a rank that keeps only its rows wants)."""
    import torch

    path = Path(path)
    if path.is_dir() and any(path.glob("*.distcp")):
        # a sharded checkpoint of an FSDP run (e.g. stage 1 on 8 GPUs): read whole, in memory
        from univg.sharded_checkpoint import read_sharded_checkpoint

        state = read_sharded_checkpoint(path)
    elif not path.is_file():
        raise FileNotFoundError(
            f"init_checkpoint {path} does not exist (expected a .ckpt file or sharded checkpoint folder of a univg run)"
        )
    else:
        check_checkpoint(path, "init_checkpoint")
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                state = torch.load(path, map_location="cpu", weights_only=False)  # old non-zip file
        except Exception as err:  # torch's errors neither name the file nor say what is wrong with it
            raise unreadable(path, "init_checkpoint", err) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"init_checkpoint {path}: holds a {type(state).__name__}, not a checkpoint")
    state = state.get("state_dict", state)
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ValueError(f"init_checkpoint {path} holds no 'model.*' weights (keys: {list(state)[:5]} ...)")
    return weights


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the ``model.*`` weights of a univg Lightning checkpoint into ``model`` (strict): a
    ``.ckpt`` file or the sharded folder an FSDP run writes.

    Only the policy is taken (a GRPO checkpoint's ``ref_model.*`` is ignored): the caller's
    reference model, if any, is then a copy of these weights.
    """
    weights = read_model_weights(path)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied lm_head / embedding may be stored once; anything else missing is an error
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"init_checkpoint {path} does not match the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


__all__ = ["CheckpointError", "check_checkpoint", "load_model_weights", "read_model_weights", "unreadable"]
