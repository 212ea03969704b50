"""Shared machinery of the dataset readers: loading records, naming errors, box policy, target rules.

Every reader is ``parse(record) -> list[GroundingSample]`` run by :func:`run_reader`, which owns
the policy: a malformed record raises :class:`SampleError` (file, record index, field, what was
expected) unless ``skip_invalid=True``, in which case it is skipped and listed in the
:class:`ReadReport`. Nothing is dropped silently.

Box policy (all readers):
- a coordinate outside [0, 1] by at most :data:`CLAMP_TOLERANCE` is clamped, counted and flagged
  (``meta["clamped"]``, original in ``meta["raw_box"]``); further out is an error (a wrong frame,
  e.g. pixels read as normalised);
- a degenerate box (x2 <= x1 or y2 <= y1) follows ``degenerate`` (:data:`DegeneratePolicy`):
  ``"keep"`` (the readers' default, for evaluation files: kept unchanged, flagged
  ``meta["degenerate"]`` and listed; the evaluation decides how to score it), ``"swap"`` (inverted
  corners are swapped into a valid box, flagged ``meta["swapped"]``, original in
  ``meta["raw_box"]``, listed; a box still empty after the swap, x1 == x2 or y1 == y2, is skipped
  and listed), ``"skip"`` (skipped and listed) or ``"error"``. Training data modules choose
  ``swap``/``skip``/``error`` explicitly (``degenerate_boxes``), never ``keep``.

Question wording (:mod:`~univg.data.readers.questions`), source detection in mixed files
(:mod:`~univg.data.readers.sources`) and writing files back (:mod:`~univg.data.readers.writing`)
live in modules beside this one.

Errors name the file's own field: a reader says which file field each schema field came from
(``run_reader(fields=...)`` or :meth:`Record.map_field`), so a RefCOCO record whose ``problem`` is
empty says ``field 'problem'``, not the schema's ``question``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from univg.core.boxes import Box, get_frame, parse_box_tokens
from univg.core.sample_types import GroundingSample, SampleError
from univg.data.images import ImageNotFoundError, image_size, resolve_image_path
from univg.data.schema import ReadReport, SampleList, validate_sample

logger = logging.getLogger("univg.data")

#: How far outside [0, 1] a normalised coordinate may be and still be clamped (MIG-Bench has 1.048).
CLAMP_TOLERANCE = 0.1
#: What a reader does with a box whose corners are inverted or equal (see the module docstring).
DegeneratePolicy = Literal["keep", "swap", "skip", "error"]
DEGENERATE_POLICIES: tuple[str, ...] = get_args(DegeneratePolicy)
_MISSING = object()


class SkipRecord(Exception):
    """Raised by a parser to skip a record by policy (not an error); the reason is reported."""


def load_records(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON list file or a JSONL file (one JSON object per line).

    A JSONL line that does not parse becomes a :class:`SampleError` *record* (so that
    ``skip_invalid`` can skip it); a JSON file that does not parse, or is not a list, raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records: list[Any] = []
        for line_no, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                records.append(
                    SampleError(f"{path}:record {len(records)} (line {line_no + 1}): not JSON: {err}")
                )
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SampleError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from err
    if not isinstance(data, list):
        raise SampleError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


class Record:
    """One raw record and where it came from; field access raises errors that name all three."""

    def __init__(
        self,
        path: str,
        index: int,
        raw: Any,
        report: ReadReport,
        degenerate: str,
        fields: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.path = path
        self.index = index
        self.raw = raw
        self.report = report
        self.degenerate = degenerate
        # schema field -> the file field it was read from (for error messages; see map_field)
        self.fields: dict[str, str] = {k: self.name_of(*v) for k, v in (fields or {}).items()}
        rid = raw.get("id") if isinstance(raw, dict) else None
        self.id = str(rid) if rid not in (None, "") else f"{Path(path).stem}-{index}"

    @property
    def where(self) -> str:
        return f"{self.path}:record {self.index} (id {self.id})"

    def error(self, field: str, expected: str, got: Any = _MISSING) -> SampleError:
        got_text = "" if got is _MISSING else f", got {_short(got)}"
        return SampleError(f"{self.where}: field '{field}': expected {expected}{got_text}")

    def get(self, *names: str, expected: str, types: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The first present field among ``names`` (aliases), type-checked; error names them all."""
        if not isinstance(self.raw, dict):
            raise SampleError(f"{self.where}: expected a JSON object, got {type(self.raw).__name__}")
        for name in names:
            if name in self.raw and self.raw[name] is not None:
                value = self.raw[name]
                if isinstance(value, bool) and bool not in _as_tuple(types):
                    raise self.error(name, expected, value)
                if not isinstance(value, types):
                    raise self.error(name, expected, value)
                return value
        if default is not _MISSING:
            return default
        raise self.error("|".join(names), expected + " (field missing)")

    def name_of(self, *names: str) -> str:
        """Which alias of a field this record uses (for error messages)."""
        return next((n for n in names if isinstance(self.raw, dict) and n in self.raw), names[0])

    def map_field(self, schema_field: str, *names: str) -> None:
        """Say that ``schema_field`` of the sample comes from the file field ``names`` (aliases, the
        first present one is named): a schema check on it then names the file's field."""
        self.fields[schema_field] = self.name_of(*names)

    def file_error(self, err: SampleError) -> SampleError:
        """``err`` (a schema check on a sample of this record) with the file's field name."""
        name = getattr(err, "field_name", None)
        detail = getattr(err, "detail", None)
        if name not in self.fields or detail is None:
            return err
        return SampleError(f"{self.where}: field '{self.fields[name]}': {detail}")

    def str_list(self, *names: str, expected: str = "a non-empty list of image paths") -> list[str]:
        value = self.get(*names, expected=expected, types=(list, str))
        if isinstance(value, str):
            value = [value]
        field = self.name_of(*names)
        if not value:
            raise self.error(field, expected, value)
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v:
                raise self.error(f"{field}[{i}]", "a non-empty string path", v)
        return value

    def single_image(self, *names: str) -> list[str]:
        """The record's image path as a one-element list; more than one image is an error."""
        images = self.str_list(*names, expected="an image path")
        if len(images) != 1:
            raise self.error(self.name_of(*names), "exactly one image", images)
        return images

    def coords(self, name: str, expected: str, types: type | tuple[type, ...] = (list, str)) -> list[float]:
        """The 4 numbers of box field ``name`` (see :meth:`numbers`), in whatever frame it is written."""
        return self.numbers(self.get(name, expected=expected, types=types), name)

    def numbers(
        self, value: Any, field: str, n: int = 4, what: str = "4 numbers x1, y1, x2, y2"
    ) -> list[float]:
        """Exactly ``n`` finite numbers (a flat list, or a nested [[x1, y1], [x2, y2]])."""
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
            value = [c for pair in value for c in pair]
        if isinstance(value, str):  # "[x1, y1, x2, y2]" as some VOS files write it
            value = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", value)]
        if not isinstance(value, list | tuple) or len(value) != n:
            raise self.error(field, what, value)
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise self.error(field, what + " (finite numbers)", value)
        return [float(v) for v in value]

    # ---- boxes -------------------------------------------------------------------------------

    def box(
        self,
        coords: Sequence[float],
        field: str,
        sample_id: str,
        frame: str = "normalised",
        size: tuple[int, int] | None = None,
    ) -> tuple[Box, dict[str, Any]]:
        """A normalised :class:`Box` from ``coords`` in ``frame`` ("normalised", "qwen2-vl" or
        "pixels" with ``size=(width, height)``), by the module's clamp and degenerate policy.

        Returns the box and the meta flags to merge into the sample.
        """
        if frame == "normalised":
            raw = tuple(coords)
        elif frame == "qwen2-vl":
            scale = get_frame("qwen2-vl").scale  # type: ignore[attr-defined]
            raw = tuple(c / scale for c in coords)
        elif frame == "pixels":
            if size is None or size[0] <= 0 or size[1] <= 0:
                raise self.error(field, "a pixel box with a known image size", size)
            w, h = size
            raw = (coords[0] / w, coords[1] / h, coords[2] / w, coords[3] / h)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown frame {frame!r}")
        meta: dict[str, Any] = {}
        unit = {"normalised": "[0, 1]", "qwen2-vl": "[0, 1000]", "pixels": "[0, width/height]"}[frame]
        if any(c < -CLAMP_TOLERANCE or c > 1 + CLAMP_TOLERANCE for c in raw):
            raise self.error(field, f"coordinates in {unit} (a wrong coordinate frame?)", list(coords))
        box = Box(*raw)
        if any(c < 0 or c > 1 for c in raw):
            box = box.clamp()
            meta["clamped"] = True
            meta["raw_box"] = list(coords)
            self.report.clamped.append(sample_id)
        if box.is_degenerate:
            if self.degenerate == "error":
                raise self.error(field, "x1 < x2 and y1 < y2", list(coords))
            if self.degenerate == "skip":
                raise SkipRecord(f"degenerate box {list(coords)} in field '{field}'")
            if self.degenerate == "swap":
                box = Box(min(box.x1, box.x2), min(box.y1, box.y2), max(box.x1, box.x2), max(box.y1, box.y2))
                if box.is_degenerate:  # x1 == x2 or y1 == y2: no order of the corners has an area
                    raise SkipRecord(f"empty box {list(coords)} in field '{field}' (no area to swap into)")
                meta["swapped"] = True
                meta.setdefault("raw_box", list(coords))
                self.report.swapped.append(sample_id)
            else:
                meta["degenerate"] = True
                self.report.degenerate.append(sample_id)
        return box, meta

    def pixel_box(
        self, coords: Sequence[float], field: str, image: str, image_root: str | os.PathLike | None
    ) -> tuple[Box, dict[str, Any], tuple[int, int]]:
        """A normalised box from absolute-pixel ``coords`` on ``image`` (box policy as :meth:`box`).

        Returns the box, its meta flags and the (width, height) in pixels that normalised it
        (:meth:`pixel_size`: the record's ``width``/``height``, else the image header).
        """
        size = self.pixel_size(image, field, image_root)
        box, meta = self.box(coords, field, self.id, frame="pixels", size=size)
        return box, meta, size

    def ref_boxes(self, text: str) -> list[Box]:
        """Reference boxes quoted as ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (0-1000 frame)."""
        frame = get_frame("qwen2-vl")
        return [frame.from_model(c) for c in parse_box_tokens(text)]

    def pixel_size(self, image: str, field: str, image_root: str | os.PathLike | None) -> tuple[int, int]:
        """(width, height) from the record's ``width``/``height`` or else the image file's header."""
        if isinstance(self.raw, dict) and "width" in self.raw and "height" in self.raw:
            w = self.get("width", expected="a positive int (pixels)", types=(int, float))
            h = self.get("height", expected="a positive int (pixels)", types=(int, float))
            if w <= 0 or h <= 0:
                raise self.error("width/height", "positive pixel sizes", (w, h))
            return int(w), int(h)
        try:
            return image_size(image, image_root, where=f"{self.where}: field '{field}'")
        except ImageNotFoundError as err:
            raise SampleError(str(err)) from err


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_all(paths: Iterable[str], image_root: str | os.PathLike | None) -> list[str]:
    """Absolute paths under ``image_root`` when it is given (kept as written otherwise).

    Absolute, so that a later change of working directory, or a collator that joins its own
    image root to relative paths, cannot move them.
    """
    if image_root is None:
        return list(paths)
    return [os.path.abspath(resolve_image_path(p, image_root)) for p in paths]


