"""The evaluation writer: what a validate/test/predict run writes, and which samples it evaluates.

A :class:`~univg.modules.base.GroundingModule` owns one (``module.evaluation``) and calls it from
its hooks; the module generates and scores, the writer keeps the books. Per validate/test run it
writes into the predictions directory (default the logger's):

- ``predictions_<stage>.jsonl``: one row per sample, gathered over processes, each id once; while
  an epoch runs each process appends its rows to a shard (``predictions_<stage>.rank<r>.part.jsonl``)
  so that an interrupted run resumes where it stopped; while fitting, ``predictions_val_step<N>.jsonl``;
- ``results_<stage>.json/.md/.csv``: metrics, the paper's table layout, skipped-record counts;
- ``pictures_<stage>/*.png``: the first ``num_pictures`` predictions drawn (also logged).

**One run per folder.** A validate/test run locks its predictions folder (``predictions.lock``,
:mod:`~univg.evaluation.lock`) at set-up and releases it at tear-down; a second run into the same
folder refuses with one line naming the holder.

**Which samples run.** At set-up the writer screens the evaluation split (bad records out and
counted) and, for validate/test, takes out the samples a resumed run already finished (rows whose
record changed since, by their ``record_fp``, are generated again and counted). It never
changes the data module: the data module asks for the result when it builds an evaluation loader
(:meth:`GroundingModule.evaluation_view`, used by
:meth:`univg.data.datamodules.GroundingDataModule.evaluation_samples`), and gets its split back
unchanged for anything the writer did not screen.

The writer reads the module's evaluation settings when it needs them (``predictions_dir``,
``pictures_dir``, ``num_pictures``, ``resume_predictions``, ``fresh``, ``benchmark``, ``run_name``,
``headline_parse``, ``strict_parse``, the backbone and decoding), so they stay the module's
documented arguments and can be changed between runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from univg.distributed.collectives import gather_objects
from univg.evaluation.files import (
    append_jsonl,
    check_writable,
    load_resumed,
    resume_files,
    run_key,
    shard_path,
    write_jsonl,
)
from univg.evaluation.lock import PredictionsLock
from univg.evaluation.metrics import dedupe_records, metrics_from_records
from univg.evaluation.records import record_fingerprint
from univg.evaluation.release_parse import release_scorer
from univg.evaluation.screening import (
    count_reasons,
    reader_skips,
    sample_notes,
    screen_decodable,
    screen_samples,
)

STAGES = ("val", "test", "predict")


@dataclass
class EvalRun:
    """The books of one stage's evaluation (``val``, ``test`` or ``predict``)."""

    benchmark: str | None = None
    release_scorer: str | None = None
    run_key: str | None = None
    path: Path | None = None  # the predictions file (None: nothing is written, e.g. a sanity check)
    path_set: bool = False  # set-up decided ``path`` (a validate/test run keeps it for its epoch)
    dir: Path | None = None  # predict: where pictures go
    bad: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    done_ids: set[str] = field(default_factory=set)
    nothing_to_run: bool = False
    finalised: bool = False


def _trainer(module: Any) -> Any:
    return module._trainer


def _fitting(module: Any) -> bool:
    return _trainer(module) is not None and module.trainer.state.fn == "fit"


def _sanity(module: Any) -> bool:
    return _trainer(module) is not None and module.trainer.sanity_checking


