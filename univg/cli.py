"""``python -m univg {fit,validate,test,predict}``: LightningCLI over univg's modules and data.

Models and data are chosen by ``class_path`` in YAML (subclass mode); the resolved config is saved
beside every run's TensorBoard events.
"""

from __future__ import annotations

import os
import sys

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

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


class UniVGCLI(LightningCLI):
    """LightningCLI with univg's defaults (TensorBoard under ``runs/``, config saved per run)."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        # One value, two readers: the data's processor (tokenizer, image processor) comes from the
        # checkpoint the model loads, so a YAML never names the path twice.
        parser.link_arguments(
            "model", "data.init_args.processor_path", compute_fn=_checkpoint_of, apply_on="instantiate"
        )


def main(args: list[str] | None = None, run: bool = True) -> UniVGCLI:
    """Entry point (also ``univg`` on the PATH). ``run=False`` instantiates without running."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _cli(args, run)
    except (FileNotFoundError, PermissionError) as err:  # a missing input or unwritable output: one line
        print(f"univg: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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


__all__ = ["main", "UniVGCLI", "TensorBoardLogger"]

if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