def run_reader(
    path: str | os.PathLike,
    fmt: str,
    parse: Callable[[Record], Iterable[GroundingSample]],
    skip_invalid: bool = False,
    degenerate: DegeneratePolicy = "keep",
    fields: Mapping[str, Sequence[str]] | None = None,
) -> SampleList:
    """Run ``parse`` over every record of ``path`` and apply the error/skip policy.

    ``fields`` maps schema fields to the file's field (aliases, e.g. ``{"question": ("problem",
    "question")}``) so that a sample failing the schema check names the field the user wrote;
    a parser may also map fields per record (:meth:`Record.map_field`).

    Returns a :class:`SampleList` whose ``report`` says what was read, skipped, clamped and flagged;
    the one-line summary is logged (warning level when anything was skipped or fixed).
    """
    if degenerate not in DEGENERATE_POLICIES:
        raise ValueError(f"degenerate must be one of {DEGENERATE_POLICIES}, got {degenerate!r}")
    path = os.fspath(path)
    records = load_records(path)
    report = ReadReport(path=path, format=fmt, records=len(records))
    out = SampleList()
    for index, raw in enumerate(records):
        rec = Record(path, index, raw, report, degenerate, fields)
        marks = {name: len(getattr(report, name)) for name in _PER_SAMPLE_LISTS}
        notes = dict(report.notes)
        try:
            if isinstance(raw, SampleError):
                raise raw
            samples = list(parse(rec))
            for s in samples:
                s.source, s.index = path, index
                try:
                    validate_sample(s)
                except SampleError as err:
                    raise rec.file_error(err) from None
        except (SkipRecord, SampleError) as why:
            if isinstance(why, SampleError) and not skip_invalid:
                raise
            # Undo the flags and counts of a record that is not kept: the report lists kept samples.
            for name, mark in marks.items():
                del getattr(report, name)[mark:]
            report.notes = notes
            report.skipped.append((index, rec.id, str(why)))
            continue
        out.extend(samples)
    report.samples = len(out)
    out.report = report
    fixed = report.skipped or report.clamped or report.degenerate or report.swapped
    level = logging.WARNING if fixed else logging.INFO
    logger.log(level, report.summary())
    return out


