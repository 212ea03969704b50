"""The console of a run shows progress and results, not Lightning's advertisements or warnings
caused by our own calls."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import univg

ROOT = Path(__file__).resolve().parents[1]


def test_trainer_logs_no_advertisement_but_keeps_its_other_lines(tmp_path, caplog):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    with caplog.at_level(logging.INFO):
        L.Trainer(accelerator="cpu", logger=TensorBoardLogger(tmp_path), default_root_dir=tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("GPU available") for m in messages)  # the filter drops nothing else
    assert not any("Tip:" in m or "litlogger" in m or "litmodels" in m for m in messages), messages


def test_a_lora_build_does_not_warn_about_peft_reading_a_deprecated_property():
    import warnings

    from univg.model.backbone import BackboneSpec, LoRASpec

    # pytest's own filters ignore FutureWarning (pyproject.toml): show every warning, then add ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        univg.core.console.quiet_console()
        BackboneSpec(preset="tiny", lora=LoRASpec()).build(device="meta")
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert not any("is_gradient_checkpointing" in m for m in messages), messages
    assert "another FutureWarning" in messages  # the filter is that narrow


@pytest.mark.slow
def test_first_debug_fit_prints_progress_and_results_only(first_debug_fit):
    out, _ = first_debug_fit  # conftest.py: python -W default -m univg fit, shared with test_cli.py
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "Trainer.fit` stopped: `max_steps=2` reached" in text and "train/loss" in text
    for noise in ("Tip:", "litlogger", "litmodels", "LeafSpec", "args parameter is intended"):
        assert noise not in text, noise
    # -W default shows every DeprecationWarning: none may come from univg's own files
    ours = str(Path(univg.__file__).parent) + os.sep
    warned = [line for line in text.splitlines() if line.startswith(ours) and "Warning" in line]
    assert not warned, warned
