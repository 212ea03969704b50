"""Is a checkpoint file readable? Checked before a run builds anything, so a truncated or wrong file
gives one line naming it instead of torch's raw error (or its advice to load untrusted pickles).

A Lightning ``.ckpt`` is a ``torch.save`` zip archive whose central directory sits at the end of
the file: a file cut short by a full disk or an interrupted copy loses it, and so does anything
that is not a checkpoint at all. Every member also carries a CRC, checked by reading the file once
(about a second per few GB), so bytes changed after writing are caught before they load silently.
:func:`load_model_weights` then reads a checkpoint's policy weights into a model.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from univg.core.errors import UsageError, error_summary

if TYPE_CHECKING:
    import torch


class CheckpointError(UsageError, ValueError):
    """A checkpoint that is missing or cannot be read; the message names the option and the file."""


def check_checkpoint(path: str | os.PathLike[str], option: str, verify: bool = True) -> Path:
    """``path`` as a :class:`Path` when it is a readable ``torch.save`` archive, else raise.

    ``option`` is how the user named it (``--ckpt_path``, ``init_checkpoint``), for the message.
    ``verify`` reads every member once and checks its CRC (what ``torch.load`` does not: a flipped
    byte inside a tensor would load silently); without it only the directory is read.
    A directory is passed through (sharded checkpoints are folders; their loader checks them).

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "x.ckpt"
    >>> _ = bad.write_bytes(b"garbage")
    >>> check_checkpoint(bad, "--ckpt_path")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    univg.model.checkpoints.CheckpointError: --ckpt_path .../x.ckpt: not a readable checkpoint (not a torch.save archive: truncated or not a checkpoint)
    """
    path = Path(path)
    if path.is_dir():
        return check_sharded_folder(path, option) if is_sharded(path) else path
    if not path.exists():
        raise CheckpointError(f"{option} {path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip() if verify else None
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
    if damaged is not None:
        raise CheckpointError(
            f"{option} {path}: damaged checkpoint ({damaged} fails its CRC check: bytes changed after it was written)"
        )
    return path


def is_sharded(path: Path) -> bool:
    """Is ``path`` a sharded (FSDP2, torch.distributed.checkpoint) checkpoint folder?"""
    return path.is_dir() and ((path / ".metadata").is_file() or any(path.glob("*.distcp")))


def check_sharded_folder(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` when it is a complete sharded (FSDP2) checkpoint folder: its ``.metadata`` reads
    and every shard file it lists is there and long enough; else one line naming the first gap."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    try:
        metadata = FileSystemReader(path).read_metadata()
    except Exception as err:  # a missing or torn .metadata: torch names neither the folder nor the file
        raise CheckpointError(
            f"{option} {path}: not a readable sharded checkpoint (.metadata: {type(err).__name__}: {err})"
        ) from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            raise CheckpointError(f"{option} {path}: shard {name} is missing ({len(needed)} shards listed)")
        if shard.stat().st_size < end:
            raise CheckpointError(
                f"{option} {path}: shard {name} is cut short ({shard.stat().st_size} of {end} bytes)"
            )
    return path


def check_model_folder(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` when its ``*.safetensors`` files are whole (each header parses and its tensors end
    at the file's end) and every file its ``model.safetensors.index.json`` lists is there."""
    import json
    import struct

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            listed = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{option} {index}: not a safetensors index ({err})") from None
        for name in sorted(listed):
            if not (path / name).is_file():
                raise CheckpointError(
                    f"{option} {path}: {name} is missing ({len(listed)} weight files listed in {index.name})"
                )
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > size - 8:
                    raise ValueError(f"header of {header_len} bytes in a file of {size}")
                header = json.loads(f.read(header_len))
            ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
        except (struct.error, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"{option} {file}: not a readable safetensors file ({err})") from None
        expected = 8 + header_len + max(ends, default=0)
        if size != expected:
            raise CheckpointError(
                f"{option} {file}: cut short or padded ({size} bytes, its header describes {expected})"
            )
    return path


def mismatch(path: str | os.PathLike[str], option: str, module: object, err: RuntimeError) -> CheckpointError:
    """One line for torch's "Error(s) in loading state_dict" (a checkpoint of another module, size or
    family): how many keys are missing or unexpected, how many shapes differ, one example of each."""
    text = str(err)
    parts = []
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: (.*?)\.\s*$"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*$"),
    ):
        match = re.search(pattern, text, re.M)
        if match:
            keys = re.findall(r'"([^"]+)"', match.group(1))
            parts.append(f"{len(keys)} {label} keys (e.g. {keys[0]})" if keys else f"{label} keys")
    sizes = re.findall(
        r"size mismatch for ([^:]+): copying a param with shape (\S+) from checkpoint, "
        r"the shape in current model is (\S+?)\.",
        text,
    )
    if sizes:
        key, theirs, ours = sizes[0]
        parts.append(f"{len(sizes)} shapes differ (e.g. {key}: {theirs} in the file, {ours} here)")
    detail = "; ".join(parts) or " ".join(text.split())[:300]
    return CheckpointError(
        f"{option} {path}: not a checkpoint of this {type(module).__name__} and backbone ({detail})"
    )


def unreadable(path: str | os.PathLike[str], option: str, err: BaseException) -> CheckpointError:
    """The one-line error for a checkpoint that passed :func:`check_checkpoint` but failed to load."""
    return CheckpointError(f"{option} {path}: not a readable checkpoint ({error_summary(err)})")


def read_model_weights(path: str | os.PathLike, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The ``model.*`` weights (prefix removed) of a univg Lightning checkpoint: a ``.ckpt`` file
    or the sharded folder an FSDP run writes (read whole). ``mmap``: map the file instead of
    reading it (what a rank that keeps only its rows wants)."""
    import torch

    path = Path(path)
    if is_sharded(path):
        # a sharded checkpoint of an FSDP run (e.g. stage 1 on 8 GPUs): read whole, in memory
        from univg.model.consolidate import read_sharded_checkpoint

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


__all__ = [
    "CheckpointError",
    "check_checkpoint",
    "check_model_folder",
    "check_sharded_folder",
    "load_model_weights",
    "mismatch",
    "read_model_weights",
    "unreadable",
]
