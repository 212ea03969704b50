"""``python -m univg {fit,validate,test,predict}``: LightningCLI over univg's modules and data.

Models and data are chosen by ``class_path`` in YAML (subclass mode); the resolved config is saved
beside every run's TensorBoard events. A config file may build on another one: a top-level
``base_config: grpo.yaml`` (a path relative to the file) reads that file first and this one over it,
as ``--config grpo.yaml --config <this file>`` would (:func:`expand_config_bases`).
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError, RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import DefaultHelpFormatter
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from univg.callbacks import CheckpointOnInterrupt
from univg.callbacks.resume import config_differences, find_interrupted, keep_csv_metrics
from univg.core.errors import EXIT_USAGE, UsageError, condense_parse_error, reported
from univg.core.help_text import examples_epilog
from univg.model.checkpoint_io import AtomicCheckpointIO
from univg.model.checkpoints import CheckpointError, check_checkpoint, mismatch
from univg.modules.base import GroundingModule

# Where runs go unless a config says otherwise: runs/<name>/version_N/.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default"},
    },
}


def _checkpoint_of(model: object) -> str | None:
    """The checkpoint the model's backbone loads (None for a preset), for linking."""
    return getattr(getattr(model, "backbone", None), "checkpoint", None)


def _frame_of(model: object) -> str:
    """The coordinate frame the model's backbone writes (its preset's family), for linking."""
    backbone = getattr(model, "backbone", None)
    return backbone.frame.name if backbone is not None else "qwen2-vl"


def _family_of(model: object) -> str:
    """The backbone family (its preset's), whose image processor the data uses, for linking."""
    backbone = getattr(model, "backbone", None)
    return backbone.family.name if backbone is not None else "qwen2-vl"


#: Errors of building the run from its config (the modules' and data modules' own checks).
_CONSTRUCTION_ERRORS = (ValueError, TypeError, FileNotFoundError, MisconfigurationException)


#: What ``python -m univg SUBCOMMAND --help`` ends with: commands to copy.
SUBCOMMAND_EXAMPLES: dict[str, tuple[str, ...]] = {
    "fit": (
        "python -m univg fit --config configs/debug.yaml",
        "python -m univg fit --config configs/grpo_diff_debug.yaml --trainer.max_steps 3",
        "python -m univg fit --config configs/grpo_diff.yaml --print_config",
    ),
    "validate": ("python -m univg validate --config configs/eval/synthetic.yaml",),
    "test": (
        "python -m univg test --config configs/eval/synthetic.yaml",
        "python -m univg test --config configs/eval/mig_bench.yaml --model.init_args.backbone.checkpoint GD-ML/UniVG-R1",
    ),
    "predict": ("python -m univg predict --config configs/eval/synthetic.yaml",),
}


