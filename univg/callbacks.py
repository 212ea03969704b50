"""Callbacks that make runs comparable in TensorBoard (or any other Lightning logger).

:class:`HParamsLogger` writes the run's resolved configuration (the knobs that differ between the
rows of the paper's tables: method, phi, lr, data counts, backbone, ...) as hyper-parameters of
every logger of the run; TensorBoard also gets the evaluation metrics registered as HParams
columns, so the HParams view lines up the grid. Add it to a run with ``--trainer.callbacks+=univg.callbacks.HParamsLogger``
(the Make grid does this for every row).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

#: Metric tags shown as HParams columns (logged later by the modules under the same tags).
HPARAM_METRICS = ("val/avg", "val/acc@0.5", "val/miou", "test/avg", "test/acc@0.5", "test/miou")

# Keys of the resolved config that say what a run is (prefixes of the flattened names).
_KEEP = (
    "model.",
    "data.",
    "seed_everything",
    "trainer.max_",
    "trainer.precision",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accumulate_grad_batches",
    "trainer.strategy",
)
_DROP = ("model.init_args.predictions_dir", "model.init_args.pictures_dir", "data.init_args.num_workers")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings/lists -> ``{"a.b.0.c": scalar}``; scalars that TensorBoard takes are kept as is.

    >>> flatten({"model": {"init_args": {"phi": "exp", "rewards": {"accuracy": 1.0}}}, "n": [1, None]})
    {'model.init_args.phi': 'exp', 'model.init_args.rewards.accuracy': 1.0, 'n.0': 1, 'n.1': 'None'}
    """
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    elif isinstance(value, (bool, int, float, str)):
        out[prefix] = value
    else:
        out[prefix] = str(value)
    return out


def run_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a resolved CLI config (``init_args`` dropped from the names).

    >>> cfg = {"model": {"class_path": "univg.modules.GRPOModule", "init_args": {"phi": "exp", "lr": 1e-6}},
    ...        "trainer": {"max_steps": 3, "logger": {"init_args": {"name": "x"}}}, "seed_everything": 0}
    >>> run_hparams(cfg)
    {'model.class_path': 'univg.modules.GRPOModule', 'model.phi': 'exp', 'model.lr': 1e-06, 'trainer.max_steps': 3, 'seed_everything': 0}
    """
    flat = flatten(config)
    out = {}
    for key, value in flat.items():
        if not key.startswith(_KEEP) or key.startswith(_DROP):
            continue
        out[key.replace(".init_args.", ".")] = value
    return out


def training_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """For an evaluation of a trained run: that run's hyper-parameters, prefixed ``train.``.

    Found through ``model.init_args.init_checkpoint``: the ``config.yaml`` that LightningCLI saved
    beside the checkpoint (``<run>/fit/weights.ckpt`` or ``<run>/fit/checkpoints/last.ckpt``).
    """
    import yaml

    ckpt = ((config.get("model") or {}).get("init_args") or {}).get("init_checkpoint")
    if not ckpt:
        return {}
    for d in (Path(ckpt).parent, Path(ckpt).parent.parent):
        if (d / "config.yaml").is_file():
            saved = yaml.safe_load((d / "config.yaml").read_text())
            return {f"train.{k}": v for k, v in run_hparams(saved).items()}
    return {}


def takes_metrics(logger: Any) -> bool:
    """Whether ``logger.log_hyperparams`` accepts ``metrics=`` (TensorBoard does; CSV, W&B, MLflow do not).

    >>> from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    >>> takes_metrics(TensorBoardLogger("runs")), takes_metrics(CSVLogger("runs"))
    (True, False)
    """
    try:
        params = inspect.signature(logger.log_hyperparams).parameters
    except (TypeError, ValueError):  # a C-level or otherwise opaque callable: do not guess
        return False
    return "metrics" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class HParamsLogger(Callback):
    """Log the resolved config as hyper-parameters (rank 0) with :data:`HPARAM_METRICS` as columns.

    The config comes from LightningCLI's ``SaveConfigCallback`` (the same values as the saved
    ``config.yaml``); without a CLI (plain ``Trainer``) the module's ``hparams`` are used.
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics is not None else list(HPARAM_METRICS)
        self._done = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        first = next(cb for cb in trainer.callbacks if isinstance(cb, HParamsLogger))
        if self._done or first is not self or trainer.logger is None or not trainer.is_global_zero:
            return  # one logger per run even when the callback was added twice
        config = self._config(trainer, pl_module)
        params = run_hparams(config)
        params.update(training_hparams(config))
        params["run"] = str(getattr(trainer.logger, "name", "") or "")
        params["stage"] = str(getattr(stage, "value", stage))  # "fit", not the enum (CSV writes its name)
        for logger in trainer.loggers:
            if takes_metrics(logger):
                logger.log_hyperparams(params, metrics={m: math.nan for m in self.metrics})
            else:  # CSV, W&B, MLflow: plain hyper-parameters (they have no HParams columns to register)
                logger.log_hyperparams(params)
        self._done = True

    @staticmethod
    def _config(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        from lightning.pytorch.cli import SaveConfigCallback

        for cb in trainer.callbacks:
            if isinstance(cb, SaveConfigCallback):
                cfg = cb.config
                return cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
        return {"model": {"init_args": dict(pl_module.hparams)}}


__all__ = ["HPARAM_METRICS", "HParamsLogger", "flatten", "run_hparams", "takes_metrics", "training_hparams"]
