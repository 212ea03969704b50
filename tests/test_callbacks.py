"""HParamsLogger works with any Lightning logger, not only TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _fit(tmp_path: Path, logger: dict) -> None:
    from univg.cli import main

    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/debug.yaml"),
            "--trainer.logger",
            yaml.safe_dump(logger, default_flow_style=True).strip(),
            "--trainer.callbacks+=univg.callbacks.HParamsLogger",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.num_train=8",
            "--data.init_args.num_val=2",
        ]
    )


def test_debug_fit_with_csv_logger_writes_the_hyperparameters(tmp_path):
    # Before: CSVLogger.log_hyperparams() got metrics= and the run died with a TypeError.
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path), "name": "csv"},
    }
    _fit(tmp_path, logger)
    run = tmp_path / "csv" / "version_0"
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["model.class_path"] == "univg.modules.SFTModule"
    assert hparams["model.lr"] == pytest.approx(1e-3)  # configs/debug.yaml
    assert hparams["stage"] == "fit"
    assert "metrics" not in hparams
    assert "train/loss" in (run / "metrics.csv").read_text().splitlines()[0]


def test_takes_metrics_follows_the_signature():
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    from univg.callbacks import takes_metrics

    class Kwargs:
        def log_hyperparams(self, params, **kwargs):  # noqa: ANN001, ANN003
            pass

    assert takes_metrics(TensorBoardLogger("x")) and takes_metrics(Kwargs())
    for cls in (CSVLogger, MLFlowLogger, WandbLogger):  # not instantiated: W&B/MLflow would start a run
        assert not takes_metrics(type("L", (), {"log_hyperparams": cls.log_hyperparams})())
