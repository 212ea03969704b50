"""The real 2B dimensions run a GRPO step on CPU through ``configs/grpo_diff.yaml`` (overrides only).

Opt-in: ``UNIVG_BIG=1 pytest -m slow tests/test_scale_2b.py`` (each run builds the 2.2B-parameter
model in fp32, about 11 GB of host memory and a few minutes on one core; CI does not run it).
Random init (no checkpoint is downloaded), LoRA, one 448 x 448 synthetic image per prompt, G 2,
8 new tokens, one optimiser step, in bf16 autocast and in fp32.
"""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_step import fit_args  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("UNIVG_BIG") != "1", reason="opt-in: set UNIVG_BIG=1 (2B on CPU, ~11 GB)"
    ),
]


def grpo_2b_command(tmp: Path, precision: str) -> list[str]:
    """``python -m univg fit`` on the paper's GRPO-Difficulty config with the 2B preset and small
    shapes: LoRA, one 448 x 448 prompt, G 2, 8 new tokens, one step (``benchmarks/gpu_step.py``'s
    overrides, with a CSV logger for the metrics)."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp)}}
    overrides = fit_args(
        "qwen2-vl-2b",
        lora=True,
        prompts=1,
        group_size=2,
        new_tokens=8,
        image_size=448,
        steps=1,
        accelerator="cpu",
        out=str(tmp),
        precision=precision,
        logger=logger,
    )
    return [sys.executable, "-m", "univg", "fit", *overrides]


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_2b_preset_runs_a_grpo_step_on_cpu(tmp_path: Path, precision: str) -> None:
    threads = os.environ.get("OMP_NUM_THREADS", "1")  # the recorded runs used 2 (the machine's cores)
    env = dict(os.environ, OMP_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run(
        grpo_2b_command(tmp_path, precision),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    # for benchmarks/RESULTS.md (pytest -s): wall time and the largest child's peak RSS so far
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    print(f"2B GRPO step, {precision}: {time.perf_counter() - start:.0f} s, peak RSS {peak:.2f} GB")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    metrics = list(tmp_path.rglob("metrics.csv"))
    if metrics:
        print(f"2B GRPO step, {precision}, {threads} threads, metrics: {metrics[0].read_text()!r}")
    # the real 2B dimensions: 2,208,985,600 (tied head) plus LoRA r 8 on q (1536 -> 1536) and v
    # (1536 -> 256) of 28 layers: 28 x (8 x 1536 + 1536 x 8 + 8 x 1536 + 256 x 8) = 1,089,536 trainable
    assert "2,210,075,136 parameters, 1,089,536 trainable" in proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 1 and losses[0] == losses[0]  # one optimiser step, a finite (non-NaN) loss
    kl = [float(r["train/kl"]) for r in rows if r.get("train/kl")]
    assert kl and kl[0] >= 0.0
