"""Sharded (FSDP2) checkpoints as single files: consolidate a run's checkpoint folder into one
``.ckpt``, read one into memory, or give a run's last checkpoint a stable name.

``FSDP2Strategy(save_distributed_checkpoint=True)`` writes one shard per rank into a ``.ckpt``
folder (``*.distcp`` files and ``meta.pt``). Everything here runs in one process, no process group
needed; ``python -m univg.sharded_checkpoint`` is the command over it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def consolidate_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, with_optimizer: bool = False
) -> Path:
    """One ``.ckpt`` file from a sharded (FSDP2) checkpoint folder; returns its path.

    The result loads like any single-file Lightning checkpoint (``state_dict`` with ``model.*``
    keys, plus epoch/step metadata), so ``init_checkpoint`` can start stage 2 from it. Optimiser
    state is left out unless ``with_optimizer`` (it is twice the trainable weights in fp32).
    Runs in one process, no process group needed. ``dst`` defaults to ``<src>.consolidated``.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    src = Path(src)
    if not src.is_dir():
        raise NotADirectoryError(
            f"{src} is not a sharded checkpoint folder (expected *.distcp files and meta.pt)"
        )
    dst = Path(dst) if dst is not None else src.with_name(src.name + ".consolidated")
    tmp = dst.with_name(dst.name + ".tmp")
    dcp_to_torch_save(src, tmp)
    state = torch.load(tmp, map_location="cpu", weights_only=False)
    checkpoint = _with_meta(src, state, with_optimizer)
    torch.save(checkpoint, tmp)
    os.replace(tmp, dst)
    return dst


def read_sharded_checkpoint(src: str | os.PathLike) -> dict[str, Any]:
    """A sharded (FSDP2) checkpoint folder read into memory as one Lightning checkpoint dict
    (``state_dict`` with ``model.*`` keys and the run's metadata), without the optimiser state."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(Path(src), Path(tmp) / "state.pt")
        state = torch.load(Path(tmp) / "state.pt", map_location="cpu", weights_only=False)
    return _with_meta(Path(src), state, with_optimizer=False)


def _with_meta(src: Path, state: dict[str, Any], with_optimizer: bool) -> dict[str, Any]:
    meta = src / "meta.pt"
    checkpoint = torch.load(meta, map_location="cpu", weights_only=False) if meta.is_file() else {}
    checkpoint["state_dict"] = state["state_dict"]
    if with_optimizer:
        checkpoint["optimizer_states"] = [state[k] for k in sorted(state) if k.startswith("optimizer_")]
    return checkpoint


def weights_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``dst``: the run's last checkpoint as one file (consolidated if sharded, else a relative link)."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        return consolidate_checkpoint(src, dst)
    if not src.is_file():
        raise FileNotFoundError(
            f"{src}: the run wrote no last checkpoint (is ModelCheckpoint(save_last=True) configured?)"
        )
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(os.path.relpath(src, dst.parent))
    return dst


__all__ = ["consolidate_checkpoint", "read_sharded_checkpoint", "weights_file"]
