"""Evaluation plumbing shared by :class:`~univg.modules.base.GroundingModule` and the reports.

- screening: samples that cannot be evaluated (missing image, broken box, record the reader
  skipped) are taken out *and counted by reason*, so a table's footer can say what was left out;
- prediction files: JSONL rows, appended per batch to a per-rank shard so an interrupted run can
  resume, merged into one file at the end of the epoch;
- gathering across processes (``all_gather_object``) and naming the benchmark of a data module;
- where to resume from (an unfinished run of the same name in an earlier ``version_N`` folder),
  whether the output folder is writable.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from univg.data.images import resolve_image_path
from univg.data.schema import GroundingSample, SampleError, validate_sample
from univg.metrics import dedupe_records

#: Reasons a record is not evaluated (keys of ``results["skipped"]``).
MISSING_IMAGE = "missing image"
UNDECODABLE_IMAGE = "undecodable image"
BROKEN_BOX = "broken box"
BAD_RECORD = "unreadable record"

_BOX_FIELDS = ("box", "answer", "bbox", "boxes", "bbox_list", "solution", "normalized_solution")
_FIELD_RE = re.compile(r"field '([^']+)'")
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


# ----------------------------------------------------------------------------- screening
def classify_reason(reason: str) -> str:
    """Map a reader's or validator's message to one of the footer's reasons.

    >>> classify_reason("degenerate box [1, 2, 1, 5] in field 'answer'")
    'broken box'
    >>> classify_reason("x.json:record 3 (id a): field 'images[1]': expected a non-empty path")
    'missing image'
    >>> classify_reason("x.json:record 3: field 'question': expected a non-empty string")
    'unreadable record'
    """
    if "degenerate box" in reason:
        return BROKEN_BOX
    m = _FIELD_RE.search(reason)
    field = m.group(1) if m else ""
    base = field.split("[")[0].split(".")[0]
    if base in _BOX_FIELDS or "box" in base:
        return BROKEN_BOX
    if "image" in base or "frame" in base or "not found" in reason:
        return MISSING_IMAGE
    return BAD_RECORD


def screen_samples(
    samples: Sequence[GroundingSample], image_root: str | os.PathLike | None = None
) -> tuple[list[GroundingSample], list[dict[str, Any]]]:
    """(evaluable samples, bad records). A bad record is ``{id, task, reason, detail}``.

    Checks the schema (:func:`~univg.data.schema.validate_sample`: a broken or unflagged degenerate
    box, a bad target index) and that every image path exists (in-memory images always do).
    Decoding is checked separately (:func:`screen_decodable`), after finished samples of a resumed
    run are taken out, so that only images still to be evaluated are read.
    """
    kept, bad = [], []
    for s in samples:
        try:
            validate_sample(s)
        except SampleError as err:
            bad.append({"id": s.id, "task": s.task, "reason": classify_reason(str(err)), "detail": str(err)})
            continue
        missing = [
            (i, resolve_image_path(ref, image_root))
            for i, ref in enumerate(s.images)
            if isinstance(ref, str) and not os.path.isfile(resolve_image_path(ref, image_root))
        ]
        if missing:
            i, path = missing[0]
            detail = f"{s.where()}: images[{i}] not found: {path}" + (
                f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            )
            bad.append({"id": s.id, "task": s.task, "reason": MISSING_IMAGE, "detail": detail})
            continue
        kept.append(s)
    return kept, bad


@functools.lru_cache(maxsize=65536)
def _decode_error(path: str) -> str | None:
    """Why ``path`` cannot be decoded, or ``None``. JPEGs decode at reduced scale (``draft``): every
    byte is still read, so truncated or corrupt files fail here as they would in the collator."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def screen_decodable(
    samples: Sequence[GroundingSample], image_root: str | os.PathLike | None = None
) -> tuple[list[GroundingSample], list[dict[str, Any]]]:
    """(samples whose images all decode, bad records with reason ``undecodable image``).

    One unreadable file would otherwise stop the whole evaluation in the data loader, at the same
    place on every rerun; like a missing image it is taken out and counted in the footer.
    """
    paths = {resolve_image_path(r, image_root) for s in samples for r in s.images if isinstance(r, str)}
    # every image is read once; decoders release the GIL, so threads share the cost over the cores
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        errors = dict(zip(paths, pool.map(_decode_error, paths)))
    kept, bad = [], []
    for s in samples:
        for i, ref in enumerate(s.images):
            if not isinstance(ref, str):
                continue
            path = resolve_image_path(ref, image_root)
            why = errors[path]
            if why is not None:
                detail = f"{s.where()}: images[{i}] cannot be decoded: {path}: {why}"
                bad.append({"id": s.id, "task": s.task, "reason": UNDECODABLE_IMAGE, "detail": detail})
                break
        else:
            kept.append(s)
    return kept, bad


