"""Rerunning the command of an interrupted fit resumes it.

When a fit is stopped by SIGINT or SIGTERM (Ctrl+C, ``scancel``, a job's time limit, a preempting
scheduler), :class:`univg.callbacks.CheckpointOnInterrupt` saves ``last.ckpt`` at the step reached
and leaves ``interrupted.json`` beside it. The next ``python -m univg fit`` with the same config
and no ``--ckpt_path`` finds that marker in the newest version folder of its logger, checks that
the saved ``config.yaml`` is the same run, and resumes from ``last.ckpt`` into the same version
folder (its logs and checkpoints continue where they stopped). A requeued cluster job therefore
needs no edit of its command. ``--fresh`` starts a new run instead; a changed config starts a new
run and says which keys differ. A fit that completes removes the marker.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from univg.model.checkpoint_io import atomic_write_text

#: The marker file beside ``last.ckpt`` of a run stopped by a signal.
MARKER = "interrupted.json"

#: Keys a resumed run sets itself (or that only choose how to resume), left out of the comparison.
RESUME_KEYS = ("ckpt_path", "trainer.logger.init_args.version", "model.init_args.fresh")


def mark_interrupted(checkpoint: Path, step: int, signal_name: str) -> Path:
    """Write the marker beside ``checkpoint`` (written whole, then renamed into place)."""
    record = {"checkpoint": checkpoint.name, "step": step, "signal": signal_name}
    return atomic_write_text(checkpoint.parent / MARKER, json.dumps(record))


def clear_interrupted(folder: Path) -> None:
    """Remove the marker of ``folder`` (a run's checkpoint folder), if any."""
    (folder / MARKER).unlink(missing_ok=True)


@dataclass(frozen=True)
class Interrupted:
    """An interrupted run: its version folder and number, checkpoint and the step it holds."""

    version_dir: Path
    version: int
    checkpoint: Path
    step: int


def find_interrupted(run_dir: Path) -> Interrupted | None:
    """The newest ``version_N`` of ``run_dir`` (``<save_dir>/<name>``) when it was interrupted
    and its checkpoint is there; ``None`` otherwise (an older interrupted version that a later run
    followed is not resumed)."""
    versions = []
    for child in run_dir.glob("version_*") if run_dir.is_dir() else ():
        match = re.fullmatch(r"version_(\d+)", child.name)
        if match and child.is_dir():
            versions.append((int(match.group(1)), child))
    if not versions:
        return None
    version, folder = max(versions)
    for marker in sorted(folder.rglob(MARKER)):
        try:
            data = json.loads(marker.read_text())
            checkpoint = marker.parent / str(data["checkpoint"])
            step = int(data["step"])
        except (ValueError, KeyError, TypeError, OSError):
            continue
        if checkpoint.is_file():
            return Interrupted(folder, version, checkpoint, step)
    return None


def keep_csv_metrics(run: Interrupted) -> Path | None:
    """Rename the run's ``metrics.csv`` (a CSV logger's, which empties it when the folder is reused)
    to ``metrics_before_step_<step>.csv``; the path, or ``None`` when there is none."""
    metrics = run.version_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    kept = metrics.with_name(f"metrics_before_step_{run.step}.csv")
    os.replace(metrics, kept)
    return kept


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}``.

    >>> flatten({"model": {"init_args": {"lr": 0.1}}, "seed_everything": 0})
    {'model.init_args.lr': 0.1, 'seed_everything': 0}
    """
    if not isinstance(config, Mapping) or not config:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved -> current`` for every key whose value differs, except :data:`RESUME_KEYS`.

    >>> config_differences({"model": {"init_args": {"lr": 0.1, "fresh": False}}, "ckpt_path": None},
    ...                    {"model": {"init_args": {"lr": 0.2, "fresh": True}}, "ckpt_path": "x"})
    ['model.init_args.lr: 0.1 -> 0.2']
    """
    a, b = flatten(saved), flatten(current)
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not any(key == k or key.startswith(k + ".") for k in RESUME_KEYS)
    ]


__all__ = [
    "MARKER",
    "RESUME_KEYS",
    "Interrupted",
    "clear_interrupted",
    "config_differences",
    "find_interrupted",
    "flatten",
    "keep_csv_metrics",
    "mark_interrupted",
]
