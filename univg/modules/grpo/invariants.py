"""GRPO's run-time invariants (``check_invariants``): what one optimiser step measures, and the line
it appends to ``<log dir>/invariants.jsonl`` (maxima over every process, every group's mIoU and
the weight the loss used)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from univg.distributed.collectives import gather_objects, world_max
from univg.modules.grpo.scored import ScoredRollout


def measure_invariants(inv: dict[str, float], s: ScoredRollout, logp: torch.Tensor, beta: float) -> None:
    """Fold one micro-batch's first-iteration measurements into ``inv`` (maxima over tokens):
    ``kl_max`` policy vs reference (0 at the first step: the reference is the initial policy),
    ``ratio_dev_max`` |ratio - 1| (0 before the first update of a batch), ``sampler_gap_max``
    scored minus sampled log-prob (<= 0 up to rounding: top-k / top-p only raise the sampled one)
    and ``sampler_absdiff_max`` (untruncated sampling: the two agree)."""
    mask = s.rollout.completion_mask.bool()
    if not bool(mask.any()):
        return

    def fold(key: str, value: torch.Tensor) -> None:
        inv[key] = max(inv.get(key, float("-inf")), float(value[mask].max()))

    if s.ref_logp is not None and beta > 0:
        delta = s.ref_logp - logp
        fold("kl_max", torch.exp(delta) - delta - 1.0)
        fold("ref_logp_absdiff_max", delta.abs())
    if s.old_logp is not None:
        fold("ratio_dev_max", (torch.exp(logp - s.old_logp) - 1.0).abs())
    sampled = s.rollout.sampler_logp
    if sampled is not None:
        fold("sampler_gap_max", logp - sampled)
        fold("sampler_absdiff_max", (logp - sampled).abs())


def group_pairs(
    buffer: list[ScoredRollout], used: list[torch.Tensor], group_size: int
) -> list[tuple[float, float]]:
    """(mIoU, weight used) of every group of the step, gathered from all processes in rank order."""
    local = [
        (float(m), float(w))
        for s, ws in zip(buffer, used)
        for m, w in zip(s.miou.tolist(), ws[::group_size].tolist())
    ]
    return [pair for part in gather_objects(local) for pair in part]


def invariants_record(
    inv: dict[str, float], groups: list[tuple[float, float]], **settings: Any
) -> dict[str, Any]:
    """One line of ``invariants.jsonl``: the step's measurements (maxima over every process), the
    phi settings and every group's mIoU and weight (``groups``, from :func:`group_pairs`)."""
    inv = {k: world_max(v) if k.endswith("_max") else v for k, v in inv.items()}
    step = settings.pop("step")
    world_size = settings.pop("world_size")
    return {
        "step": step,
        **inv,
        **settings,
        "miou": [m for m, _ in groups],
        "weights": [w for _, w in groups],
        "world_size": world_size,
    }


def append_record(log_dir: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``<log_dir>/invariants.jsonl``."""
    with open(Path(log_dir) / "invariants.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def record_invariants(
    inv: dict[str, float],
    buffer: list[ScoredRollout],
    used: list[torch.Tensor],
    group_size: int,
    step: int,
    trainer: Any,
    **phi: Any,
) -> dict[str, float]:
    """The step's ``invariants/*`` values; its record (:func:`invariants_record`, with the ``phi``
    settings) appended to the run's ``invariants.jsonl`` by rank 0. Every process calls it (the
    record's maxima and groups, and ``trainer.log_dir``, are collectives)."""
    world_size = trainer.world_size if trainer is not None else 1
    record = invariants_record(
        inv, group_pairs(buffer, used, group_size), step=step, world_size=world_size, **phi
    )
    root = trainer.log_dir if trainer is not None else None
    if root is not None and trainer.is_global_zero:
        append_record(root, record)
    return {f"invariants/{k}": record[k] for k in inv}
