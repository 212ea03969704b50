"""What every univg LightningModule shares: the backbone, the optimiser, evaluation by generation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from univg.backbone import BackboneSpec, count_parameters
from univg.boxes import box_iou, parse_answer
from univg.metrics import GroundingMetrics
from univg.rollout import generate, model_inputs
from univg.tokenizer import load_tokenizer


def warmup_cosine(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to 0 (or constant).

    >>> [round(warmup_cosine(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the ``model.*`` weights of a univg Lightning checkpoint into ``model`` (strict).

    Only the policy is taken (a GRPO checkpoint's ``ref_model.*`` is ignored): the caller's
    reference model, if any, is then a copy of these weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"init_checkpoint {path} does not exist (expected a .ckpt file of a univg run)"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ValueError(f"init_checkpoint {path} holds no 'model.*' weights (keys: {list(state)[:5]} ...)")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied lm_head / embedding may be stored once; anything else missing is an error
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"init_checkpoint {path} does not match the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


class GroundingModule(L.LightningModule):
    """Backbone wrapper + AdamW/cosine + greedy-generation evaluation (Acc@0.5 per task).

    Args:
        backbone: what to build (preset or checkpoint, frozen vision, LoRA, ...).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of optimiser steps spent warming up linearly.
        schedule: "cosine" (decay to 0 after warm-up) or "constant".
        max_grad_norm: gradient clipping (0 disables).
        max_new_tokens: generation budget at evaluation.
        predictions_dir: where evaluation predictions (JSONL) go; default the logger's directory.
        strict_parse: score with the strict parser (last ``<answer>`` block); both are always logged.
        init_checkpoint: start from the weights of a univg Lightning checkpoint (e.g. the stage-1
            run's ``last.ckpt``); optimiser state and step counters start fresh. For Hugging Face
            directories use ``backbone.checkpoint`` instead.
    """

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        lr: float = 5e-6,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.015,
        schedule: str = "cosine",
        max_grad_norm: float = 1.0,
        max_new_tokens: int = 256,
        predictions_dir: str | None = None,
        strict_parse: bool = True,
        init_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        self.backbone = backbone or BackboneSpec()
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.schedule = schedule
        self.max_grad_norm = max_grad_norm
        self.max_new_tokens = max_new_tokens
        self.predictions_dir = predictions_dir
        self.strict_parse = strict_parse
        self.init_checkpoint = init_checkpoint
        self.model: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self.metrics = torch.nn.ModuleDict({"val": GroundingMetrics(), "test": GroundingMetrics()})
        self._predictions: dict[str, list[dict]] = {"val": [], "test": []}
        self.last_eval: dict[str, dict[str, float]] = {}

    # ----------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the backbone here (not in ``__init__``) so FSDP can shard it as it is made."""
        if self.model is None:
            self.model = self.backbone.build()
            if self.init_checkpoint is not None:
                load_model_weights(self.model, self.init_checkpoint)
        if getattr(self, "_device_mesh", None) is not None:
            from univg.distributed import shard_module  # FSDP2 under ModelParallelStrategy

            shard_module(self)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone.checkpoint)
        return self._tokenizer

    @property
    def frame(self) -> Any:
        return self.backbone.frame

    def on_fit_start(self) -> None:
        n, t = count_parameters(self.model), count_parameters(self.model, trainable_only=True)
        self.print(
            f"univg: {type(self).__name__} on {self.backbone.preset}: {n:,} parameters, {t:,} trainable"
        )

    # ----------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check backbone.freeze_vision / lora settings")
        fused = all(p.device.type in ("cuda", "cpu") for p in params) and params[0].dtype == torch.float32
        try:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, fused=fused)
        except (RuntimeError, TypeError):  # fused unsupported for this dtype/device
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        warmup = math.ceil(self.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warmup, self.schedule)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------------- evaluation
    def score_completions(self, texts: list[str], boxes: torch.Tensor) -> dict[str, Any]:
        """Strict and compatible parses and IoUs of completions against model-frame boxes [B, 4]."""
        gt = boxes.tolist()
        strict = [parse_answer(t, strict=True) for t in texts]
        compat = [parse_answer(t, strict=False) for t in texts]
        iou_s = [box_iou(p, g) if p is not None else 0.0 for p, g in zip(strict, gt)]
        iou_c = [box_iou(p, g) if p is not None else 0.0 for p, g in zip(compat, gt)]
        return {"strict": strict, "compat": compat, "iou_strict": iou_s, "iou_compat": iou_c, "gt": gt}

    def evaluation_step(self, batch: dict[str, Any], stage: str) -> dict[str, Any]:
        roll = generate(self.model, model_inputs(batch), self.tokenizer, max_new_tokens=self.max_new_tokens)
        s = self.score_completions(roll.texts, batch["boxes"])
        primary = s["iou_strict"] if self.strict_parse else s["iou_compat"]
        parsed = [p is not None for p in (s["strict"] if self.strict_parse else s["compat"])]
        self.metrics[stage].update(
            torch.tensor(primary),
            batch["tasks"],
            torch.tensor(parsed),
            torch.tensor(s["iou_compat"]),
            torch.tensor([p is not None for p in s["compat"]]),
        )
        for i, text in enumerate(roll.texts):
            self._predictions[stage].append(
                {
                    "id": batch["ids"][i],
                    "task": batch["tasks"][i],
                    "completion": text,
                    "pred": list(s["strict"][i]) if s["strict"][i] is not None else None,
                    "pred_compatible": list(s["compat"][i]) if s["compat"][i] is not None else None,
                    "gt": s["gt"][i],
                    "iou": s["iou_strict"][i],
                    "iou_compatible": s["iou_compat"][i],
                    "truncated": bool(roll.truncated[i]),
                }
            )
        return s

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def _end_evaluation(self, stage: str) -> None:
        result = self.metrics[stage].compute()
        self.metrics[stage].reset()
        self.last_eval[stage] = result
        for k, v in result.items():
            self.log(f"{stage}/{k}", v, sync_dist=False, rank_zero_only=True)
        self._write_predictions(stage)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    def prediction_path(self, stage: str) -> Path | None:
        root = self.predictions_dir
        if root is None and self._trainer is not None and self.trainer.log_dir is not None:
            root = self.trainer.log_dir
        if root is None:
            return None
        rank = self.global_rank if self._trainer is not None else 0
        suffix = f".rank{rank}" if self._trainer is not None and self.trainer.world_size > 1 else ""
        step = self.global_step if self._trainer is not None else 0
        return Path(root) / f"predictions_{stage}_step{step}{suffix}.jsonl"

    def _write_predictions(self, stage: str) -> None:
        records, self._predictions[stage] = self._predictions[stage], []
        path = self.prediction_path(stage)
        if path is None or not records:
            return
        os.makedirs(path.parent, exist_ok=True)
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