class EvaluationWriter:
    """Screening, resume, per-rank shards, gathering, results files and pictures of one module.

    ``records[stage]``: this process's rows of the running epoch; ``results[stage]``: the last
    finished evaluation (what ``results_<stage>.json`` holds, also when nothing was written).
    """

    def __init__(self) -> None:
        self.runs: dict[str, EvalRun] = {}
        self.records: dict[str, list[dict[str, Any]]] = {s: [] for s in STAGES}
        self.pictures: dict[str, list[Any]] = {s: [] for s in STAGES}
        self.results: dict[str, dict[str, Any]] = {}
        self._views: dict[str, tuple[Any, list[Any]]] = {}  # split -> (the split's list, samples to run)
        self._locks: list[PredictionsLock] = []  # predictions folders this writer holds (rank 0)

    # ---- what the module's prediction rows need ---------------------------------------------------
    def run_key(self, stage: str) -> str | None:
        run = self.runs.get(stage)
        return run.run_key if run is not None else None

    def release_scorer(self, stage: str) -> str | None:
        run = self.runs.get(stage)
        return run.release_scorer if run is not None else None

    def done_ids(self, stage: str) -> set[str]:
        """Ids a resumed run already finished (their rows are taken from the earlier files)."""
        run = self.runs.get(stage)
        return run.done_ids if run is not None else set()

    def view(self, split: str, samples: Any) -> Any:
        """The samples of ``samples`` (the data module's ``split``) that this run evaluates:
        screened and not yet finished, when set-up screened this very list; else ``samples``."""
        source, kept = self._views.get(split, (None, None))
        return kept if source is samples else samples

    # ---- where things go --------------------------------------------------------------------------
    def output_dir(self, module: Any) -> Path | None:
        """The predictions directory (a collective call under DDP: ``trainer.log_dir`` broadcasts)."""
        root = module.predictions_dir
        if root is None and _trainer(module) is not None and module.trainer.log_dir is not None:
            root = module.trainer.log_dir
        return Path(root) if root is not None else None

    def prediction_path(self, module: Any, stage: str) -> Path | None:
        """``predictions_<stage>.jsonl`` (validate/test), ``predictions_val_step<N>.jsonl`` while fitting."""
        root = self.output_dir(module)
        if root is None:
            return None
        name = (
            f"predictions_{stage}_step{module.global_step}.jsonl"
            if _fitting(module)
            else f"predictions_{stage}.jsonl"
        )
        return root / name

    def run_label(self, module: Any) -> str:
        if module.run_name:
            return module.run_name
        logger = module.logger if _trainer(module) is not None else None
        if logger is not None and getattr(logger, "name", None):
            return str(logger.name)
        path = next((r.path for k in ("test", "val") if (r := self.runs.get(k)) and r.path), None)
        return Path(path).parent.name if path else "run"

    # ---- set-up: screening, resume ----------------------------------------------------------------
    def setup(self, module: Any) -> None:
        """Lock the predictions folder (validate/test), screen the evaluation split (bad records out
        and counted) and, for validate/test, resume. A failure releases the lock."""
        self._views = {}
        if _trainer(module) is None:
            return
        try:
            self._setup(module)
        except BaseException:
            self.release_locks()
            raise

    def lock(self, module: Any, folder: Path) -> None:
        """Take ``folder``'s lock on rank 0 (one run at a time writes there); every rank raises
        :class:`~univg.evaluation.lock.PredictionsLockedError` when another run holds it."""
        refusal = None
        if module.trainer.is_global_zero:
            lock = PredictionsLock(folder)
            try:
                said = lock.acquire()
            except PermissionError as err:
                refusal = err
            else:
                self._locks.append(lock)
                if said:
                    module.print(said)
        refusals = [r for r in gather_objects(refusal) if r is not None]
        if refusals:
            raise refusals[0]

    def release_locks(self) -> None:
        """Release the predictions folders this writer locked."""
        while self._locks:
            self._locks.pop().release()

    def _setup(self, module: Any) -> None:
        trainer = module.trainer
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        split, key = {"fit": ("val", "val"), "validate": ("val", "val"), "test": ("test", "test")}.get(
            fn, ("test", "predict")
        )
        dm = getattr(trainer, "datamodule", None)
        run = EvalRun(
            benchmark=module.benchmark or (dm.benchmark(key) if hasattr(dm, "benchmark") else "unknown")
        )
        run.release_scorer = release_scorer(run.benchmark)
        decoding = module.decoding_settings()  # a bad decoding setting fails here, before the model is built
        backbone = module.backbone
        run.run_key = run_key(
            preset=backbone.preset,
            checkpoint=backbone.checkpoint,
            overrides=backbone.overrides,
            lora=str(backbone.lora),
            init_checkpoint=module.init_checkpoint,
            ckpt_path=str(trainer.ckpt_path) if trainer.ckpt_path else None,
            max_new_tokens=module.max_new_tokens,
            benchmark=run.benchmark,
            decoding=decoding.as_dict(),
        )
        self.runs[key] = run
        # output folders are checked now: an unwritable one fails before a model is built
        for what in ("predictions_dir", "pictures_dir"):
            if getattr(module, what) is not None:
                check_writable(getattr(module, what), what)
        if key == "predict":
            run.dir = self.output_dir(module)
            return
        run.path = self.prediction_path(module, key) if fn != "fit" else None
        run.path_set = True
        if run.path is not None:
            check_writable(Path(run.path).parent)
            self.lock(module, Path(run.path).parent)
        samples = getattr(dm, "samples", {}).get(split) if dm is not None else None
        if samples is None:
            return
        image_root = getattr(dm, "image_root", None)
        kept, bad = screen_samples(samples, image_root)
        run.bad = reader_skips(samples) + bad
        run.notes = sample_notes(kept)
        if fn != "fit":
            if module.fresh:  # start over: this run's stale shard goes, nothing is read
                shard_path(run.path, module.global_rank).unlink(missing_ok=True)
            files = [] if module.fresh else resume_files(run.path, module.resume_predictions, key, auto=True)
            resumed, notes, lines = load_resumed(files, run.run_key, kept, [s.id for s in samples])
            run.resumed, run.done_ids = resumed, {r["id"] for r in resumed}
            run.notes.update(notes)
            for line in lines:
                module.print(line)
            kept = [s for s in kept if s.id not in run.done_ids]
        kept, undecodable = screen_decodable(kept, image_root)
        run.bad += undecodable
        if len(kept) != len(samples):
            self._views[split] = (samples, kept)
        # nothing left (all resumed, or all bad records): Lightning skips the loop; teardown writes results
        run.nothing_to_run = fn != "fit" and not kept

    def teardown(self, module: Any) -> None:
        """Write the results of a run that had nothing left to generate; forget the screened views;
        release the predictions folder."""
        try:
            for key, run in list(self.runs.items()):
                if key != "predict" and run.nothing_to_run and not run.finalised:
                    self.finalise(module, key)
        finally:
            self._views = {}
            self.release_locks()

    # ---- epochs -----------------------------------------------------------------------------------
    def begin(self, module: Any, stage: str) -> None:
        """A validation/test epoch starts: a fresh buffer (and, while fitting, a new file per step)."""
        run = self.runs.setdefault(stage, EvalRun())
        run.finalised = False
        if _fitting(module) or not run.path_set:  # while fitting: a new file per validation step
            run.path = None if _sanity(module) else self.prediction_path(module, stage)
            run.path_set = True
        self.records[stage] = []
        self.pictures[stage] = []

    def begin_predict(self, module: Any) -> None:
        self.runs.setdefault("predict", EvalRun()).dir = self.output_dir(module)
        self.pictures["predict"] = []

    def add(self, module: Any, stage: str, batch: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """Keep a batch's rows (each stamped with its record's fingerprint, ``record_fp``), append
        them to this process's shard and draw the first few."""
        samples = {s.id: s for s in batch.get("samples") or []}
        for rec in records:
            if rec["id"] in samples:
                rec["record_fp"] = record_fingerprint(samples[rec["id"]])
        self.records[stage].extend(records)
        if _sanity(module):
            return
        run = self.runs.get(stage)
        if run is not None and run.path is not None:
            append_jsonl(shard_path(run.path, module.global_rank), records)
        self.draw(module, stage, batch, records)

    def end(self, module: Any, stage: str) -> dict[str, float] | None:
        """A validation/test epoch ends: the metrics of the finalised run (``None`` in a sanity check)."""
        if _sanity(module):
            self.records[stage] = []
            return None
        return self.finalise(module, stage)["metrics"]

    def finalise(self, module: Any, stage: str) -> dict[str, Any]:
        """Gather every process's rows, merge the resumed ones, de-duplicate by id (DistributedSampler
        repeats samples to even out the ranks), compute metrics once, write the files on rank 0."""
        run = self.runs.setdefault(stage, EvalRun())
        local, self.records[stage] = self.records[stage], []
        gathered = gather_objects(local)
        records, duplicates = dedupe_records(list(run.resumed) + [r for part in gathered for r in part])
        metrics = metrics_from_records(records, parse=module.headline_parse)
        attached = _trainer(module) is not None
        result = {
            "run": self.run_label(module),
            "benchmark": run.benchmark or module.benchmark or "unknown",
            "stage": stage,
            "step": int(module.global_step) if attached else 0,
            "metrics": metrics,
            "skipped": count_reasons(run.bad),
            "notes": dict(run.notes, duplicates_removed=duplicates),
            "bad_records": run.bad[:1000],
            "predictions": str(run.path) if run.path is not None else None,
            "strict_parse": module.strict_parse,
            "headline_parse": module.headline_parse,
            "release_scorer": run.release_scorer or release_scorer(module.benchmark),
            "decoding": module.decoding_settings().as_dict(),
            "model": {
                "preset": module.backbone.preset,
                "checkpoint": module.backbone.checkpoint,
                "init_checkpoint": module.init_checkpoint,
            },
        }
        self.results[stage] = result
        if run.path is not None and (not attached or module.trainer.is_global_zero):
            from univg.evaluation.tables import write_run_results
            from univg.evaluation.visualize import log_pictures

            write_jsonl(run.path, records)
            write_run_results(result, Path(run.path).parent)
            if self.pictures[stage] and attached:
                log_pictures(module.logger, f"{stage}/pictures", self.pictures[stage], module.global_step)
        if attached and torch.distributed.is_available() and torch.distributed.is_initialized():
            module.trainer.strategy.barrier("univg-eval-written")
        if run.path is not None:
            shard = shard_path(run.path, module.global_rank if attached else 0)
            if shard.exists():
                shard.unlink()
        run.finalised = True
        return result

    # ---- pictures ---------------------------------------------------------------------------------
    def draw(
        self,
        module: Any,
        stage: str,
        batch: dict[str, Any],
        records: list[dict[str, Any]],
        limit: int | None = -1,
    ) -> None:
        """Draw the first ``num_pictures`` rows of an epoch on rank 0 (all rows when ``limit`` is None);
        each drawn row gets its picture's path (``record["picture"]``)."""
        limit = module.num_pictures if limit == -1 else limit
        pictures = self.pictures[stage]
        if (limit is not None and len(pictures) >= limit) or (
            _trainer(module) is not None and not module.trainer.is_global_zero and stage != "predict"
        ):
            return
        from univg.data.images import load_image
        from univg.evaluation.visualize import safe_name, save_prediction_picture

        run = self.runs.get(stage, EvalRun())
        if module.pictures_dir is not None:
            root = Path(module.pictures_dir)
        elif run.path is not None:
            root = Path(run.path).parent / f"pictures_{stage}"
        elif run.dir is not None:
            root = Path(run.dir) / f"pictures_{stage}"
        else:
            return
        samples = {s.id: s for s in batch.get("samples") or []}
        dm = getattr(module.trainer, "datamodule", None) if _trainer(module) is not None else None
        image_root = getattr(dm, "image_root", None)
        for rec in records:
            if limit is not None and len(pictures) >= limit:
                break
            sample = samples.get(rec["id"])
            if sample is None:
                continue
            try:
                image = load_image(sample, sample.target_index, image_root)
            except OSError:
                continue
            path = root / f"{safe_name(rec['id'])}.png"
            pictures.append(save_prediction_picture(path, image, rec, module.frame))
            rec["picture"] = str(path)
