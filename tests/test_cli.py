"""The command line: a debug fit writes events and the resolved config; bad input is one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "univg", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_unknown_config_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/debug.yaml").read_text().replace("lr: 1.0e-3", "lr: 1.0e-3\n    lrr: 2"))
    out = run_cli("fit", "--config", str(bad), "--print_config")
    assert out.returncode != 0
    assert "lrr" in out.stderr


def test_wrong_preset_names_it():
    out = run_cli(
        "fit", "--config", str(ROOT / "configs/debug.yaml"), "--model.init_args.backbone.preset", "qwen9"
    )
    assert out.returncode != 0
    assert "qwen9" in out.stderr


def test_print_config_resolves_defaults():
    out = run_cli("fit", "--config", str(ROOT / "configs/grpo_diff.yaml"), "--print_config")
    assert out.returncode == 0, out.stderr
    assert "phi: exp" in out.stdout and "group_size: 8" in out.stdout and "beta: 0.04" in out.stdout


@pytest.mark.slow
def test_debug_fit_writes_events_config_and_predictions(tmp_path):
    out = run_cli(
        "fit",
        "--config",
        str(ROOT / "configs/debug.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "4",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "debug" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    config = (run / "config.yaml").read_text()
    assert "univg.modules.SFTModule" in config and "preset: tiny" in config
    assert list(run.glob("checkpoints/*.ckpt"))
    assert list(run.glob("predictions_val*.jsonl"))


def test_data_processor_is_linked_to_the_model_checkpoint(tmp_path):
    from univg.backbone import BackboneSpec
    from univg.cli import main
    from univg.tokenizer import load_processor

    BackboneSpec().build().save_pretrained(tmp_path)
    load_processor().save_pretrained(tmp_path)
    cfg = str(ROOT / "configs/grpo_diff_debug.yaml")
    cli = main(["--config", cfg, "--model.init_args.backbone.checkpoint", str(tmp_path)], run=False)
    assert cli.datamodule.processor_path == str(tmp_path)
    assert main(["--config", cfg], run=False).datamodule.processor_path is None
