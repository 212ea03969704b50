"""What every univg LightningModule shares: the backbone, the optimiser, evaluation by generation
(the books of an evaluation are kept by :class:`univg.evaluation.EvaluationWriter`)."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch

from univg.callbacks import plain_hparams
from univg.core.boxes import parse_answer
from univg.core.sample_types import SampleError
from univg.distributed.sharded_build import return_freed_memory_if_large
from univg.evaluation import (
    EvaluationWriter,
    decode_prompts,
    extract_reasoning,
    format_prediction,
    model_frame_gt,
)
from univg.evaluation.metrics import PARSE_KEYS, PARSES, GroundingMetrics
from univg.evaluation.release_parse import release_fields, release_scorer
from univg.model.backbone import BackboneSpec, count_parameters
from univg.model.checkpoints import load_model_weights
from univg.model.decoding import DECODING_MODES, Decoding, checkpoint_decoding, greedy_decoding
from univg.model.tokenizer import load_tokenizer
from univg.modules.schedule import SCHEDULES, warmup_cosine
from univg.rl.rewards import iou_reward
from univg.rl.rollout import generate, model_inputs


class GroundingModule(L.LightningModule):
    """Backbone wrapper + AdamW/cosine + greedy-generation evaluation (Acc@0.5 per task).

    Args:
        backbone: what to build (preset or checkpoint, frozen vision, LoRA, ...).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of optimiser steps spent warming up linearly.
        schedule: "cosine" or "linear" (decay to ``min_lr_ratio`` x lr after warm-up, reached after
            the last optimiser step) or "constant".
        min_lr_ratio: floor of the decay as a share of ``lr`` (0 decays to zero).
        adam_betas: AdamW's (beta1, beta2).
        max_grad_norm: gradient clipping (0 disables).
        max_new_tokens: generation budget at evaluation.
        predictions_dir: where evaluation predictions (JSONL) go; default the logger's directory.
        strict_parse: score with the strict parser (last ``<answer>`` block); both are always logged.
        init_checkpoint: start from the weights of a univg Lightning checkpoint (e.g. the stage-1
            run's ``last.ckpt``); optimiser state and step counters start fresh. For Hugging Face
            directories use ``backbone.checkpoint`` instead.
        benchmark: name of the evaluated benchmark in results and tables (a key of
            ``univg.evaluation.tables.BENCHMARKS``, e.g. "mig_bench", "refcoco+/testA", "lisa/val"); default
            inferred from the data module's class and file name.
        run_name: the row name of this run in tables; default the logger's experiment name.
        num_pictures: predictions drawn as PNG (and logged to TensorBoard) per evaluation epoch.
        resume_predictions: a predictions JSONL file, or the directory of an interrupted run, whose
            finished samples are not evaluated again. Without it a validate/test run resumes from
            its own predictions directory and from the last unfinished run of the same name (an
            earlier ``version_N``) by itself; records of another model are ignored.
        pictures_dir: where pictures go; default ``<predictions dir>/pictures_<stage>``.
        decoding: "greedy" (plain greedy, every setting explicit) or "checkpoint" (the settings of
            ``backbone.checkpoint``'s own ``generation_config.json``, read explicitly, as the
            release's evaluation inherited them); the settings used go into the results JSON.
        headline_parse: which parse gives the headline numbers: "strict", "compatible" or
            "release" (the release's own scorer, ``univg.evaluation.release_parse``); default from
            ``strict_parse``. All three are always reported.
        fresh: start the evaluation over instead of resuming the last unfinished run of the same
            name and benchmark (an earlier ``version_N`` folder), which is the default.
    """

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        lr: float = 5e-6,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.015,
        schedule: Literal["cosine", "linear", "constant"] = "cosine",
        min_lr_ratio: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        max_grad_norm: float = 1.0,
        max_new_tokens: int = 256,
        predictions_dir: str | None = None,
        strict_parse: bool = True,
        init_checkpoint: str | None = None,
        benchmark: str | None = None,
        run_name: str | None = None,
        num_pictures: int = 8,
        resume_predictions: str | None = None,
        pictures_dir: str | None = None,
        decoding: Literal["greedy", "checkpoint"] = "greedy",
        headline_parse: Literal["strict", "compatible", "release"] | None = None,
        fresh: bool = False,
    ) -> None:
        super().__init__()
        # Every run's hparams.yaml and checkpoint hold the module's arguments (a subclass's too), as
        # plain data: a checkpoint still loads with torch.load(weights_only=True). A rollout engine
        # holds a model; the run's config.yaml names it.
        self.save_hyperparameters(ignore=["engine"])
        self.save_hyperparameters(plain_hparams(dict(self.hparams)))
        if max_new_tokens < 1:  # nothing generated: every sample would score 0 and the run "pass"
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if decoding not in DECODING_MODES:
            raise ValueError(f"decoding must be one of {DECODING_MODES}, got {decoding!r}")
        if headline_parse is not None and headline_parse not in PARSES:
            raise ValueError(f"headline_parse must be one of {PARSES} or null, got {headline_parse!r}")
        if fresh and resume_predictions is not None:
            raise ValueError("fresh: true starts over; it cannot also resume_predictions")
        self.backbone = backbone or BackboneSpec()
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.schedule = schedule
        self.min_lr_ratio = min_lr_ratio
        self.adam_betas = tuple(adam_betas)
        self.max_grad_norm = max_grad_norm
        self.max_new_tokens = max_new_tokens
        self.predictions_dir = predictions_dir
        self.strict_parse = strict_parse
        self.init_checkpoint = init_checkpoint
        self.model: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self.benchmark = benchmark
        self.run_name = run_name
        self.num_pictures = num_pictures
        self.resume_predictions = resume_predictions
        self.pictures_dir = pictures_dir
        self.decoding = decoding
        self.headline_parse = headline_parse or ("strict" if strict_parse else "compatible")
        self.fresh = fresh
        self._decoding: Decoding | None = None
        # Running per-process metrics of the current epoch (the results are computed from the gathered,
        # de-duplicated prediction rows at epoch end; these are for callers that inspect a step).
        self.metrics = torch.nn.ModuleDict(
            {"val": GroundingMetrics(sync_on_compute=False), "test": GroundingMetrics(sync_on_compute=False)}
        )
        # screening, resume, prediction files, results and pictures (univg.evaluation.writer)
        self.evaluation = EvaluationWriter()

    # ----------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the backbone here (not in ``__init__``) so FSDP can shard it as it is made."""
        if getattr(self, "_device_mesh", None) is not None:
            # FSDP2 under ModelParallelStrategy: built on meta, each rank materialises its shard only
            from univg.distributed import shard_module

            shard_module(self)
            return
        if self.model is None:
            self.model = self.backbone.build()
            if self.init_checkpoint is not None:
                load_model_weights(self.model, self.init_checkpoint)
            return_freed_memory_if_large(self.model)  # a 2B model on the CPU: 12.3 -> 10.4 GB peak

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone.checkpoint)
        return self._tokenizer

    @property
    def frame(self) -> Any:
        return self.backbone.frame

    def configure_callbacks(self) -> list[L.Callback]:
        """The trainer's progress bar counts optimiser steps (:mod:`univg.callbacks.progress`); no callbacks added."""
        from univg.callbacks.progress import use_step_progress_bar

        use_step_progress_bar(self.trainer)
        return []

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
            opt = torch.optim.AdamW(
                params, lr=self.lr, betas=self.adam_betas, weight_decay=self.weight_decay, fused=fused
            )
        except (RuntimeError, TypeError):  # fused unsupported for this dtype/device
            opt = torch.optim.AdamW(params, lr=self.lr, betas=self.adam_betas, weight_decay=self.weight_decay)
        self._schedule_total = None  # sized afresh for this fit
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_multiplier(step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_steps_total(self) -> int:
        """Optimiser steps of the whole fit, the length of the lr schedule (Lightning's estimate:
        batches / gradient accumulation, capped by ``max_steps``)."""
        if self._trainer is None:
            return 1
        return max(1, int(self.trainer.estimated_stepping_batches))

    def lr_multiplier(self, step: int) -> float:
        """The schedule's lr multiplier at optimiser step ``step`` (0-based)."""
        if getattr(self, "_schedule_total", None) is None:
            self._schedule_total = self.optimizer_steps_total()
        total = self._schedule_total
        return warmup_cosine(
            step, total, math.ceil(self.warmup_ratio * total), self.schedule, self.min_lr_ratio
        )

    # ----------------------------------------------------------------------------- evaluation
    # The module generates and scores; ``self.evaluation`` (univg.evaluation.EvaluationWriter) decides
    # which samples run (screening, resume) and writes predictions, results and pictures.

    def score_completions(
        self, texts: list[str], boxes: torch.Tensor, sizes: list[tuple[int, int] | None] | None = None
    ) -> dict[str, Any]:
        """Strict and compatible parses and IoUs of completions against model-frame boxes [B, 4].

        The IoU is the accuracy reward's (:func:`univg.rl.rewards.iou_reward`: the predicted box is
        mapped out of the model frame and clamped into the image), so evaluation and training score
        a box the same way. ``sizes``: (width, height) of each resized target image (pixel frames).
        """
        gt = boxes.tolist()
        strict = [parse_answer(t, strict=True) for t in texts]
        compat = [parse_answer(t, strict=False) for t in texts]
        known = sizes if sizes is not None and all(sz is not None for sz in sizes) else None
        iou_s = iou_reward(texts, gt, strict=True, frame=self.frame, sizes=known)
        iou_c = iou_reward(texts, gt, strict=False, frame=self.frame, sizes=known)
        return {"strict": strict, "compat": compat, "iou_strict": iou_s, "iou_compat": iou_c, "gt": gt}

    def decoding_settings(self) -> Decoding:
        """The evaluation decode's settings (read once: the checkpoint's file for "checkpoint")."""
        if self._decoding is None:
            if self.decoding == "checkpoint":
                self._decoding = checkpoint_decoding(self.backbone.checkpoint, self.max_new_tokens)
            else:
                self._decoding = greedy_decoding(self.max_new_tokens)
        return self._decoding

    def check_context(self, batch: dict[str, Any], new_tokens: int) -> None:
        """Refuse a batch whose longest prompt plus ``new_tokens`` would run past the model's context
        (``max_position_embeddings``): generated past it, the answer is garbage that scores 0."""
        config = getattr(self.model, "config", None)
        limit = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        lengths = batch.get("prompt_lengths")
        if not isinstance(limit, int) or lengths is None:
            return
        over = [i for i, n in enumerate(lengths.tolist()) if int(n) + new_tokens > limit]
        if over:
            i = over[0]
            samples = batch.get("samples")
            where = samples[i].where() if samples is not None else f"sample {batch['ids'][i]}"
            raise SampleError(
                f"{where}: a prompt of {int(lengths[i])} tokens and {new_tokens} new tokens exceed the "
                f"model's context of {limit} tokens ({len(over)} of the batch's {len(lengths)} samples); "
                "lower max_pixels or the generation length"
            )

    def generate_completions(self, batch: dict[str, Any]) -> tuple[list[str], list[bool]]:
        """Completions of a generate-mode batch by :meth:`decoding_settings`: (B texts, B truncated flags)."""
        kw = self.decoding_settings().generate_kwargs()
        self.check_context(batch, int(kw.get("max_new_tokens", self.max_new_tokens)))
        roll = generate(self.model, model_inputs(batch), self.tokenizer, **kw)
        return roll.texts, [bool(t) for t in roll.truncated.tolist()]

    def _target_frame_sizes(self, batch: dict[str, Any]) -> list[tuple[int, int] | None]:
        """(width, height) in pixels of each sample's *resized* target image (pixel frames need it)."""
        samples, grid = batch.get("samples"), batch.get("image_grid_thw")
        if samples is None or grid is None:
            return [None] * len(batch["ids"])
        vision = getattr(getattr(self.model, "config", None), "vision_config", None)
        patch = int(getattr(vision, "patch_size", 14))
        out, cursor = [], 0
        for s in samples:
            g = grid[cursor + s.target_index]  # [t, h, w] in patches
            out.append((int(g[2]) * patch, int(g[1]) * patch))
            cursor += len(s.images)
        return out

    def prediction_records(
        self, batch: dict[str, Any], texts: list[str], truncated: list[bool], stage: str
    ) -> list[dict[str, Any]]:
        """One JSON-able row per sample: completion, reasoning, parses and IoUs (model frame), the
        predicted box in pixels of the original target image (``pred_box_px``) and the run key."""
        from univg.data.images import image_size

        samples = batch.get("samples")
        sizes = self._target_frame_sizes(batch)
        gt = batch["boxes"].tolist()
        if samples is not None:  # scored in floats, not the collator's integer target
            gt = [model_frame_gt(smp.box, self.frame, size) for smp, size in zip(samples, sizes)]
        s = self.score_completions(texts, torch.tensor(gt, dtype=torch.float64), sizes)
        key = self.evaluation.run_key(stage)
        scorer = self.evaluation.release_scorer(stage) or release_scorer(self.benchmark)
        prompts = decode_prompts(self.tokenizer, batch) if scorer == "zero_shot" else [""] * len(texts)
        image_root = getattr(self._datamodule(), "image_root", None)
        records = []
        for i, text in enumerate(texts):
            primary = s["compat"][i] if self.headline_parse == "compatible" else s["strict"][i]
            rec: dict[str, Any] = {
                "id": batch["ids"][i],
                "task": batch["tasks"][i],
                "completion": text,
                "reasoning": extract_reasoning(text),
                "pred": list(s["strict"][i]) if s["strict"][i] is not None else None,
                "pred_compatible": list(s["compat"][i]) if s["compat"][i] is not None else None,
                "gt": s["gt"][i],
                "iou": s["iou_strict"][i],
                "iou_compatible": s["iou_compat"][i],
                "truncated": bool(truncated[i]),
                "frame_size": list(sizes[i]) if sizes[i] is not None else None,
                "run_key": key,
            }
            sample = samples[i] if samples is not None else None
            norm = list(sample.box.as_tuple()) if sample is not None else [g / 1000 for g in s["gt"][i]]
            rec.update(release_fields(scorer, text, prompts[i], s["gt"][i], norm))
            if self.headline_parse == "release" and rec["pred_release"] is not None:
                primary = tuple(rec["pred_release"])
            if sample is not None:
                rec["target_index"] = sample.target_index
                rec["question"] = sample.question
                if sample.meta.get("no_gt"):  # user images: no ground truth to score against
                    rec.update(gt=None, iou=None, iou_compatible=None, iou_release=None, no_gt=True)
                try:
                    width, height = image_size(sample.images[sample.target_index], image_root)
                except OSError:
                    width = height = None
                rec["image_size"] = [width, height] if width else None
                if primary is not None and width:
                    fw, fh = sizes[i] if sizes[i] is not None else (None, None)
                    box = self.frame.from_model(primary, fw, fh)
                    x1, y1, x2, y2 = box.as_tuple()
                    rec["pred_box_px"] = [
                        round(x1 * width),
                        round(y1 * height),
                        round(x2 * width),
                        round(y2 * height),
                    ]
                else:
                    rec["pred_box_px"] = None
            records.append(rec)
        return records

    def evaluation_step(self, batch: dict[str, Any], stage: str) -> list[dict[str, Any]]:
        """Generate, score and record one batch; rows of samples finished by a resumed run are skipped."""
        done = self.evaluation.done_ids(stage)
        if done and all(i in done for i in batch["ids"]):
            return []
        texts, truncated = self.generate_completions(batch)
        records = [r for r in self.prediction_records(batch, texts, truncated, stage) if r["id"] not in done]
        if records:
            key, parsed = PARSE_KEYS[self.headline_parse]
            self.metrics[stage].update(
                torch.tensor([r[key] for r in records]),
                [r["task"] for r in records],
                torch.tensor([r[parsed] is not None for r in records]),
                torch.tensor([r["iou_compatible"] for r in records]),
                torch.tensor([r["pred_compatible"] is not None for r in records]),
            )
        self.evaluation.add(self, stage, batch, records)
        return records

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Answer user images: print the reasoning and the box in pixels of the target image, save
        the drawn picture (``record["picture"]``); returns the prediction rows."""
        texts, truncated = self.generate_completions(batch)
        records = self.prediction_records(batch, texts, truncated, "predict")
        self.evaluation.draw(self, "predict", batch, records, limit=None)
        for r in records:
            self.print(format_prediction(r))
        return records

    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    # ---- the evaluation writer's hooks -----------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Screen the evaluation split and, for validate/test, resume (:meth:`EvaluationWriter.setup`)."""
        self.evaluation.setup(self)

    def evaluation_view(self, split: str, samples: list[Any]) -> list[Any]:
        """The samples of the data module's ``split`` this run evaluates (asked by
        :meth:`univg.data.datamodules.GroundingDataModule.evaluation_samples`; nothing is changed)."""
        return self.evaluation.view(split, samples)

    def teardown(self, stage: str) -> None:
        self.evaluation.teardown(self)

    @property
    def last_results(self) -> dict[str, dict[str, Any]]:
        """Per stage, the last finished evaluation (what ``results_<stage>.json`` holds)."""
        return self.evaluation.results

    @property
    def last_eval(self) -> dict[str, dict[str, float]]:
        """Per stage, the metrics of the last finished evaluation."""
        return {stage: r["metrics"] for stage, r in self.evaluation.results.items()}

    def _begin_evaluation(self, stage: str) -> None:
        self.metrics[stage].reset()
        self.evaluation.begin(self, stage)

    def on_validation_epoch_start(self) -> None:
        self._begin_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._begin_evaluation("test")

    def on_predict_epoch_start(self) -> None:
        self.evaluation.begin_predict(self)

    def _end_evaluation(self, stage: str) -> None:
        metrics = self.evaluation.end(self, stage)
        for k, v in (metrics or {}).items():
            self.log(f"{stage}/{k}", v, sync_dist=False, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")
