"""The demo's stages on in-memory data: base evaluation, CoT-SFT, and the stage-2 runs from the
stage-1 checkpoint (continued CoT-SFT, GRPO, GRPO-Difficulty), each then evaluated."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from univg.core.boxes import Qwen2VLFrame, box_iou
from univg.core.sample_types import GroundingSample
from univg.data.datamodules import GroundingDataModule
from univg.demo.probe import LossRecorder, RewardProbe, StepRecorder
from univg.demo.sets import probe_set, stage2_prompts
from univg.demo.settings import DemoSettings, stage1_settings
from univg.evaluation.metrics import metrics_from_records
from univg.model.run_config import write_model_config
from univg.modules import GRPOModule, SFTModule

FRAME = Qwen2VLFrame()
#: Row names of the stage-2 runs (GRPO rows per phi; other phis get "GRPO-Difficulty (<phi>)").
CONTINUED_SFT = "continued CoT-SFT"
GRPO_LABELS = {"none": "GRPO", "exp": "GRPO-Difficulty"}

Rows = dict[str, dict[str, float]]
Curves = dict[str, list[dict[str, float]]]


class ListDataModule(GroundingDataModule):
    """In-memory train/test lists in a fixed order (the curriculum is the order)."""

    def __init__(self, train: list[GroundingSample], test: list[GroundingSample], **kwargs: Any) -> None:
        super().__init__(shuffle=False, **kwargs)
        self._lists = {"train": train, "val": None, "test": test}

    def read_split(self, split: str) -> list[GroundingSample] | None:
        return self._lists.get(split)


def _trainer(out: Path, name: str, max_steps: int = -1, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1 if max_steps > 0 else 1,
        logger=TensorBoardLogger(save_dir=str(out), name=name, version=0),
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        callbacks=list(callbacks),
        enable_model_summary=False,
    )


def _evaluate(module: Any, data: ListDataModule, out: Path, name: str) -> dict[str, float]:
    module.fresh = True  # a rerun into the same folder scores afresh, never resumes old predictions
    trainer = _trainer(out, name)
    trainer.test(module, datamodule=data, verbose=False)
    return dict(module.last_results["test"]["metrics"])


def constant_box_metrics(
    train: Sequence[GroundingSample], test: Sequence[GroundingSample]
) -> dict[str, float]:
    """The mean training box (model frame) predicted for every held-out sample."""
    boxes = torch.tensor([FRAME.to_model(s.box) for s in train], dtype=torch.float32)
    const = [int(round(v)) for v in boxes.mean(0).tolist()]
    records = []
    for s in test:
        iou = box_iou(const, FRAME.to_model(s.box))
        records.append(
            {"task": s.task, "iou": iou, "pred": const, "iou_compatible": iou, "pred_compatible": const}
        )
    return metrics_from_records(records)


def run_stage1(
    cfg: DemoSettings, train: list[GroundingSample], test: list[GroundingSample], out: Path, numerics: str
) -> tuple[Path, Rows, dict[str, float], list[float]]:
    """The untrained model's evaluation, CoT-SFT over the curriculum (one run, one schedule; the
    data order is the curriculum) and its evaluation. Returns the stage-1 checkpoint, the rows, the
    seconds and the per-step training losses.

    Stage 1 is reproducible to the bit under pinned numerics, so when ``out`` already holds a
    stage-1 checkpoint whose record (``stage1.json`` beside it) has the same stage-1 settings and
    numerics, it is evaluated instead of trained again (the record gives the losses and seconds).
    """
    data = ListDataModule(
        train, test, batch_size=cfg.sft_batch, eval_batch_size=50, target_format="cot", seed=cfg.seed
    )
    rows: Rows = {}
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    sft = SFTModule(
        backbone=cfg.backbone(freeze_vision=not cfg.train_vision),
        lr=cfg.sft_lr,
        warmup_ratio=cfg.warmup_ratio,
        min_lr_ratio=cfg.min_lr_ratio,
        adam_betas=cfg.adam_betas,
        max_new_tokens=cfg.max_new_tokens,
        run_name="base",
        num_pictures=0,
    )
    rows["base (untrained)"] = _evaluate(sft, data, out, "base")
    times["base_eval"] = time.perf_counter() - t0
    ckpt = out / "cot_sft" / "version_0" / "stage1.ckpt"
    record_path = ckpt.with_suffix(".json")
    key = {"stage1_settings": stage1_settings(cfg), "numerics": numerics}
    record = json.loads(record_path.read_text()) if record_path.exists() and ckpt.exists() else {}
    if numerics != "native" and {k: record.get(k) for k in key} == key:
        print(f"univg demo: stage 1 reused from {ckpt} (same stage-1 settings and numerics)")
        write_model_config(ckpt.parent, sft)
        times["cot_sft"] = record["seconds"]
        t0 = time.perf_counter()
        rows["CoT-SFT"] = evaluate_checkpoint(cfg, ckpt, test, out)
        times["cot_sft_eval"] = time.perf_counter() - t0
        return ckpt, rows, times, record["losses"]
    t0 = time.perf_counter()
    sft.run_name = "cot_sft"
    losses = LossRecorder()
    trainer = _trainer(out, "cot_sft", max_steps=sum(p.steps for p in cfg.phases), callbacks=[losses])
    trainer.fit(sft, datamodule=data)
    trainer.save_checkpoint(ckpt)
    write_model_config(ckpt.parent, sft)  # python -m univg.predict / export read the model from it
    times["cot_sft"] = time.perf_counter() - t0
    record_path.write_text(json.dumps({**key, "losses": losses.losses, "seconds": times["cot_sft"]}))
    t0 = time.perf_counter()
    sft.num_pictures = 8
    rows["CoT-SFT"] = _evaluate(sft, data, out, "cot_sft_eval")
    times["cot_sft_eval"] = time.perf_counter() - t0
    return ckpt, rows, times, losses.losses


def evaluate_checkpoint(
    cfg: DemoSettings, ckpt: str | os.PathLike, test: list[GroundingSample], out: Path
) -> dict[str, float]:
    """A stage-1 checkpoint's metrics on ``test`` (stage 2 alone reports its starting point)."""
    L.seed_everything(cfg.seed, verbose=False)
    sft = SFTModule(
        backbone=cfg.backbone(freeze_vision=True),
        init_checkpoint=str(ckpt),
        max_new_tokens=cfg.max_new_tokens,
        run_name="cot_sft",
        num_pictures=8,
    )
    data = ListDataModule([], test, batch_size=cfg.sft_batch, eval_batch_size=50, seed=cfg.seed)
    return _evaluate(sft, data, out, "cot_sft_eval")


