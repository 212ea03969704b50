"""A last checkpoint that is never stale.

:class:`CheckpointOnInterrupt` (added to every ``python -m univg fit`` by the CLI) turns Ctrl+C
into "finish this optimiser step, write ``last.ckpt``, stop", so a resumed run repeats nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from univg.callbacks.resume import clear_interrupted, mark_interrupted


class CheckpointOnInterrupt(Callback):
    """On SIGINT (Ctrl+C) or SIGTERM (what SLURM's ``scancel``, a job's time limit and Kubernetes
    send) during ``fit``: finish the current optimiser step (or evaluation), save ``last.ckpt``
    beside the run's checkpoints, then stop (Lightning exits with status 1).

    Without it a Ctrl+C leaves ``last.ckpt`` where the last periodic save put it, up to a checkpoint
    interval behind, and the resumed run repeats those steps; a SIGTERM ended the fit with status 0
    and saved nothing. The save happens at a step boundary (never inside an accumulation window or an
    optimiser step), where Lightning's own mid-epoch checkpoints are taken, so resuming from it is
    exact. A second signal stops at once, unsaved. With several processes, any one signalled makes
    all of them save and stop together.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._requested = False
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._saved = False
        self._step_before = 0
        self._signal_name = ""

    # -------------------------------------------------------------------------------- signal
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requested = self._saved = False
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            # after Lightning's own SIGTERM handler (set when the fit starts), which stops with status 0
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
            self._installed = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._requested:  # the second signal: the usual immediate stop
            self._restore()
            raise KeyboardInterrupt
        self._requested = True
        name = self._signal_name = signal.Signals(signum).name
        print(
            f"\nunivg: {name}: finishing the current step, then saving last.ckpt (again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self) -> None:
        if self._installed:
            for s, previous in self._previous.items():
                signal.signal(s, previous)
            self._installed = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        path = last_checkpoint_path(trainer)
        if path is not None and trainer.is_global_zero:  # completed: nothing left to resume
            clear_interrupted(path.parent)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    # -------------------------------------------------------------------------------- save points
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._saved:
            self._stop()
        self._step_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Only right after an optimiser step: inside an accumulation window (or while GRPO buffers
        # rollouts for its next step) part of the work is in no checkpoint. This is the point where
        # Lightning's ModelCheckpoint saves too, which is what makes resuming from it exact. The
        # stop itself waits for the next batch (or evaluation), so this step's metrics are logged.
        if trainer.global_step != self._step_before and self._agreed(trainer):
            self._save(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved and not trainer.sanity_checking:
            self._stop()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and not self._saved and self._agreed(trainer):
            self._save(trainer)
            self._stop()

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether a stop was asked for, on any process (all must save and stop together)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(self._requested, all=False))
        return self._requested

    def _save(self, trainer: L.Trainer) -> None:
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                mark_interrupted(path, trainer.global_step, self._signal_name)
                print(
                    f"univg: interrupt: saved {path} at step {trainer.global_step}",
                    file=sys.stderr,
                    flush=True,
                )
        self._saved = True

    def _stop(self) -> None:
        self._restore()
        raise KeyboardInterrupt


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where ``last.ckpt`` goes: the folder of the run's (first) ``ModelCheckpoint``; ``None``
    when checkpointing is off."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return None


__all__ = ["CheckpointOnInterrupt", "last_checkpoint_path"]