class _ExamplesHelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with descriptions and the examples kept one per line as written."""


class ConfigError(UsageError):
    """The config could not be turned into a run; the message is one line naming the part."""


class UniVGCLI(LightningCLI):
    """LightningCLI with univg's defaults (TensorBoard under ``runs/``, config saved per run).

    Every config error ends as one ``univg: error: ...`` line (exit status 2): parse errors name the
    key (``model.init_args.backbone.preset: ...``), construction errors the part and class; set
    ``UNIVG_DEBUG=1`` for the full traceback.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Raise instead of printing the 80-line usage: main() turns the error into one line.
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("prog", "python -m univg")
        kwargs.setdefault("formatter_class", _ExamplesHelpFormatter)  # subcommands inherit it
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        # One value, two readers: the data's processor (tokenizer, image processor) comes from the
        # checkpoint the model loads, so a YAML never names the path twice.
        parser.link_arguments(
            "model", "data.init_args.processor_path", compute_fn=_checkpoint_of, apply_on="instantiate"
        )
        # The frame the targets and ground-truth boxes are written in is the backbone's (Qwen2-VL:
        # [0, 1000); Qwen2.5-VL: pixels of the resized image), never a second setting to keep in step.
        parser.link_arguments("model", "data.init_args.frame", compute_fn=_frame_of, apply_on="instantiate")
        # So is the image processor without a checkpoint (patch size, normalisation: its family's).
        parser.link_arguments(
            "model", "data.init_args.backbone_family", compute_fn=_family_of, apply_on="instantiate"
        )

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path here (the whole file, for its hyper-parameters), right after
        # parsing: the inputs are checked first, so a bad file or path costs nothing and says so.
        config = self._subcommand_config()
        if self.config.get("subcommand") == "fit":
            self._resume_interrupted(config)
        if self.config.get("subcommand"):  # run=False only builds: configs may name absent files
            check_inputs(config)
        if self.config.get("subcommand") == "fit":
            check_training(config)
        # Lightning's own step here would parse the checkpoint's saved hyper-parameters over the
        # config (even its model class): the config given is the run, and the checkpoint is checked
        # against the model it builds (_check_resume_matches).

    def _resume_interrupted(self, config: Any) -> None:
        """A fit without ``--ckpt_path`` whose previous run (same logger folder, same config) was
        stopped by a signal resumes it, into the same version folder (:mod:`univg.callbacks.resume`)."""
        if config.get("ckpt_path") is not None or config.get("model.init_args.fresh"):
            return
        logger = config.get("trainer.logger")
        init = logger.get("init_args") if hasattr(logger, "get") else None
        if init is None or init.get("save_dir") is None or init.get("version") is not None:
            return
        found = find_interrupted(Path(init.get("save_dir")) / str(init.get("name") or "lightning_logs"))
        if found is None:
            return
        saved_config = found.version_dir / "config.yaml"
        parser = self._parser("fit")
        current = yaml.safe_load(parser.dump(config, skip_none=False))
        saved = yaml.safe_load(saved_config.read_text(encoding="utf-8")) if saved_config.is_file() else {}
        differences = config_differences(saved, current)
        if differences:
            shown = "; ".join(differences[:3]) + (
                f" (+{len(differences) - 3} more)" if len(differences) > 3 else ""
            )
            print(
                f"univg: {found.version_dir} was interrupted at step {found.step} but its config differs "
                f"({shown}): starting a new run (--ckpt_path {found.checkpoint} resumes it)",
                file=sys.stderr,
            )
            return
        config["ckpt_path"] = str(found.checkpoint)
        config["trainer.logger.init_args.version"] = found.version
        kept = keep_csv_metrics(found)
        if kept is not None:  # Lightning's CSVLogger empties metrics.csv of a folder it reuses
            print(f"univg: the steps logged before the interruption stay in {kept}", file=sys.stderr)
        print(
            f"univg: resuming the interrupted run {found.version_dir} from {found.checkpoint.name} "
            f"(step {found.step}); --fresh starts a new run instead",
            file=sys.stderr,
        )

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as err:  # torch's strict load of --ckpt_path into the built module
            if "Error(s) in loading state_dict" not in str(err):
                raise
            path = self._subcommand_config().get("ckpt_path")
            raise mismatch(path, "--ckpt_path", self.model, err) from err

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except _CONSTRUCTION_ERRORS as err:
            raise ConfigError(_construction_message(err, self._subcommand_config())) from err

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Ctrl+C saves last.ckpt at the next step boundary (see CheckpointOnInterrupt).
        if not any(isinstance(cb, CheckpointOnInterrupt) for cb in trainer.callbacks):
            trainer.callbacks.append(CheckpointOnInterrupt())
        # Checkpoints are written beside their destination and renamed into place (see
        # univg.model.checkpoint_io); a CheckpointIO the config chose itself is left alone.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):  # a short summary instead of Lightning's metric table
            parser.set_defaults(verbose=False)  # --verbose true prints that table as well
        parser.epilog = examples_epilog(*SUBCOMMAND_EXAMPLES[subcommand])
        return parser

    def after_validate(self) -> None:
        self._print_evaluation_summary("val")

    def after_test(self) -> None:
        self._print_evaluation_summary("test")

    def _print_evaluation_summary(self, stage: str) -> None:
        """AVG, Acc@0.5 per task and where the full table was written (:func:`evaluation_summary`)."""
        from univg.evaluation.tables.cells import evaluation_summary

        result = getattr(self.model, "last_results", {}).get(stage)
        if result is not None and self.trainer.is_global_zero:
            print(evaluation_summary(result))

    def _subcommand_config(self) -> Any:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config


def check_inputs(config: Any) -> None:
    """Checkpoints and data files of a parsed config, before anything is built.

    Raises :class:`CheckpointError` for an unreadable checkpoint and :class:`ConfigError` for a
    missing data file or image folder, naming the config key as the user wrote it.
    """
    for option, value in (
        ("--ckpt_path", config.get("ckpt_path")),
        ("model.init_args.init_checkpoint", config.get("model.init_args.init_checkpoint")),
    ):
        # Lightning also takes the names "last", "best", "hpc" and "registry[:...]" here.
        if isinstance(value, str) and (os.sep in value or Path(value).suffix):
            if option.startswith("model.") and not Path(value).exists():
                raise CheckpointError(
                    f"{option} {value}: no such file. A stage-2 config starts from the stage-1 run's "
                    "checkpoint (python -m univg fit --config configs/cot_sft.yaml writes it); point "
                    f"{option} at yours, or null to start from the backbone"
                )
            check_checkpoint(value, option)
    data = config.get("data.init_args")
    for key, value in data.items() if hasattr(data, "items") else ():
        if isinstance(value, str) and (key.endswith("_file") or key == "image_root"):
            if not Path(value).exists():
                raise ConfigError(f"data.init_args.{key}: {value} does not exist. {_how_to_get(value)}")


