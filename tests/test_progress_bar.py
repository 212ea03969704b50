"""The training progress bar counts optimiser steps, as checkpoint names do: a real ``Trainer.fit``
of the tiny model, GRPO (two micro-batches per step) and SFT with gradient accumulation, read back
from what the bar shows. Lightning's own bar showed ``Epoch 0/-2`` and ``6/3`` for ``max_steps 3``."""

from __future__ import annotations

import re

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from scripted_engine import Scripted

from univg.callbacks.progress import StepRichProgressBar, StepTQDMProgressBar
from univg.data import SyntheticDataModule
from univg.model.backbone import BackboneSpec
from univg.modules import GRPOModule, SFTModule

MIXED = ["<think>a</think><answer>(10, 10), (500, 500)</answer>", "junk"]


def _trainer(tmp_path, **kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        enable_model_summary=False,
        logger=False,
        default_root_dir=str(tmp_path),
    )
    return L.Trainer(**(args | kw))


def _grpo(tokenizer) -> GRPOModule:
    torch.manual_seed(0)
    return GRPOModule(
        backbone=BackboneSpec(preset="tiny"),
        lr=1e-4,
        group_size=2,
        max_completion_length=16,
        beta=0.0,
        prompts_per_step=4,  # 2 micro-batches of 2 prompts per optimiser step
        log_completions_every=0,
        engine=Scripted([MIXED], tokenizer, cycle=True),
    )


def _data(num_train: int, mode: str) -> SyntheticDataModule:
    return SyntheticDataModule(
        num_train=num_train, num_val=0, tasks=["single"], image_size=56, train_mode=mode, batch_size=2
    )


def _rich_row(bar: StepRichProgressBar) -> tuple[str, str]:
    """(description, "completed/total") of the training row as the rich bar renders it."""
    from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn

    task = bar.progress.tasks[bar.train_progress_bar_id]
    return task.description.strip(), str(BatchesProcessedColumn(style="").render(task))


def test_grpo_bar_shows_optimiser_steps_and_no_negative_epoch_total(tokenizer, tmp_path, capsys):
    # 8 prompts an epoch, 4 a step: 2 steps an epoch; max_steps 3 ends in epoch 1 after 6 micro-batches
    trainer = _trainer(tmp_path)
    trainer.fit(_grpo(tokenizer), datamodule=_data(8, "generate"))
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepRichProgressBar)
    assert trainer.global_step == 3
    assert _rich_row(bar) == ("Epoch 1", "3/3")
    shown = capsys.readouterr().out  # a non-terminal console prints the bar's last frame
    assert re.search(r"Epoch 1\s.*\b3/3\b", shown), shown
    assert "/-2" not in shown and "6/3" not in shown
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    assert ckpt.name == "epoch=1-step=3.ckpt"  # the bar's count is the checkpoint's step


def test_sft_bar_with_gradient_accumulation_counts_optimiser_steps(tmp_path):
    # 8 batches an epoch, 2 per optimiser step: 4 steps an epoch, max_steps 3 stops at batch 6
    torch.manual_seed(0)
    module = SFTModule(backbone=BackboneSpec(preset="tiny"), lr=1e-4, warmup_ratio=0.0)
    trainer = _trainer(tmp_path, accumulate_grad_batches=2)
    trainer.fit(module, datamodule=_data(16, "train"))
    assert trainer.global_step == 3
    assert _rich_row(trainer.progress_bar_callback) == ("Epoch 0", "3/3")
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    assert ckpt.name == "epoch=0-step=3.ckpt"


def test_a_tqdm_bar_counts_optimiser_steps_over_the_epochs_it_names(tokenizer, tmp_path):
    # max_epochs 2 bounds the fit: the bar names the last epoch; 2 steps an epoch, 4 in all
    trainer = _trainer(
        tmp_path, max_steps=-1, max_epochs=2, callbacks=[TQDMProgressBar()], enable_checkpointing=False
    )
    trainer.fit(_grpo(tokenizer), datamodule=_data(8, "generate"))
    bar = trainer.progress_bar_callback
    assert isinstance(bar, StepTQDMProgressBar)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (4, 4)
    assert bar.train_progress_bar.desc.startswith("Epoch 1/1")
