"""Prediction files and resuming: JSONL rows appended per batch to a per-rank shard (so an
interrupted run can resume), merged into one file at the end of the epoch; which earlier files to
resume from (an unfinished run of the same name in an earlier ``version_N`` folder) and which of
their rows belong to this run (the run key); whether an output folder is writable."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from univg.core.sample_types import GroundingSample
from univg.evaluation.metrics import dedupe_records
from univg.evaluation.records import record_fingerprint


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


def load_resumed(
    files: Sequence[str],
    key: str,
    samples: Sequence[GroundingSample],
    split_ids: Iterable[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int], list[str]]:
    """(rows to keep, notes, lines to print) of an evaluation resuming from ``files``.

    Only rows of this run key (same model, checkpoint, decoding, budget and benchmark) are
    considered. Of those, a row is kept (each id once) when its sample is among ``samples`` and its
    ``record_fp`` is the sample's :func:`~univg.evaluation.records.record_fingerprint` (same question,
    images, target image and box); a row of a record that changed since is left out and its sample
    generated again (note ``resume_recomputed``); a row whose id is not in the split (``split_ids``,
    default the ids of ``samples``) any more is left out of the metrics (note ``resume_dropped_gone``).
    Rows of samples screened out since are left to the screening's counts.
    """
    if not files:
        return [], {}, []
    records, unreadable = read_jsonl(files)
    by_id = {s.id: s for s in samples}
    in_split = set(by_id) if split_ids is None else set(split_ids) | set(by_id)
    fingerprints: dict[str, str] = {}

    def current(rid: str) -> str:
        if rid not in fingerprints:
            fingerprints[rid] = record_fingerprint(by_id[rid])
        return fingerprints[rid]

    ours = [r for r in records if r.get("run_key") == key]
    mine, _ = dedupe_records([r for r in ours if r["id"] in by_id and r.get("record_fp") == current(r["id"])])
    kept = {r["id"] for r in mine}
    changed = list(dict.fromkeys(r["id"] for r in ours if r["id"] in by_id and r["id"] not in kept))
    gone = list(dict.fromkeys(r["id"] for r in ours if r["id"] not in in_split))
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
    if changed:
        notes["resume_recomputed"] = len(changed)
    if gone:
        notes["resume_dropped_gone"] = len(gone)
    if mine:
        where = ", ".join(sorted({str(Path(f).parent) for f in files}))
        lines.append(
            f"univg: resuming: {len(mine)} samples already evaluated in {where} are not generated again "
            "(--model.init_args.fresh true starts over)"
        )
    if changed or gone:
        parts = []
        if changed:
            parts.append(
                f"{len(changed)} earlier predictions are recomputed: their record (question, images, target "
                f"image or box) is not the one they were made for (ids {_first(changed)})"
            )
        if gone:
            parts.append(
                f"{len(gone)} earlier predictions are left out: their records are no longer in the split "
                f"(ids {_first(gone)})"
            )
        lines.append("univg: resume: " + "; ".join(parts))
    return mine, notes, lines


def _first(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f", ... {len(ids) - n} more" if len(ids) > n else "")


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