def _how_to_get(path: str) -> str:
    """The next step for a missing data file: the ``python -m univg data`` command that prepares it."""
    from univg.data.prepare import dataset_of

    entry = dataset_of(path)
    if entry is not None:
        return f"python -m univg data prepare {entry.name} gets it ready ({entry.title})"
    return "python -m univg data list shows every dataset, where it goes and how to get it"


def check_training(config: Any) -> None:
    """A fit that would train nothing, or not at all as asked, is refused naming the key: a step or
    epoch budget of 0 (Lightning stops at once and saves nothing) and an lr <= 0."""
    for key in ("trainer.max_steps", "trainer.max_epochs"):
        if config.get(key) == 0:
            raise ConfigError(f"{key}: 0 trains nothing (-1 or null: no limit)")
    lr = config.get("model.init_args.lr")
    if isinstance(lr, (int, float)) and not lr > 0:  # not > : NaN too
        raise ConfigError(f"model.init_args.lr must be > 0, got {lr}")


#: Short flags for settings users type often, expanded before LightningCLI parses.
SHORTCUTS = {"--fresh": "--model.init_args.fresh=true"}


def expand_shortcuts(args: list[str]) -> list[str]:
    """``--fresh`` (start an evaluation over instead of resuming) -> ``--model.init_args.fresh=true``.

    >>> expand_shortcuts(["test", "--config", "c.yaml", "--fresh"])
    ['test', '--config', 'c.yaml', '--model.init_args.fresh=true']
    """
    return [SHORTCUTS.get(a, a) for a in args]


#: The top-level key of a config file that names the file it builds on (relative to its own folder).
BASE_KEY = "base_config"


def expand_config_bases(args: list[str]) -> list[str]:
    """Each ``--config FILE`` whose YAML has a top-level ``base_config`` becomes ``--config BASE``
    (itself expanded, so bases chain) followed by FILE's other keys, so a short overlay such as
    ``configs/grpo_diff.yaml`` runs standalone and layers with further ``--config`` files as usual.

    >>> expand_config_bases(["fit", "--config=trainer: {max_steps: 3}"])  # no file: as it was
    ['fit', '--config', 'trainer: {max_steps: 3}']
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            out += _config_chain(args[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            out += _config_chain(arg.split("=", 1)[1])
        else:
            out.append(arg)
        i += 1
    return out


def _config_chain(value: str, seen: tuple[Path, ...] = ()) -> list[str]:
    if not os.path.isfile(value):  # a YAML string, or a missing file (LightningCLI says so)
        return ["--config", value]
    path = Path(value)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or BASE_KEY not in data:
        return ["--config", value]
    base = path.parent / str(data.pop(BASE_KEY))
    if not os.path.isfile(base):
        raise ConfigError(f"{value}: {BASE_KEY}: {base} does not exist (a path relative to {path.parent})")
    if base.resolve() in seen or base.resolve() == path.resolve():
        raise ConfigError(f"{value}: {BASE_KEY}: {base} builds on itself")
    rest = ["--config", yaml.safe_dump(data, sort_keys=False)] if data else []
    return _config_chain(str(base), (*seen, path.resolve())) + rest


def main(args: list[str] | None = None, run: bool = True) -> UniVGCLI:
    """Entry point (also ``univg`` on the PATH). ``run=False`` instantiates without running.

    Bad input, found while parsing, building or running (a config value, a data record, an image,
    a checkpoint, a reward plug-in, a full disk), ends as one ``univg: error: ...`` line with exit
    status 2 (:mod:`univg.core.errors`; ``UNIVG_DEBUG=1`` raises the original error instead).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with reported("univg"):
        try:
            if args is None:  # LightningCLI reads sys.argv itself
                sys.argv[1:] = expand_config_bases(expand_shortcuts(sys.argv[1:]))
            else:
                args = expand_config_bases(expand_shortcuts(args))
            return _cli(args, run)
        except ArgumentError as err:
            raise ConfigError(condense_parse_error(str(err))) from err


def _cli(args: list[str] | None, run: bool) -> UniVGCLI:
    return UniVGCLI(
        model_class=GroundingModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def _construction_message(err: BaseException, config: Any) -> str:
    """``part (class): message`` from the innermost error a class raised while being built."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(err)
    part = "model" if "GroundingModule" in text else "data" if "LightningDataModule" in text else None
    if part is None and isinstance(err, MisconfigurationException):
        part = "trainer"
    if part is None:
        return " ".join(str(root).split())
    class_path = config.get(f"{part}.class_path") if part else None
    where = f"{part} ({class_path})" if class_path else part
    return f"{where}: {' '.join(str(root).split())}"


__all__ = [
    "BASE_KEY",
    "EXIT_USAGE",
    "ConfigError",
    "TensorBoardLogger",
    "UniVGCLI",
    "expand_config_bases",
    "main",
]

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
