"""GRPO's lr schedule and step axes in a real ``Trainer.fit``: both count the fit's optimiser steps.

Lightning builds the scheduler in ``configure_optimizers``, before it has loaded the training data;
a length read then falls back to the micro-batch count. These fits run the real module and trainer
(completions scripted, so no sampling) and read the optimiser's lr after every step; the comments
give the numbers a schedule sized by micro-batches would show instead.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from scripted_engine import Scripted

from univg.data import SyntheticDataModule
from univg.model.backbone import BackboneSpec
from univg.modules import GRPOModule

PEAK, FLOOR = 1e-3, 0.1  # linear decay from PEAK to FLOOR x PEAK, no warm-up
MIXED = ["<think>a</think><answer>(10, 10), (500, 500)</answer>", "junk"]  # rewards differ
SAME = ["junk", "junk"]  # zero variance: dropped under dynamic sampling


class LrAfterEachStep(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.steps_seen = 0

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step > self.steps_seen:  # an optimiser step (and the scheduler's) just ran
            self.steps_seen = trainer.global_step
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(
    tokenizer, groups, num_train: int, trainer_kw: dict | None = None, **module_kw
) -> tuple[LrAfterEachStep, GRPOModule]:
    torch.manual_seed(0)
    module = GRPOModule(
        backbone=BackboneSpec(preset="tiny"),
        lr=PEAK,
        schedule="linear",
        warmup_ratio=0.0,
        min_lr_ratio=FLOOR,
        group_size=2,
        max_completion_length=16,
        beta=0.0,
        log_completions_every=0,
        engine=Scripted(groups, tokenizer, cycle=True),
        **module_kw,
    )
    data = SyntheticDataModule(
        num_train=num_train, num_val=0, tasks=["single"], image_size=56, train_mode="generate", batch_size=2
    )
    record = LrAfterEachStep()
    kw = dict(logger=False, enable_checkpointing=False) | (trainer_kw or {})
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[record],
        **kw,
    )
    trainer.fit(module, datamodule=data)
    return record, module


def test_schedule_ends_at_its_floor_with_many_micro_batches_per_step(tokenizer):
    # 16 prompts, 2 per micro-batch, 8 per step: 8 micro-batches make 2 optimiser steps.
    # By hand: after step 1, progress 1/2 -> 0.1 + 0.9 * 0.5 = 0.55; after step 2 -> 0.1.
    # (Sized by micro-batches, the schedule would be 8 long: 0.8875 and 0.775 of the peak.)
    record, module = _fit(tokenizer, [MIXED], num_train=16, prompts_per_step=8)
    assert module._schedule_total == 2
    assert record.lrs == pytest.approx([0.55 * PEAK, FLOOR * PEAK])


def test_dynamic_sampling_schedule_ends_at_its_floor_when_refill_draws_more(tokenizer):
    # 16 prompts, 2 per micro-batch, 4 per step: 4 steps planned. Every micro-batch holds one prompt
    # with reward variance and one without, so a step draws 4 micro-batches to keep 4 prompts: the
    # data ends after 2 steps. The schedule runs over the data drawn: after step k, 4k of 8
    # micro-batches, 2k of 4 plain steps -> 0.1 + 0.9 * (1 - 2k / 4) = 0.55, 0.1.
    # (Counted in steps made, the lr would stop at 0.1 + 0.9 * (1 - 2 / 4) = 0.55 of the peak.)
    record, module = _fit(
        tokenizer, [MIXED, SAME], num_train=16, prompts_per_step=4, dynamic_sampling={"max_tries": 4}
    )
    assert module._schedule_total == 4
    assert record.lrs == pytest.approx([0.55 * PEAK, FLOOR * PEAK])


def test_iterable_length_unknown_needs_max_steps():
    module = GRPOModule(backbone=BackboneSpec(preset="tiny"))

    class Trainer:  # what Lightning reports for an iterable dataset with no max_steps
        train_dataloader = object()
        num_training_batches = float("inf")
        max_epochs = 1
        max_steps = -1
        world_size = 1

    module._trainer = Trainer()
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        module.optimizer_steps_total()


def test_logs_and_checkpoints_count_optimiser_steps(tokenizer, tmp_path):
    # 12 prompts, 2 per micro-batch, 4 per step: 3 optimiser steps of 2 micro-batches. Each step's
    # values are logged at x = 0, 1, 2 (as automatic optimisation logs), the checkpoint says step=3.
    # (Lightning counted micro-batches under manual optimisation: x = 1, 3, 5.)
    import csv

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    trainer_kw = dict(
        logger=logger, enable_checkpointing=True, log_every_n_steps=1, default_root_dir=tmp_path
    )
    _fit(tokenizer, [MIXED], num_train=12, trainer_kw=trainer_kw, prompts_per_step=4)
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r.get("train/kl")] == [0, 1, 2]
    ckpts = [p.name for p in (tmp_path / "run" / "version_0" / "checkpoints").glob("*.ckpt")]
    assert ckpts == ["epoch=0-step=3.ckpt"]
