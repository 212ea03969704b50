"""What every univg LightningModule shares: the backbone, the optimiser, evaluation by generation."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from univg.backbone import BackboneSpec, count_parameters
from univg.boxes import parse_answer
from univg.checkpoints import CheckpointError, check_checkpoint, unreadable
from univg.decoding import DECODING_MODES, Decoding, checkpoint_decoding, greedy_decoding
from univg.evaluation import (
    append_jsonl,
    check_writable,
    count_reasons,
    decode_prompts,
    extract_reasoning,
    gather_objects,
    infer_benchmark,
    load_resumed,
    model_frame_gt,
    reader_skips,
    resume_files,
    run_key,
    sample_notes,
    screen_decodable,
    screen_samples,
    shard_path,
    write_jsonl,
)
from univg.metrics import PARSE_KEYS, PARSES, GroundingMetrics, dedupe_records, metrics_from_records
from univg.release_parse import release_fields, release_scorer
from univg.rewards import iou_reward
from univg.rollout import generate, model_inputs
from univg.tokenizer import load_tokenizer

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


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load the ``model.*`` weights of a univg Lightning checkpoint into ``model`` (strict): a
    ``.ckpt`` file or the sharded folder an FSDP run writes.

    Only the policy is taken (a GRPO checkpoint's ``ref_model.*`` is ignored): the caller's
    reference model, if any, is then a copy of these weights.
    """
    path = Path(path)
    if path.is_dir() and any(path.glob("*.distcp")):
        # a sharded checkpoint of an FSDP run (e.g. stage 1 on 8 GPUs): read whole, in memory
        from univg.distributed import read_sharded_checkpoint

        state = read_sharded_checkpoint(path)
    elif not path.is_file():
        raise FileNotFoundError(
            f"init_checkpoint {path} does not exist (expected a .ckpt file or sharded checkpoint folder of a univg run)"
        )
    else:
        check_checkpoint(path, "init_checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch's errors neither name the file nor say what is wrong with it
            raise unreadable(path, "init_checkpoint", err) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"init_checkpoint {path}: holds a {type(state).__name__}, not a checkpoint")
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
            ``univg.reports.BENCHMARKS``, e.g. "mig_bench", "refcoco+/testA", "lisa/val"); default
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
            "release" (the release's own scorer, ``univg.release_parse``); default from
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
        self._predictions: dict[str, list[dict]] = {"val": [], "test": [], "predict": []}
        self._eval: dict[str, dict[str, Any]] = {}  # per stage: resumed records, bad records, notes
        self._pictures: dict[str, list[Any]] = {"val": [], "test": [], "predict": []}
        self.last_eval: dict[str, dict[str, float]] = {}
        self.last_results: dict[str, dict[str, Any]] = {}

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
    # Evaluation writes, per validate/test run, into the predictions directory (default the logger's):
    # predictions_<stage>.jsonl (one row per sample, gathered over processes, each id once),
    # results_<stage>.json/.md/.csv (metrics, the paper's table layout, skipped-record counts) and
    # pictures_<stage>/*.png. While an epoch runs each process appends its rows to a shard
    # (predictions_<stage>.rank<r>.part.jsonl) so that an interrupted run resumes where it stopped.

    def score_completions(
        self, texts: list[str], boxes: torch.Tensor, sizes: list[tuple[int, int] | None] | None = None
    ) -> dict[str, Any]:
        """Strict and compatible parses and IoUs of completions against model-frame boxes [B, 4].

        The IoU is the accuracy reward's (:func:`univg.rewards.iou_reward`: the predicted box is
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

    def generate_completions(self, batch: dict[str, Any]) -> tuple[list[str], list[bool]]:
        """Completions of a generate-mode batch by :meth:`decoding_settings`: (B texts, B truncated flags)."""
        kw = self.decoding_settings().generate_kwargs()
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
        key = self._eval.get(stage, {}).get("run_key")
        scorer = self._eval.get(stage, {}).get("release_scorer") or release_scorer(self.benchmark)
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
        done = self._eval.get(stage, {}).get("done_ids", set())
        if done and all(i in done for i in batch["ids"]):
            return []
        texts, truncated = self.generate_completions(batch)
        records = [r for r in self.prediction_records(batch, texts, truncated, stage) if r["id"] not in done]
        self._predictions[stage].extend(records)
        if records:
            key, parsed = PARSE_KEYS[self.headline_parse]
            self.metrics[stage].update(
                torch.tensor([r[key] for r in records]),
                [r["task"] for r in records],
                torch.tensor([r[parsed] is not None for r in records]),
                torch.tensor([r["iou_compatible"] for r in records]),
                torch.tensor([r["pred_compatible"] is not None for r in records]),
            )
        sanity = self._trainer is not None and self.trainer.sanity_checking
        path = self._eval.get(stage, {}).get("path")
        if path is not None and not sanity:
            append_jsonl(shard_path(path, self.global_rank), records)
        if not sanity:
            self._draw(stage, batch, records)
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
        self._draw("predict", batch, records, limit=None)
        for r in records:
            self.print(format_prediction(r))
        return records

    # ---- where things go --------------------------------------------------------------------------
    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def _output_dir(self) -> Path | None:
        """The predictions directory (a collective call under DDP: ``trainer.log_dir`` broadcasts)."""
        root = self.predictions_dir
        if root is None and self._trainer is not None and self.trainer.log_dir is not None:
            root = self.trainer.log_dir
        return Path(root) if root is not None else None

    def prediction_path(self, stage: str) -> Path | None:
        """``predictions_<stage>.jsonl`` (validate/test), ``predictions_val_step<N>.jsonl`` while fitting."""
        root = self._output_dir()
        if root is None:
            return None
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        name = (
            f"predictions_{stage}_step{self.global_step}.jsonl" if fitting else f"predictions_{stage}.jsonl"
        )
        return root / name

    def _run_label(self) -> str:
        if self.run_name:
            return self.run_name
        logger = self.logger if self._trainer is not None else None
        if logger is not None and getattr(logger, "name", None):
            return str(logger.name)
        path = self._eval.get("test", {}).get("path") or self._eval.get("val", {}).get("path")
        return Path(path).parent.name if path else "run"

    # ---- set-up: screening, resume ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Screen the evaluation split (bad records out and counted) and, for validate/test, resume."""
        if self._trainer is None:
            return
        fn = str(getattr(self.trainer.state.fn, "value", self.trainer.state.fn))
        split, key = {"fit": ("val", "val"), "validate": ("val", "val"), "test": ("test", "test")}.get(
            fn, ("test", "predict")
        )
        dm = self._datamodule()
        ev: dict[str, Any] = {"bad": [], "notes": {}, "resumed": [], "done_ids": set(), "finalised": False}
        ev["benchmark"] = self.benchmark or infer_benchmark(dm, key)
        ev["release_scorer"] = release_scorer(ev["benchmark"])
        decoding = self.decoding_settings()  # a bad decoding setting fails here, before the model is built
        ev["run_key"] = run_key(
            preset=self.backbone.preset,
            checkpoint=self.backbone.checkpoint,
            overrides=self.backbone.overrides,
            lora=str(self.backbone.lora),
            init_checkpoint=self.init_checkpoint,
            ckpt_path=str(self.trainer.ckpt_path) if self.trainer.ckpt_path else None,
            max_new_tokens=self.max_new_tokens,
            benchmark=ev["benchmark"],
            decoding=decoding.as_dict(),
        )
        self._eval[key] = ev
        # output folders are checked now: an unwritable one fails before a model is built
        for what in ("predictions_dir", "pictures_dir"):
            if getattr(self, what) is not None:
                check_writable(getattr(self, what), what)
        if key == "predict":
            ev["dir"] = self._output_dir()
            return
        ev["path"] = self.prediction_path(key) if fn != "fit" else None
        if ev["path"] is not None:
            check_writable(Path(ev["path"]).parent)
        samples = getattr(dm, "samples", {}).get(split) if dm is not None else None
        if samples is None:
            return
        kept, bad = screen_samples(samples, getattr(dm, "image_root", None))
        ev["bad"] = reader_skips(samples) + bad
        ev["notes"] = sample_notes(kept)
        if fn != "fit":
            if self.fresh:  # start over: this run's stale shard goes, nothing is read
                shard_path(ev["path"], self.global_rank).unlink(missing_ok=True)
            files = [] if self.fresh else resume_files(ev["path"], self.resume_predictions, key, auto=True)
            resumed, notes, lines = load_resumed(files, ev["run_key"], kept)
            ev["resumed"], ev["done_ids"] = resumed, {r["id"] for r in resumed}
            ev["notes"].update(notes)
            for line in lines:
                self.print(line)
            kept = [s for s in kept if s.id not in ev["done_ids"]]
        kept, undecodable = screen_decodable(kept, getattr(dm, "image_root", None))
        ev["bad"] += undecodable
        if len(kept) != len(samples):
            # borrow the data module's list for this run; teardown puts the original back
            ev["original_samples"] = (split, samples)
            dm.samples[split] = kept
        # nothing left (all resumed, or all bad records): Lightning skips the loop; teardown writes results
        ev["nothing_to_run"] = fn != "fit" and not kept

    def teardown(self, stage: str) -> None:
        for key, ev in list(self._eval.items()):
            if key != "predict" and ev.get("nothing_to_run") and not ev.get("finalised"):
                self._finalise(key, log=False)
            original = ev.pop("original_samples", None)
            if original is not None and self._datamodule() is not None:
                self._datamodule().samples[original[0]] = original[1]

    # ---- epochs -----------------------------------------------------------------------------------
    def _begin_evaluation(self, stage: str) -> None:
        ev = self._eval.setdefault(stage, {"bad": [], "notes": {}, "resumed": [], "done_ids": set()})
        ev["finalised"] = False
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting or "path" not in ev:  # while fitting: a new file per validation step
            sanity = self._trainer is not None and self.trainer.sanity_checking
            ev["path"] = None if sanity else self.prediction_path(stage)
        self._predictions[stage] = []
        self._pictures[stage] = []
        self.metrics[stage].reset()

    def on_validation_epoch_start(self) -> None:
        self._begin_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._begin_evaluation("test")

    def on_predict_epoch_start(self) -> None:
        self._eval.setdefault("predict", {})["dir"] = self._output_dir()
        self._pictures["predict"] = []

    def _end_evaluation(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.sanity_checking:
            self._predictions[stage] = []
            return
        self._finalise(stage, log=True)

    def _finalise(self, stage: str, log: bool) -> None:
        """Gather every process's rows, merge the resumed ones, de-duplicate by id (DistributedSampler
        repeats samples to even out the ranks), compute metrics once, write the files on rank 0."""
        ev = self._eval.setdefault(stage, {"bad": [], "notes": {}, "resumed": []})
        local, self._predictions[stage] = self._predictions[stage], []
        gathered = gather_objects(local)
        records, duplicates = dedupe_records(
            list(ev.get("resumed", [])) + [r for part in gathered for r in part]
        )
        metrics = metrics_from_records(records, parse=self.headline_parse)
        self.last_eval[stage] = metrics
        if log:
            for k, v in metrics.items():
                self.log(f"{stage}/{k}", v, sync_dist=False, rank_zero_only=True)
        path = ev.get("path")
        result = {
            "run": self._run_label(),
            "benchmark": ev.get("benchmark") or self.benchmark or "unknown",
            "stage": stage,
            "step": int(self.global_step) if self._trainer is not None else 0,
            "metrics": metrics,
            "skipped": count_reasons(ev.get("bad", [])),
            "notes": dict(ev.get("notes", {}), duplicates_removed=duplicates),
            "bad_records": ev.get("bad", [])[:1000],
            "predictions": str(path) if path is not None else None,
            "strict_parse": self.strict_parse,
            "headline_parse": self.headline_parse,
            "release_scorer": ev.get("release_scorer") or release_scorer(self.benchmark),
            "decoding": self.decoding_settings().as_dict(),
            "model": {
                "preset": self.backbone.preset,
                "checkpoint": self.backbone.checkpoint,
                "init_checkpoint": self.init_checkpoint,
            },
        }
        self.last_results[stage] = result
        rank0 = self._trainer is None or self.trainer.is_global_zero
        if path is not None and rank0:
            from univg.reports import write_run_results
            from univg.visualize import log_pictures

            write_jsonl(path, records)
            write_run_results(result, Path(path).parent)
            if self._pictures[stage] and self._trainer is not None:
                log_pictures(self.logger, f"{stage}/pictures", self._pictures[stage], self.global_step)
        if (
            self._trainer is not None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            self.trainer.strategy.barrier("univg-eval-written")
        if path is not None:
            shard = shard_path(path, self.global_rank if self._trainer is not None else 0)
            if shard.exists():
                shard.unlink()
        ev["finalised"] = True

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    # ---- pictures ---------------------------------------------------------------------------------
    def _draw(
        self, stage: str, batch: dict[str, Any], records: list[dict[str, Any]], limit: int | None = -1
    ) -> None:
        """Draw the first ``num_pictures`` rows of an epoch on rank 0 (all rows when ``limit`` is None)."""
        limit = self.num_pictures if limit == -1 else limit
        if (limit is not None and len(self._pictures[stage]) >= limit) or (
            self._trainer is not None and not self.trainer.is_global_zero and stage != "predict"
        ):
            return
        from univg.data.images import load_image
        from univg.visualize import safe_name, save_prediction_picture

        ev = self._eval.get(stage, {})
        if self.pictures_dir is not None:
            root = Path(self.pictures_dir)
        elif ev.get("path") is not None:
            root = Path(ev["path"]).parent / f"pictures_{stage}"
        elif ev.get("dir") is not None:
            root = Path(ev["dir"]) / f"pictures_{stage}"
        else:
            return
        samples = {s.id: s for s in batch.get("samples") or []}
        image_root = getattr(self._datamodule(), "image_root", None)
        for rec in records:
            if limit is not None and len(self._pictures[stage]) >= limit:
                break
            sample = samples.get(rec["id"])
            if sample is None:
                continue
            try:
                image = load_image(sample, sample.target_index, image_root)
            except OSError:
                continue
            path = root / f"{safe_name(rec['id'])}.png"
            self._pictures[stage].append(save_prediction_picture(path, image, rec, self.frame))
            rec["picture"] = str(path)


def format_prediction(record: dict[str, Any]) -> str:
    """What ``predict`` prints for one answer: reasoning, model-frame answer, pixel box, picture.

    >>> print(format_prediction({"id": "u0", "reasoning": "the red one", "pred": [10, 20, 30, 40],
    ...     "pred_compatible": [10, 20, 30, 40], "target_index": 1, "image_size": [640, 480],
    ...     "pred_box_px": [6, 10, 19, 19], "picture": "p.png"}))
    [univg predict] u0
      reasoning: the red one
      answer (model frame): (10, 20), (30, 40)
      box (pixels of image 1, 640 x 480): [6, 10, 19, 19]
      picture: p.png
    """
    pred = record.get("pred") or record.get("pred_compatible")
    size = record.get("image_size") or ["?", "?"]
    lines = [
        f"[univg predict] {record['id']}",
        f"  reasoning: {record.get('reasoning') or '(none)'}",
        "  answer (model frame): "
        + (
            f"({pred[0]}, {pred[1]}), ({pred[2]}, {pred[3]})"
            if pred
            else f"unparsable: {record.get('completion', '')!r}"
        ),
        f"  box (pixels of image {record.get('target_index', 0)}, {size[0]} x {size[1]}): {record.get('pred_box_px')}",
    ]
    if record.get("picture"):
        lines.append(f"  picture: {record['picture']}")
    return "\n".join(lines)
