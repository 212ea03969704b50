"""Screening an evaluation split: samples that cannot be evaluated (missing image, undecodable
image, broken box, a record the reader skipped) are taken out *and counted by reason*, so a table's
footer can say what was left out."""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from univg.core.sample_types import GroundingSample, SampleError
from univg.data.images import resolve_image_path
from univg.data.schema import validate_sample

#: Reasons a record is not evaluated (keys of ``results["skipped"]``).
MISSING_IMAGE = "missing image"
UNDECODABLE_IMAGE = "undecodable image"
BROKEN_BOX = "broken box"
BAD_RECORD = "unreadable record"

_BOX_FIELDS = ("box", "answer", "bbox", "boxes", "bbox_list", "solution", "normalized_solution")
_FIELD_RE = re.compile(r"field '([^']+)'")


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