def run_continued_sft(
    cfg: DemoSettings, ckpt: str | os.PathLike, test: list[GroundingSample], out: Path
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Paper Table 4 row 6: CoT-SFT continued from the stage-1 checkpoint on the stage-2 prompts
    (their generator CoT targets), ``cont_sft_epochs`` passes of ``grpo_prompts`` per step, constant
    lr, vision tower frozen as in GRPO. Returns the metrics, the seconds and the per-step losses."""
    prompts = stage2_prompts(cfg)
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    sft = SFTModule(
        backbone=cfg.backbone(freeze_vision=True),
        init_checkpoint=str(ckpt),
        lr=cfg.cont_sft_lr,
        warmup_ratio=0.0,
        schedule="constant",
        max_new_tokens=cfg.max_new_tokens,
        run_name="cont_sft",
        num_pictures=8,
    )
    data = ListDataModule(
        prompts * cfg.cont_sft_epochs,
        test,
        batch_size=cfg.grpo_prompts,
        eval_batch_size=50,
        target_format="cot",
        seed=cfg.seed,
    )
    losses = LossRecorder()
    steps = cfg.cont_sft_epochs * cfg.grpo_steps
    _trainer(out, "cont_sft", max_steps=steps, callbacks=[losses]).fit(sft, datamodule=data)
    times = {"cont_sft": time.perf_counter() - t0}
    t0 = time.perf_counter()
    metrics = _evaluate(sft, data, out, "cont_sft_eval")
    times["cont_sft_eval"] = time.perf_counter() - t0
    return metrics, times, losses.losses


def grpo_module(
    cfg: DemoSettings,
    ckpt: str | os.PathLike,
    phi: str,
    log_completions_every: int = 10,
    run_name: str | None = None,
    num_pictures: int = 8,
) -> GRPOModule:
    """The demo's stage-2 ``GRPOModule`` from the stage-1 checkpoint (``run_name`` default ``grpo_<phi>``)."""
    return GRPOModule(
        backbone=cfg.backbone(freeze_vision=True),
        init_checkpoint=str(ckpt),
        lr=cfg.grpo_lr,
        warmup_ratio=0.0,
        schedule="constant",
        group_size=cfg.group_size,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_new_tokens,
        max_new_tokens=cfg.max_new_tokens,
        beta=cfg.beta,
        scale_rewards=cfg.scale_rewards,
        loss_type=cfg.loss_type,
        phi=phi,
        prompts_per_step=cfg.grpo_prompts,
        log_completions_every=log_completions_every,
        run_name=run_name or f"grpo_{phi}",
        num_pictures=num_pictures,
    )


def run_grpo(
    cfg: DemoSettings, ckpt: str | os.PathLike, test: list[GroundingSample], out: Path, phi: str
) -> tuple[list[dict[str, float]], list[dict[str, float]], dict[str, float], dict[str, float]]:
    """One GRPO run (``phi`` none: GRPO; exp: GRPO-Difficulty) from the stage-1 checkpoint.

    Returns the per-step logs (Figure 3), the reward-probe points, the metrics and the seconds.
    """
    prompts, probes = stage2_prompts(cfg), probe_set(cfg)
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    grpo = grpo_module(cfg, ckpt, phi)
    data = ListDataModule(
        prompts, test, batch_size=cfg.grpo_prompts, eval_batch_size=50, train_mode="generate", seed=cfg.seed
    )
    rec = StepRecorder()
    probe = RewardProbe(data.collator("generate")(probes), cfg.probe_every, seed=cfg.seed) if probes else None
    callbacks = [c for c in (rec, probe) if c is not None]
    _trainer(out, f"grpo_{phi}", max_steps=cfg.grpo_steps, callbacks=callbacks).fit(grpo, datamodule=data)
    times = {f"grpo_{phi}": time.perf_counter() - t0}
    t0 = time.perf_counter()
    metrics = _evaluate(grpo, data, out, f"grpo_{phi}_eval")
    times[f"grpo_{phi}_eval"] = time.perf_counter() - t0
    return rec.steps, probe.points if probe is not None else [], metrics, times


def run_grpo_stage(
    cfg: DemoSettings, ckpt: str | os.PathLike, test: list[GroundingSample], out: Path
) -> tuple[Curves, Curves, Rows, dict[str, float], dict[str, list[float]]]:
    """Stage 2 from a stage-1 checkpoint, every run on the same prompts: a GRPO run per phi of
    ``cfg.grpo_phis``, then continued CoT-SFT (unless ``cont_sft_epochs`` is 0), which comes first
    in the rows (the paper's Table 4 order).

    Returns the GRPO runs' per-step logs and probe points, the rows, the seconds, and the continued
    CoT-SFT's per-step losses.
    """
    curves: Curves = {}
    probes: Curves = {}
    grpo_rows: Rows = {}
    times: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    for phi in cfg.grpo_phis:
        label = GRPO_LABELS.get(phi, f"GRPO-Difficulty ({phi})")
        curves[label], points, grpo_rows[label], t = run_grpo(cfg, ckpt, test, out, phi)
        if points:
            probes[label] = points
        times.update(t)
    rows: Rows = {}
    if cfg.cont_sft_epochs > 0:
        rows[CONTINUED_SFT], t, losses[CONTINUED_SFT] = run_continued_sft(cfg, ckpt, test, out)
        times.update(t)
    return curves, probes, {**rows, **grpo_rows}, times, losses
