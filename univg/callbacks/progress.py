"""The training progress bar in optimiser steps, the unit of checkpoint names and logged scalars.

Lightning's bars count training batches: a GRPO step takes several micro-batches and an SFT step
``accumulate_grad_batches`` of them, so a fit of ``max_steps 3`` showed ``6/3``, and ``Epoch 0/-2``
when only ``max_steps`` bounds the fit. :class:`StepRichProgressBar` and :class:`StepTQDMProgressBar`
show ``trainer.global_step`` out of the optimiser steps the fit plans (the module's
``optimizer_steps_total``, the length of its lr schedule), counted over the whole fit like the
``step=N`` of checkpoint names, and an epoch total only when ``max_epochs`` bounds the fit.

Every univg module puts them in place of Lightning's default bar (:func:`use_step_progress_bar`);
a bar the user chose is left as it is.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n


def planned_optimizer_steps(trainer: L.Trainer) -> int | float:
    """Optimiser steps the fit plans: the module's ``optimizer_steps_total()`` where it has one,
    else Lightning's estimate (batches / gradient accumulation, capped by ``max_steps``); ``inf``
    when the length is unknown."""
    module = trainer.lightning_module
    planned = getattr(module, "optimizer_steps_total", None)
    try:
        steps = planned() if callable(planned) else trainer.estimated_stepping_batches
    except (ValueError, OverflowError):  # an iterable dataset without max_steps
        return math.inf
    return int(steps) if math.isfinite(steps) else math.inf


def epoch_description(trainer: L.Trainer) -> str:
    """``Epoch E`` and, when ``max_epochs`` bounds the fit, ``/last`` (0-based, as Lightning).

    >>> from types import SimpleNamespace
    >>> epoch_description(SimpleNamespace(current_epoch=0, max_epochs=-1))
    'Epoch 0'
    >>> epoch_description(SimpleNamespace(current_epoch=1, max_epochs=3))
    'Epoch 1/2'
    """
    text = f"Epoch {trainer.current_epoch}"
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        text += f"/{trainer.max_epochs - 1}"
    return text


class _OptimiserSteps:
    """The bar's total and counter in optimiser steps (mixed into Lightning's two bars)."""

    _steps_planned: int | float = math.inf

    @property
    def total_train_batches(self) -> int | float:
        return self._steps_planned

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps_planned = planned_optimizer_steps(trainer)
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_step(trainer)  # a later epoch (or a resumed fit) goes on from the steps made

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the bars show batch_idx + 1: they are handed the optimiser steps made instead
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

    def _show_step(self, trainer: L.Trainer) -> None:
        raise NotImplementedError


class StepRichProgressBar(_OptimiserSteps, RichProgressBar):
    """Lightning's rich bar, counting optimiser steps (``3/3`` for ``max_steps 3``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = epoch_description(self.trainer)
        return f"{text:{len(self.validation_description)}}"  # as wide as "Validation": no flicker

    def _show_step(self, trainer: L.Trainer) -> None:
        self._update(self.train_progress_bar_id, trainer.global_step)


class StepTQDMProgressBar(_OptimiserSteps, TQDMProgressBar):
    """Lightning's tqdm bar, counting optimiser steps."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(epoch_description(trainer))

    def _show_step(self, trainer: L.Trainer) -> None:
        _update_n(self.train_progress_bar, trainer.global_step)


#: Lightning's default bars and their optimiser-step versions.
STEP_BARS = {RichProgressBar: StepRichProgressBar, TQDMProgressBar: StepTQDMProgressBar}


def use_step_progress_bar(trainer: L.Trainer) -> None:
    """Make the trainer's bar count optimiser steps when it is one of Lightning's own two (the
    default, or one configured by its settings only); any other bar, or none, is left alone."""
    for callback in trainer.callbacks:
        step_bar = STEP_BARS.get(type(callback))
        if step_bar is not None:
            # the same object with its settings and place in the list: only the counting changes
            callback.__class__ = step_bar


__all__ = [
    "StepRichProgressBar",
    "StepTQDMProgressBar",
    "epoch_description",
    "planned_optimizer_steps",
    "use_step_progress_bar",
]
