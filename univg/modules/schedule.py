"""The learning-rate schedule and the number of optimiser steps a fit makes.

:func:`warmup_cosine` is every module's lr multiplier; a GRPO optimiser step takes
``prompts_per_step`` prompts whatever the micro-batch size (:func:`micro_batches_per_step`), so
its fit's length is counted here (:func:`grpo_optimizer_steps`) rather than by Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L

#: Learning-rate schedules after the warm-up.
SCHEDULES = ("cosine", "linear", "constant")


def warmup_cosine(
    step: int, total: int, warmup: int, schedule: str = "cosine", min_ratio: float = 0.0
) -> float:
    """LR multiplier at optimiser step ``step`` (0-based) of ``total``: linear warm-up over ``warmup``
    steps, then cosine or linear decay to ``min_ratio`` at step ``total``, or constant.

    After the warm-up these are transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` and
    ``get_linear_schedule_with_warmup`` (what the release's HF Trainer ran; ``linear`` with no
    warm-up is its default); during the warm-up step 0 already trains at ``1 / warmup`` of the peak,
    where transformers starts at 0 (a step that changes nothing).

    >>> [round(warmup_cosine(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    >>> round(warmup_cosine(10, 10, 2, min_ratio=0.1), 3)
    0.1
    >>> [warmup_cosine(s, 4, 0, "linear") for s in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def micro_batches_per_step(prompts_per_step: int, batch_size: int, world: int) -> int:
    """Micro-batches of ``batch_size`` prompts per process that make one optimiser step of
    ``prompts_per_step`` prompts over ``world`` processes.

    >>> micro_batches_per_step(16, 2, 4)
    2
    """
    per_step = batch_size * world
    if prompts_per_step % per_step:
        raise ValueError(
            f"prompts_per_step={prompts_per_step} must be a multiple of the prompts per micro-batch "
            f"across processes ({batch_size} x {world} = {per_step})"
        )
    return prompts_per_step // per_step


def grpo_optimizer_steps(
    trainer: L.Trainer, micro_batches_per_step: Callable[[int], int], num_iterations: int
) -> int:
    """Optimiser steps of a GRPO fit: under manual optimisation Lightning's estimate counts
    micro-batches, while a step takes ``prompts_per_step`` prompts (``micro_batches_per_step(batch
    size)`` micro-batches) and runs ``num_iterations`` updates (a last partial step per epoch
    included), capped by ``max_steps``.

    Called from ``configure_optimizers``, before Lightning has loaded the training data: the data
    is set up here first (as Lightning's own ``estimated_stepping_batches`` does), so the length
    is never the micro-batch fallback."""
    if trainer.train_dataloader is None and trainer.max_epochs != -1:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches  # per process and epoch, limit_train_batches applied
    loader = trainer.train_dataloader
    batch_size = getattr(loader, "batch_size", None) if loader is not None else None
    max_steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else None
    if not batch_size or not math.isfinite(batches) or trainer.max_epochs == -1:
        if max_steps is None:
            raise ValueError(
                "the length of the lr schedule is unknown (an iterable dataset or max_epochs -1): "
                "set trainer.max_steps"
            )
        return max_steps
    per_epoch = math.ceil(int(batches) / micro_batches_per_step(int(batch_size)))
    total = per_epoch * max(1, trainer.max_epochs or 1) * num_iterations
    return max(1, min(total, max_steps) if max_steps is not None else total)


__all__ = ["SCHEDULES", "grpo_optimizer_steps", "micro_batches_per_step", "warmup_cosine"]