#: The report's per-sample lists that a skipped record must not leave entries in.
_PER_SAMPLE_LISTS = ("clamped", "degenerate", "swapped")


def make_sample(rec: Record, **fields: Any) -> GroundingSample:
    """A :class:`GroundingSample` stamped with the record's file and index."""
    return GroundingSample(source=rec.path, index=rec.index, **fields)


def record_sample(
    rec: Record, images: Sequence[str], image_root: str | os.PathLike | None, **fields: Any
) -> list[GroundingSample]:
    """The record's one sample: id ``rec.id`` (unless ``fields`` gives one), ``images`` resolved
    under ``image_root`` (:func:`resolve_all`), stamped with the record's file and index."""
    fields.setdefault("id", rec.id)
    return [make_sample(rec, images=resolve_all(images, image_root), **fields)]


def question_sample(
    rec: Record,
    images: Sequence[str],
    image_root: str | os.PathLike | None,
    task: str,
    target_index: int,
    target_rule: str,
    question: str,
    box: Box,
    meta: dict[str, Any],
    **fields: Any,
) -> list[GroundingSample]:
    """The one sample of a multi-image record whose question may quote reference boxes
    (``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, 0-1000 frame): they become normalised
    ``ref_boxes``. ``fields`` adds the rest (``reasoning``, ``prompt_template``)."""
    return record_sample(
        rec,
        images,
        image_root,
        task=task,
        target_index=target_index,
        question=question,
        box=box,
        ref_boxes=rec.ref_boxes(question),
        target_rule=target_rule,
        meta=meta,
        **fields,
    )


def single_image_sample(
    rec: Record,
    images: Sequence[str],
    image_root: str | os.PathLike | None,
    task: str,
    question: str,
    box: Box,
    meta: dict[str, Any],
) -> list[GroundingSample]:
    """The one sample of a single-image record (RefCOCO, LISA, LLMSeg): target image 0, rule
    ``"single"``, the question stripped of surrounding whitespace."""
    return record_sample(
        rec,
        images,
        image_root,
        task=task,
        target_index=0,
        question=question.strip(),
        box=box,
        target_rule="single",
        meta=meta,
    )