def reader_skips(samples: Any) -> list[dict[str, Any]]:
    """Records the reader skipped (``skip_invalid=True``), from the list's ``ReadReport``, as bad records."""
    report = getattr(samples, "report", None)
    if report is None:
        return []
    return [
        {
            "id": rid,
            "task": "",
            "reason": classify_reason(why),
            "detail": f"{report.path}:record {idx}: {why}",
        }
        for idx, rid, why in report.skipped
    ]


def count_reasons(bad: Iterable[dict[str, Any]]) -> dict[str, int]:
    """``{reason: count}`` in a stable (sorted) order.

    >>> count_reasons([{"reason": "missing image"}, {"reason": "broken box"}, {"reason": "missing image"}])
    {'broken box': 1, 'missing image': 2}
    """
    return dict(sorted(Counter(b["reason"] for b in bad).items()))


def sample_notes(samples: Iterable[GroundingSample]) -> dict[str, int]:
    """Counts of kept-but-flagged ground truths: degenerate (cannot be hit at IoU 0.5) and clamped."""
    notes = Counter()
    for s in samples:
        if s.meta.get("degenerate"):
            notes["degenerate_gt_kept"] += 1
        if s.meta.get("clamped"):
            notes["clamped_gt"] += 1
    return dict(notes)


# ----------------------------------------------------------------------------- prediction files
def extract_reasoning(text: str) -> str | None:
    """The text of the last ``<think>`` block, stripped; ``None`` when there is none.

    >>> extract_reasoning("<think> red is left </think><answer>(1, 2), (3, 4)</answer>")
    'red is left'
    >>> extract_reasoning("(1, 2), (3, 4)") is None
    True
    """
    blocks = _THINK_RE.findall(text)
    return blocks[-1].strip() if blocks else None


def run_key(**parts: Any) -> str:
    """A short stable hash of what produced a prediction (model, checkpoint, budget, benchmark).

    A resumed evaluation only reuses records with the same key, so predictions of another model
    left in the same directory are never mixed in.

    >>> run_key(a=1, b="x") == run_key(b="x", a=1)
    True
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append records (one JSON object a line) and flush, so an interruption loses at most a line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write records atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def read_jsonl(paths: Iterable[str | os.PathLike]) -> tuple[list[dict[str, Any]], int]:
    """(records, unreadable lines) of JSONL files; a line cut by an interruption is counted, not fatal."""
    out, bad = [], 0
    for p in paths:
        with open(p) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    out.append(rec)
                else:
                    bad += 1
    return out, bad


def shard_path(final: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank`` appends its records while an epoch runs: ``<stem>.rank<r>.part.jsonl``."""
    final = Path(final)
    return final.with_name(f"{final.stem}.rank{rank}.part.jsonl")


def resume_files(
    final: str | os.PathLike | None, extra: str | os.PathLike | None, stage: str, auto: bool = False
) -> list[str]:
    """Prediction files to resume from: ``final`` and its shards, plus ``extra`` (a file, or a
    directory whose ``predictions_<stage>*.jsonl`` files are taken); with ``auto`` and no
    ``extra``, the last unfinished run of the same name (:func:`unfinished_run`)."""
    if auto and extra is None and final is not None:
        extra = unfinished_run(final, stage)
    files: list[str] = []
    if final is not None:
        final = Path(final)
        files += [str(final)] if final.is_file() else []
        files += sorted(glob.glob(str(final.with_name(f"{final.stem}.rank*.part.jsonl"))))
    if extra is not None:
        extra = Path(extra)
        if extra.is_dir():
            files += sorted(glob.glob(str(extra / f"predictions_{stage}*.jsonl")))
        elif extra.is_file():
            files.append(str(extra))
        else:
            raise FileNotFoundError(
                f"resume_predictions {extra} does not exist (expected a predictions JSONL file or a run directory)"
            )
    return list(dict.fromkeys(files))


def decode_prompts(tokenizer: Any, batch: dict[str, Any]) -> list[str]:
    """Each row's prompt decoded as the release's zero-shot scripts decoded theirs: special tokens
    (image pads, chat markers) skipped, no clean-up of spaces, padding left out."""
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for row, m in zip(batch["input_ids"], batch["attention_mask"])
    ]


def load_resumed(
    files: Sequence[str], key: str, samples: Sequence[GroundingSample]
) -> tuple[list[dict[str, Any]], dict[str, int], list[str]]:
    """(rows to keep, notes, lines to print) of an evaluation resuming from ``files``.

    Only rows of this run key (same model, checkpoint, decoding, budget and benchmark) and of a
    sample still in the split are kept, each id once; the others are counted, not mixed in.
    """
    if not files:
        return [], {}, []
    records, unreadable = read_jsonl(files)
    ids = {s.id for s in samples}
    mine, _ = dedupe_records([r for r in records if r.get("run_key") == key and r["id"] in ids])
    notes: dict[str, int] = {"resumed": len(mine)}
    lines = []
    other = sum(r.get("run_key") != key for r in records)
    if other:
        notes["resume_ignored_other_model"] = other
        lines.append(
            f"univg: ignored {other} earlier predictions of another model/benchmark in {list(files)}"
        )
    if unreadable:
        notes["unreadable_prediction_lines"] = unreadable
    if mine:
        where = ", ".join(sorted({str(Path(f).parent) for f in files}))
        lines.append(
            f"univg: resuming: {len(mine)} samples already evaluated in {where} are not generated again "
            "(--model.init_args.fresh true starts over)"
        )
    return mine, notes, lines


