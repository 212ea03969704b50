"""The trainer's side of a run: callbacks a YAML or the CLI adds, and the run folder they keep.

- :mod:`~univg.callbacks.hparams`: :class:`HParamsLogger`, runs comparable in TensorBoard's HParams
  view (``--trainer.callbacks+=univg.callbacks.HParamsLogger``), and the plain hyper-parameters
  every univg module saves;
- :mod:`~univg.callbacks.interrupt`: :class:`CheckpointOnInterrupt`, ``last.ckpt`` at the step a
  signal stopped the fit;
- :mod:`~univg.callbacks.resume`: the marker an interrupted fit leaves, and resuming from it;
- :mod:`~univg.callbacks.progress`: the progress bar in optimiser steps.
"""

from univg.callbacks.hparams import (
    HPARAM_METRICS,
    HParamsLogger,
    flatten,
    metric_tags,
    plain_hparams,
    register_session,
    row_hparams,
    run_hparams,
    takes_metrics,
    training_hparams,
    write_scalars,
)
from univg.callbacks.interrupt import CheckpointOnInterrupt, last_checkpoint_path
from univg.callbacks.progress import StepRichProgressBar, StepTQDMProgressBar, use_step_progress_bar

__all__ = [
    "HPARAM_METRICS",
    "CheckpointOnInterrupt",
    "HParamsLogger",
    "StepRichProgressBar",
    "StepTQDMProgressBar",
    "flatten",
    "last_checkpoint_path",
    "metric_tags",
    "plain_hparams",
    "register_session",
    "row_hparams",
    "run_hparams",
    "takes_metrics",
    "training_hparams",
    "use_step_progress_bar",
    "write_scalars",
]
