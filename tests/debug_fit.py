"""``python -m univg fit --config configs/debug.yaml`` as the tests run it from the shell: the
interruption tests' 20-step fit (every step logged to a CSV flushed every step, which the tests
watch), the steps that CSV holds, and the model weights a run's checkpoint ends with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/debug.yaml"  # relative to ROOT, the commands' working folder
STEPS = 20


def fit_options(save_dir: Path) -> list[str]:
    """The options after ``--config configs/debug.yaml``: a CSV run ``save_dir/run``, 20 steps."""
    return [
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.logger.init_args.name", "run",
        "--trainer.logger.init_args.flush_logs_every_n_steps", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--data.init_args.num_train", "96", "--trainer.max_steps", str(STEPS),
    ]  # fmt: skip


def fit_command(save_dir: Path, *extra: str) -> list[str]:
    """The whole command, run from ROOT."""
    return [sys.executable, "-m", "univg", "fit", "--config", CONFIG, *fit_options(save_dir), *extra]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def steps_logged(csv: Path) -> list[int]:
    """The optimiser steps with a training loss in the run's metrics.csv (none while it is missing)."""
    import csv as csv_module

    if not csv.exists():
        return []
    with csv.open() as handle:
        return [int(row["step"]) for row in csv_module.DictReader(handle) if row.get("train/loss")]


def final_weights(checkpoints: Path) -> dict[str, torch.Tensor]:
    """The model's weights in the run's end-of-fit checkpoint (``epoch=*.ckpt``)."""
    state = torch.load(next(checkpoints.glob("epoch=*.ckpt")), map_location="cpu", weights_only=False)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("model.")}


def uninterrupted_weights(out: Path) -> dict[str, torch.Tensor]:
    """Run the 20-step fit once without interruption into ``out``; its final weights."""
    proc = subprocess.run(fit_command(out), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_weights(out / "run" / "version_0" / "checkpoints")


def first_fit(folder: Path) -> subprocess.CompletedProcess:
    """``python -W default -m univg fit --config configs/debug.yaml`` from ``folder`` (runs/ under it):
    2 steps on 8 samples, validated after the last, every warning shown."""
    cmd = [sys.executable, "-W", "default", "-m", "univg", "fit", "--config", str(ROOT / CONFIG)]
    cmd += [f"--trainer.logger.init_args.save_dir={folder / 'runs'}", "--trainer.max_steps=2"]
    cmd += ["--trainer.val_check_interval=2", "--data.init_args.num_train=8"]
    return subprocess.run(cmd, cwd=folder, env=env(), capture_output=True, text=True, timeout=600)
