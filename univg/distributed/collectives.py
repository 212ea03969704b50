"""Sums, maxima and gathers over every process of a run (each the value itself in one process).

Under DDP and FSDP every process must make the same collective calls in the same order; these are
the ones GRPO's step statistics and the evaluation's gathering use.
"""

from __future__ import annotations

from typing import Any

import torch


def is_distributed() -> bool:
    """Whether a process group is running (torch.distributed initialised)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def world_sum(values: list[float]) -> list[float]:
    """Element-wise sums over every process (the values themselves in a single process).

    >>> world_sum([1.0, 2.5])
    [1.0, 2.5]
    """
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def world_max(value: float) -> float:
    """The largest ``value`` of every process."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


__all__ = ["gather_objects", "is_distributed", "world_max", "world_sum"]