_VERSION_RE = re.compile(r"version_(\d+)")


def unfinished_run(final: str | os.PathLike, stage: str) -> Path | None:
    """The folder of an interrupted evaluation of the same run to resume from, or ``None``.

    ``final`` is this run's ``.../<name>/version_N/predictions_<stage>.jsonl``. Loggers number
    each rerun of a command afresh, so the earlier attempt sits in a sibling ``version_M`` folder.
    The latest earlier folder with predictions of this stage is taken if it is unfinished (its
    per-rank shards are still there); if the latest one finished, nothing is resumed (a rerun of
    a finished evaluation starts over). Which of its rows belong to this model is decided later by
    the run key.
    """
    run_dir = Path(final).parent
    m = _VERSION_RE.fullmatch(run_dir.name)
    if m is None or not run_dir.parent.is_dir():
        return None
    earlier = []
    for d in run_dir.parent.iterdir():
        mm = _VERSION_RE.fullmatch(d.name)
        if mm is not None and d.is_dir() and d != run_dir:
            earlier.append((int(mm.group(1)), d))
    for _, d in sorted(earlier, reverse=True):
        if glob.glob(str(d / f"predictions_{stage}.rank*.part.jsonl")):
            return d
        if (d / f"predictions_{stage}.jsonl").is_file():
            return None
    return None


def check_writable(folder: str | os.PathLike, what: str = "predictions_dir") -> None:
    """Create ``folder`` if needed and write a probe file into it; ``PermissionError`` naming the
    folder otherwise (checked before any model is built, so a bad path costs nothing)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".univg-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"{what} {folder} is not a writable folder ({err.strerror or err}); choose another with "
            f"--model.init_args.{what}"
        ) from None


def model_frame_gt(box: Any, frame: Any, size: tuple[int, int] | None) -> list[float]:
    """The ground truth in the model's frame, *not* rounded to integers (scored in floats, as the
    release does; the training target's ``int()`` would move it by up to one unit).

    >>> from univg.boxes import Box, Qwen2VLFrame, PixelFrame
    >>> model_frame_gt(Box(0.1234, 0.5, 0.75, 0.9999), Qwen2VLFrame(), None)
    [123.4, 500.0, 750.0, 999.9]
    >>> model_frame_gt(Box(0.25, 0.5, 1.0, 1.0), PixelFrame(), (448, 224))
    [112.0, 112.0, 448.0, 224.0]
    """
    scale = getattr(frame, "scale", None)
    if scale is not None:
        sx = sy = float(scale)
    elif size is not None:
        sx, sy = float(size[0]), float(size[1])
    else:
        raise ValueError(f"the {getattr(frame, 'name', frame)} frame needs the resized target image size")
    x1, y1, x2, y2 = box.as_tuple()
    # 6 decimals: a box read from 0-1000 integers comes back as those integers, not 122.99999999
    return [round(x1 * sx, 6), round(y1 * sy, 6), round(x2 * sx, 6), round(y2 * sy, 6)]


# ----------------------------------------------------------------------------- processes
def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- benchmark names
_REFCOCO_RE = re.compile(r"(refcoco(?:\+|p|plus|g)?)[_\-/]?(val|testa|testb|test)", re.IGNORECASE)


def infer_benchmark(datamodule: Any, stage: str) -> str:
    """The benchmark key of a data module (``reports.BENCHMARKS``), from its class and file name.

    >>> class RefCOCODataModule:
    ...     files = {"test": "data/rec/refcocop_testA.json"}
    >>> infer_benchmark(RefCOCODataModule(), "test")
    'refcoco+/testA'
    """
    if datamodule is None:
        return "unknown"
    cls = type(datamodule).__name__
    files = getattr(datamodule, "files", {}) or {}
    name = os.path.basename(str(files.get("val" if stage == "val" else "test") or "")).lower()
    if cls == "MIGBenchDataModule":
        return "mig_bench_revised" if "revised" in name else "mig_bench"
    if cls == "RefCOCODataModule":
        m = _REFCOCO_RE.search(name)
        if m:
            ds = m.group(1).lower().replace("plus", "+").replace("refcocop", "refcoco+")
            split = {"testa": "testA", "testb": "testB"}.get(m.group(2).lower(), m.group(2).lower())
            return f"{ds}/{split}"
        return "refcoco"
    if cls == "LISADataModule":
        for split in ("val", "test"):
            if split in name:
                return f"lisa/{split}"
        return "lisa"
    if cls == "LLMSegDataModule":
        return "llmseg"
    if cls == "VOSDataModule":
        if "revos" in name:
            return "revos"
        return "reasonvos" if "reason" in name else "vos"
    if cls == "SyntheticDataModule":
        return "synthetic"
    return cls.removesuffix("DataModule").lower() or "unknown"
