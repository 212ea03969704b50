"""Runs comparable in TensorBoard (or any other Lightning logger).

:class:`HParamsLogger` writes the run's resolved configuration (the knobs that differ between the
rows of the paper's tables: method, phi, lr, data counts, backbone, ...) as hyper-parameters of
every logger of the run, the row's distinguishing keys first (``1 phi``, ``2 stage``, ``3 data
size``, ``4 preset``: :func:`univg.model.run_config.row_keys`); TensorBoard also gets the evaluation
metrics registered as HParams columns (AVG, Acc@0.5, mean IoU, Acc@0.5 per task), with no value
until a run has one. An evaluation of a trained run writes its test metrics into that training
run's folder instead of opening a session of its own, so the HParams view has one session per
trained run (per grid row), carrying its test numbers. Add it to a run with
``--trainer.callbacks+=univg.callbacks.HParamsLogger`` (the Make grid does this for every row).
Without it, a run's TensorBoard folder and ``hparams.yaml`` hold the module's own arguments
(:func:`plain_hparams`, saved by every univg module).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from univg.model.run_config import ROW_KEYS, row_keys, training_config, training_config_path

#: Evaluation stages whose metrics (by tag prefix) join the evaluated training run's session.
_EVALUATIONS = {"test": "test/", "validate": "val/"}
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


def plain_hparams(value: Any) -> Any:
    """A module's arguments as plain data (what ``hparams.yaml`` and a checkpoint hold): dataclasses
    as mappings, tuples as lists, paths as strings, any other object as its class's import path.

    >>> from univg.model.backbone import BackboneSpec
    >>> plain_hparams({"backbone": BackboneSpec(preset="tiny"), "betas": (0.9, 0.99), "f": print})["betas"]
    [0.9, 0.99]
    >>> plain_hparams({"backbone": BackboneSpec(preset="tiny"), "f": print})["backbone"]["preset"]
    'tiny'
    >>> plain_hparams(print)
    'builtins.builtin_function_or_method'
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_hparams(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): plain_hparams(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_hparams(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return f"{type(value).__module__}.{type(value).__qualname__}"


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
    saved = training_config(config)
    return {f"train.{k}": v for k, v in run_hparams(saved).items()} if saved is not None else {}


def row_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The row keys of a run as HParams names that sort first (TensorBoard orders by name):
    ``1 phi``, ``2 stage``, ``3 data size``, ``4 preset``; an evaluation shows its training run's.

    >>> row_hparams({"model": {"class_path": "univg.modules.SFTModule", "init_args": {"backbone": {"preset": "tiny"}}},
    ...              "data": {"init_args": {"num_train": 8000}}})
    {'1 phi': 'n/a', '2 stage': 'stage 1 CoT-SFT', '3 data size': 8000, '4 preset': 'tiny'}
    """
    keys = row_keys(config, training_config(config))
    return {f"{i} {name}": keys[name] for i, name in enumerate(ROW_KEYS, 1)}


def metric_tags(base: Sequence[str] = HPARAM_METRICS) -> list[str]:
    """HParams metric columns: ``base`` and ``test/acc@0.5/<task>`` for every task type an
    evaluation can score (MIG-Bench's ten and the synthetic ``single``). Every run registers the
    same columns, whatever its own data, since TensorBoard takes one run's list for the whole view.

    >>> metric_tags(base=("test/avg",))[:3]
    ['test/avg', 'test/acc@0.5/single', 'test/acc@0.5/diff']
    """
    from univg.data.synthetic import TASKS

    return list(base) + [f"test/acc@0.5/{t}" for t in TASKS]


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


def register_session(logger: Any, params: Mapping[str, Any], metrics: Sequence[str]) -> None:
    """A TensorBoard HParams session in ``logger``'s folder: ``params`` and ``metrics`` as its
    columns, without writing any metric value (a run shows a value once it has logged one)."""
    from torch.utils.tensorboard.summary import hparams

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
    writer = logger.experiment._get_file_writer()
    for summary in hparams(values, dict.fromkeys(metrics, 0.0)):
        writer.add_summary(summary)
    writer.flush()


class HParamsLogger(Callback):
    """Log the resolved config as hyper-parameters (rank 0) with :data:`HPARAM_METRICS` as columns.

    The config comes from LightningCLI's ``SaveConfigCallback`` (the same values as the saved
    ``config.yaml``); without a CLI (plain ``Trainer``) the module's ``hparams`` are used. The
    module's own hyper-parameters are then not logged a second time (one session per run).
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics is not None else None  # None: metric_tags()
        self._done = False
        self._config: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        pl_module._log_hyperparams = False  # these are logged here, with the row keys
        first = next(cb for cb in trainer.callbacks if isinstance(cb, HParamsLogger))
        if self._done or first is not self or trainer.logger is None or not trainer.is_global_zero:
            return  # one logger per run even when the callback was added twice
        config = self._config = self._resolved_config(trainer, pl_module)
        params = row_hparams(config)
        params.update(run_hparams(config))
        params.update(training_hparams(config))
        params["run"] = str(getattr(trainer.logger, "name", "") or "")
        stage = str(getattr(stage, "value", stage))  # "fit", not the enum (CSV writes its name)
        params["stage"] = stage
        metrics = self.metrics if self.metrics is not None else metric_tags()
        # an evaluation of a trained run puts its numbers in that run's session (on_*_end)
        own_session = not (stage in _EVALUATIONS and training_config_path(config) is not None)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics={})  # hparams.yaml only: no placeholder values
                if own_session:
                    register_session(logger, params, metrics)
            elif takes_metrics(logger):
                logger.log_hyperparams(params, metrics={})
            else:  # CSV, W&B, MLflow: plain hyper-parameters (they have no HParams columns to register)
                logger.log_hyperparams(params)
        self._done = True

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._into_training_run(trainer, "test")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # not the validation loop inside a fit
            self._into_training_run(trainer, "validate")

    def _into_training_run(self, trainer: L.Trainer, stage: str) -> None:
        """An evaluation of a trained run: its metrics also go into that run's TensorBoard folder
        (beside the training run's ``config.yaml``), where the HParams view reads the training
        run's columns."""
        from lightning.pytorch.loggers import TensorBoardLogger

        path = training_config_path(self._config) if self._done else None
        tensorboard = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
        if path is None or not tensorboard or not trainer.is_global_zero:
            return
        prefix = _EVALUATIONS[stage]
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        write_scalars(path.parent, values)

    @staticmethod
    def _resolved_config(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        from lightning.pytorch.cli import SaveConfigCallback

        for cb in trainer.callbacks:
            if isinstance(cb, SaveConfigCallback):
                cfg = cb.config
                return cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
        hparams = {k: v for k, v in pl_module.hparams.items() if not k.startswith("_")}
        cls = type(pl_module)
        return {"model": {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": hparams}}


def write_scalars(log_dir: str | Path, values: Mapping[str, float], step: int = 1) -> None:
    """``values`` as TensorBoard scalars in ``log_dir`` (a new events file beside the others), at
    ``step`` (after the NaN placeholders the HParams registration writes at step 0)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir), filename_suffix=".evaluation")
    try:
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()


__all__ = [
    "HPARAM_METRICS",
    "HParamsLogger",
    "flatten",
    "metric_tags",
    "plain_hparams",
    "register_session",
    "row_hparams",
    "run_hparams",
    "takes_metrics",
    "training_hparams",
    "write_scalars",
]
