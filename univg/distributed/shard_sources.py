"""Where a rank's shard rows come from when :func:`univg.distributed.sharded_build.materialise` fills a meta model.

FSDP2 shards every parameter along dim 0 the way ``torch.chunk`` does (:func:`rank_rows`). A
*source* is called with (parameter name, this rank's local shard) and returns True once it wrote
the shard:

- :func:`safetensors_source`: a Hugging Face checkpoint folder (or hub id); each rank reads only its
  rows of each tensor (``safe_open(...).get_slice``), the released Qwen2-VL key names mapped to
  transformers 5's.
- :func:`univg_checkpoint_source`: the ``model.*`` weights of a univg ``.ckpt`` (memory-mapped, so
  only the pages of this rank's rows are read) or of a sharded checkpoint folder.
- :func:`shards_of`: an identically sharded model already in memory (the frozen GRPO reference
  copies the policy's shards; never a full copy of the model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

#: ``source(parameter name, local shard) -> wrote it``: what :func:`univg.distributed.sharded_build.materialise` calls.
Source = Callable[[str, torch.Tensor], bool]


def rank_rows(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's dim-0 chunk of ``full`` as FSDP2 lays it out (``torch.chunk``; empty past the end).

    >>> [rank_rows(torch.arange(5), r, 2).tolist() for r in (0, 1)]
    [[0, 1, 2], [3, 4]]
    >>> rank_rows(torch.arange(1), 1, 2).tolist()
    []
    """
    if full.dim() == 0 or world == 1:
        return full
    chunks = torch.chunk(full, world, dim=0)
    if rank < len(chunks):
        return chunks[rank]
    return full.new_empty((0, *full.shape[1:]))


def _strip_peft(name: str) -> str:
    """Model-level name of a (possibly peft-wrapped) parameter: LoRA's ``base_layer`` removed."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".")


#: Released Qwen2-VL safetensors key prefixes -> transformers 5 parameter names.
_LEGACY_PREFIXES = (("model.", "model.language_model."), ("visual.", "model.visual."))


def _hf_key(name: str, keys: set[str]) -> str | None:
    if name in keys:
        return name
    for new, old in ((new, old) for old, new in _LEGACY_PREFIXES):
        if name.startswith(new) and old + name[len(new) :] in keys:
            return old + name[len(new) :]
    return None


def safetensors_source(path: str | os.PathLike, rank: int, world: int) -> Source:
    """A :func:`~univg.distributed.sharded_build.materialise` source reading this rank's rows from a Hugging Face checkpoint folder."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():  # a hub id: fetch (or find in the cache) the weight files only
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(path), allow_patterns=["*.safetensors", "*.json"]))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        single = folder / "model.safetensors"
        if not single.is_file():
            raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
        with safe_open(str(single), framework="pt") as f:
            weight_map = {k: single.name for k in f.keys()}
    keys = set(weight_map)
    used: set[str] = set()

    def source(name: str, local: torch.Tensor) -> bool:
        plain = _strip_peft(name)
        key = _hf_key(plain, keys)
        if key is None and plain == "lm_head.weight":  # tied head stored only as the embedding
            key = _hf_key("model.language_model.embed_tokens.weight", keys)
        if key is None:
            if ".lora_" in name:
                return False
            raise KeyError(f"{folder}: no tensor for parameter {plain!r} in the checkpoint")
        used.add(key)
        with safe_open(str(folder / weight_map[key]), framework="pt") as f:
            piece = f.get_slice(key)
            shape = piece.get_shape()
            if world == 1 or not shape:
                rows = piece[:]
            else:
                start = _row_offset(shape[0], rank, world)
                rows = piece[start : start + local.shape[0]]
        if tuple(rows.shape) != tuple(local.shape):
            raise ValueError(
                f"{folder}: tensor {key!r} has shape {shape}, the model's {plain!r} does not match"
            )
        local.copy_(rows)
        return True

    return source


def _row_offset(rows: int, rank: int, world: int) -> int:
    """First row of ``rank``'s chunk (``torch.chunk``: ceil(rows / world) rows per chunk)."""
    per = -(-rows // world)
    return min(rows, rank * per)


def univg_checkpoint_source(path: str | os.PathLike, rank: int, world: int) -> Source:
    """A :func:`~univg.distributed.sharded_build.materialise` source reading this rank's rows of the ``model.*`` weights of a univg .ckpt."""
    from univg.model.checkpoints import read_model_weights

    # the sharded folder an FSDP stage-1 run writes is read whole (each rank), a file mapped; then
    # each parameter takes its rows
    weights = read_model_weights(path, mmap=True)

    def source(name: str, local: torch.Tensor) -> bool:
        full = weights.get(name)
        if full is None:
            raise KeyError(f"init_checkpoint {path} has no weight for parameter {name!r}")
        rows = rank_rows(full, rank, world)
        if rows.shape != local.shape:
            raise ValueError(
                f"init_checkpoint {path}: {name!r} has shape {tuple(full.shape)}, the model's does not match"
            )
        local.copy_(rows)
        return True

    return source


def shards_of(model: nn.Module, rank: int = 0, world: int = 1) -> Source:
    """A source copying each parameter's local shard from ``model``, sharded the same way.

    A parameter ``model`` holds whole (replicated) gives this rank's rows of it when ``local``
    is a shard (``rank`` of ``world``).
    """
    theirs = dict(model.named_parameters())

    def source(name: str, local: torch.Tensor) -> bool:
        src = theirs[name]
        src = src.to_local() if hasattr(src, "to_local") else src
        if src.shape != local.shape:
            src = rank_rows(src, rank, world)
        local.copy_(src)
        return True

    return source


def copy_shards(src: nn.Module, dst: nn.Module) -> None:
    """Copy a sharded model's local shards into an identically sharded (materialised) model."""
    copy = shards_of(src)
    with torch.no_grad():
        for name, p in dst.named_parameters():
            copy(name, p.to_local() if hasattr(p, "to_local") else p)


__all__ = [
    "Source",
    "copy_shards",
    "rank_rows",
    "safetensors_source",
    "shards_of",
    "univg_checkpoint_source",
]
