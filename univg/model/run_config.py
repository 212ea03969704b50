"""What a run was, read from the configuration LightningCLI saved beside it.

Every ``python -m univg fit|test`` writes ``config.yaml`` beside the run's TensorBoard events
(the grid: ``runs/<row>/fit/config.yaml``, ``runs/<row>/test/config.yaml``). An evaluation names
the weights it loaded (``model.init_args.init_checkpoint``); the training run's ``config.yaml``
is beside them (``<row>/fit/weights.ckpt``) or one folder up (``<row>/fit/checkpoints/last.ckpt``).

:func:`row_keys` says what distinguishes a row of the paper's tables (phi, stage, data size,
backbone preset); the reports and the HParams view read them from here, never from run names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from univg.model.backbone import BackboneSpec

#: The keys that tell the rows of the paper's tables apart, in the order they are shown.
ROW_KEYS = ("phi", "stage", "data size", "preset")

#: The value of a row key that does not apply (phi of an SFT run, data size of an evaluation).
NOT_APPLICABLE = "n/a"


def read_config(path: str | Path) -> dict[str, Any]:
    """A saved ``config.yaml``; an unreadable one is a ``ValueError`` naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a LightningCLI config (a mapping), got {type(data).__name__}")
    return data


def init_args(config: Mapping[str, Any], part: str) -> dict[str, Any]:
    """``config[part]["init_args"]`` (empty when absent)."""
    return dict(((config.get(part) or {}).get("init_args")) or {})


def run_directory(ckpt: str | Path) -> Path | None:
    """The run directory that holds LightningCLI's ``config.yaml``: beside or above the checkpoint
    (``<run>/checkpoints/last.ckpt``, ``<run>/weights.ckpt``, a sharded ``<run>/checkpoints/x.ckpt/``)."""
    ckpt = Path(ckpt)
    for d in (ckpt.parent, ckpt.parent.parent, ckpt.parent.parent.parent):
        if (d / "config.yaml").is_file():
            return d
    return None


def backbone_of(config: Mapping[str, Any], source: str | Path) -> BackboneSpec:
    """The run's ``BackboneSpec`` from its resolved config (``model.init_args.backbone``); a bad
    entry is a ``ValueError`` naming ``source`` and the key."""
    model = config.get("model")
    args = model.get("init_args", model) if isinstance(model, dict) else None
    spec = (args or {}).get("backbone")
    if spec is None:
        return BackboneSpec()  # the module's default backbone
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: model.init_args.backbone: expected a mapping, got {spec!r}")
    spec = dict(spec.get("init_args", spec))
    spec.pop("class_path", None)
    try:
        return BackboneSpec(**spec)
    except TypeError as err:
        raise ValueError(f"{source}: model.init_args.backbone: {err}") from err


def write_model_config(folder: str | Path, module: Any) -> Path:
    """``<folder>/config.yaml`` naming ``module``'s class and backbone, in LightningCLI's layout, for
    runs made without the CLI (the demo): what :func:`backbone_of` reads to rebuild the model of a
    checkpoint in that folder (``python -m univg.predict``, ``python -m univg.export``)."""
    import dataclasses
    import json

    cls = type(module)
    backbone = json.loads(json.dumps(dataclasses.asdict(module.backbone)))  # tuples as lists
    config = {
        "model": {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {"backbone": backbone}}
    }
    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def training_config_path(config: Mapping[str, Any]) -> Path | None:
    """The ``config.yaml`` of the run that trained the weights ``config`` loads (None: none found)."""
    ckpt = init_args(config, "model").get("init_checkpoint")
    run = run_directory(ckpt) if ckpt else None
    return run / "config.yaml" if run is not None else None


def training_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saved config of the training run whose weights ``config`` evaluates (None: not found)."""
    path = training_config_path(config)
    return read_config(path) if path is not None else None


def results_configs(results_path: str | Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the evaluation's config, its training run's config) of a ``results_<stage>.json``; either
    is None when not saved (results written outside the CLI, weights from elsewhere)."""
    path = Path(results_path).parent / "config.yaml"
    if not path.is_file():
        return None, None
    config = read_config(path)
    return config, training_config(config)


def _data_size(data: Mapping[str, Any]) -> int | str:
    args = init_args(data, "data")
    if "num_train" in args:
        return int(args["num_train"])
    sources = args.get("sources")
    if sources:
        return sum(int(s.get("count") or 0) for s in sources)
    if args.get("train_file"):
        return f"{Path(str(args['train_file'])).name} (whole)"
    return NOT_APPLICABLE


def row_keys(config: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """phi, stage, data size and preset of a run: of ``config`` when it trains, else of
    ``training`` (the run that trained the weights an evaluation loads); ``n/a`` where a key
    does not apply (phi of an SFT run; stage and data size of an untrained model).

    >>> grpo = {"model": {"class_path": "univg.modules.GRPOModule", "init_args": {"phi": "exp",
    ...         "init_checkpoint": "runs/cot/fit/weights.ckpt", "backbone": {"preset": "tiny"}}},
    ...         "data": {"init_args": {"num_train": 160}}}
    >>> row_keys(grpo)
    {'phi': 'exp', 'stage': 'stage 2 GRPO', 'data size': 160, 'preset': 'tiny'}
    >>> row_keys({"model": {"class_path": "univg.modules.GroundingModule"}})["stage"]
    'base (untrained)'
    """
    run = config
    cls = str((config.get("model") or {}).get("class_path", ""))
    if not cls.endswith(("GRPOModule", "SFTModule")):
        run = training if training is not None else config
        cls = str((run.get("model") or {}).get("class_path", ""))
    model = init_args(run, "model")
    preset = (init_args(config, "model").get("backbone") or {}).get("preset", NOT_APPLICABLE)
    if cls.endswith("GRPOModule"):
        kind, phi = "GRPO", str(model.get("phi", NOT_APPLICABLE))
    elif cls.endswith("SFTModule"):
        answer_only = init_args(run, "data").get("target_format") == "answer"
        kind, phi = ("SFT" if answer_only else "CoT-SFT"), NOT_APPLICABLE
    else:
        return {
            "phi": NOT_APPLICABLE,
            "stage": "base (untrained)",
            "data size": NOT_APPLICABLE,
            "preset": preset,
        }
    stage = f"stage {2 if model.get('init_checkpoint') else 1} {kind}"
    return {"phi": phi, "stage": stage, "data size": _data_size(run), "preset": preset}


__all__ = [
    "NOT_APPLICABLE",
    "ROW_KEYS",
    "backbone_of",
    "init_args",
    "read_config",
    "results_configs",
    "row_keys",
    "run_directory",
    "training_config",
    "training_config_path",
    "write_model_config",
]
