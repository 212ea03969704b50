"""A module that answers instead of a model, the synthetic benchmark it answers, and a quiet test
trainer: shared by the evaluation tests that check what was generated, recomputed or resumed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from univg.data import SyntheticDataModule
from univg.model.backbone import BackboneSpec
from univg.modules import GroundingModule

ANSWER = "<think>there</think><answer>(100, 100), (500, 500)</answer>"


class Scripted(GroundingModule):
    """One fixed answer per sample; counts generate calls and the ids asked; can fail on a call."""

    def __init__(self, fail_on_call: int | None = None, **kw) -> None:
        super().__init__(backbone=BackboneSpec(preset="tiny"), num_pictures=0, **kw)
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.asked: list[str] = []

    def generate_completions(self, batch):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated interruption")
        self.asked += list(batch["ids"])
        return [ANSWER] * len(batch["ids"]), [False] * len(batch["ids"])


def synthetic(processor, n: int = 7) -> SyntheticDataModule:
    """A synthetic test split of ``n`` samples over two MIG task types, evaluated 3 at a time."""
    dm = SyntheticDataModule(
        num_train=0, num_val=0, num_test=n, tasks=["diff", "region"], image_size=56, eval_batch_size=3
    )
    dm._processor = processor
    dm.setup()
    return dm


def trainer(root: Path, name: str = "bench", version: int | None = None) -> L.Trainer:
    """A test trainer; ``version=None`` numbers each run afresh (version_0, version_1, ...) as the CLI does."""
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name=name, version=version),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
