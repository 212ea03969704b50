"""A tiny random Qwen2.5-VL trains (SFT and GRPO) and is evaluated on CPU, in the pixel frame.

``python -m univg fit --config configs/grpo_diff_debug.yaml --model.init_args.backbone.preset
tiny-qwen2.5-vl``: only the preset changes; the frame (absolute pixels of the resized image) follows
from it into the data's targets, the rewards and the evaluation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESET = ("--model.init_args.backbone.preset", "tiny-qwen2.5-vl")

pytestmark = pytest.mark.slow


def univg(*args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "univg", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_qwen25_fit_sft_grpo_and_test_in_pixels(tmp_path: Path) -> None:
    runs = str(tmp_path)
    univg(
        "fit", "--config", "configs/sft_debug.yaml", *PRESET, "--trainer.max_steps=2",
        f"--trainer.logger.init_args.save_dir={runs}", "--trainer.logger.init_args.name=sft",
    )  # fmt: skip
    (sft_ckpt,) = tmp_path.glob("sft/version_0/checkpoints/*.ckpt")
    univg(
        "fit", "--config", "configs/grpo_diff_debug.yaml", *PRESET, "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0", f"--model.init_args.init_checkpoint={sft_ckpt}",
        f"--trainer.logger.init_args.save_dir={runs}", "--trainer.logger.init_args.name=grpo",
    )  # fmt: skip
    (grpo_ckpt,) = tmp_path.glob("grpo/version_0/checkpoints/*.ckpt")
    univg(
        "test", "--config", "configs/eval/synthetic.yaml", *PRESET, "--data.init_args.num_test=4",
        f"--model.init_args.init_checkpoint={grpo_ckpt}", f"--trainer.logger.init_args.save_dir={runs}",
    )  # fmt: skip
    (preds,) = tmp_path.glob("synthetic/version_0/predictions_test*.jsonl")
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:
        w, h = r["frame_size"]
        x1, y1, x2, y2 = r["gt"]
        # ground truth in pixels of the resized 112 x 112 image (Qwen2-VL's frame would be 0..999)
        assert (w, h) == (112, 112) and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.0 <= r["iou"] <= 1.0
    results = json.loads(next(tmp_path.glob("synthetic/version_0/results_test.json")).read_text())
    assert results  # the metrics were computed and written


def test_dynamic_sampling_fit_ends_the_epoch_with_a_partial_step(tmp_path: Path) -> None:
    # 6 prompts in micro-batches of 2, 4 prompts per step: one step of 2 micro-batches then the
    # epoch's last micro-batch as a partial step (logged like a full one); with dynamic
    # sampling the untrained tiny model's all-zero groups are dropped and refills are drawn.
    univg(
        "fit", "--config", "configs/grpo_diff_debug.yaml", "--model.init_args.dynamic_sampling.max_tries=2",
        "--data.init_args.num_train=6", "--trainer.max_steps=10", "--trainer.max_epochs=2", "--trainer.limit_val_batches=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=dyn",
    )  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tmp_path.glob("dyn/version_0/events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    tries = [e.value for e in acc.Scalars("dynamic/tries")]
    # 3 micro-batches an epoch: running out of tries needs 2 x 2 draws, so each epoch's end closes
    # its one step, after 1.5 plain steps' draws; 2 epochs, 2 steps
    assert tries == [1.5, 1.5]
    assert [e.value for e in acc.Scalars("dynamic/fill")] == [0.0, 0.0]  # nothing kept: every group scored 0
