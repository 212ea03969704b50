"""The validator of the one sample type every dataset reader maps to
(:class:`~univg.core.sample_types.GroundingSample`) and the reader's report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample, sample_error

__all__ = ["ReadReport", "SampleList", "validate_sample"]


def _check_box(where: str, name: str, box: Any, allow_degenerate: bool) -> None:
    if not isinstance(box, Box):
        raise sample_error(where, name, "a univg.core.boxes.Box (normalised xyxy)", type(box).__name__)
    coords = box.as_tuple()
    if not all(isinstance(c, int | float) and math.isfinite(c) for c in coords):
        raise sample_error(where, name, "finite float coordinates", coords)
    if not all(0.0 <= c <= 1.0 for c in coords):
        raise sample_error(where, name, "normalised coordinates in [0, 1]", coords)
    if not allow_degenerate and box.is_degenerate:
        raise sample_error(
            where, name, "x1 < x2 and y1 < y2 (or meta['degenerate'] set by the reader)", coords
        )


def validate_sample(sample: GroundingSample) -> None:
    """Raise :class:`SampleError` naming file, record and field if ``sample`` breaks the schema.

    A degenerate ``box`` is accepted only when the reader flagged it (``meta["degenerate"]``),
    so a box inverted by a bug elsewhere is still caught.

    >>> s = GroundingSample("a", "t", ["x.jpg"], 0, "where?", Box(0.1, 0.1, 0.5, 0.5))
    >>> validate_sample(s)
    >>> s.target_index = 1
    >>> validate_sample(s)
    Traceback (most recent call last):
    ...
    univg.core.sample_types.SampleError: <memory>:record -1 (id a): field 'target_index': expected an int in [0, 1), got 1
    """
    where = sample.where()
    if not isinstance(sample.id, str) or not sample.id:
        raise sample_error(where, "id", "a non-empty string", sample.id)
    if not isinstance(sample.task, str) or not sample.task:
        raise sample_error(where, "task", "a non-empty string", sample.task)
    if not isinstance(sample.images, list) or not sample.images:
        raise sample_error(where, "images", "a non-empty list of paths or PIL images", sample.images)
    for i, img in enumerate(sample.images):
        if not isinstance(img, str | Image.Image) or (isinstance(img, str) and not img):
            raise sample_error(where, f"images[{i}]", "a non-empty path or a PIL image", img)
    n = len(sample.images)
    if isinstance(sample.target_index, bool) or not isinstance(sample.target_index, int):
        raise sample_error(where, "target_index", f"an int in [0, {n})", sample.target_index)
    if not 0 <= sample.target_index < n:
        raise sample_error(where, "target_index", f"an int in [0, {n})", sample.target_index)
    if not isinstance(sample.question, str) or not sample.question.strip():
        raise sample_error(where, "question", "a non-empty string", sample.question)
    _check_box(where, "box", sample.box, allow_degenerate=bool(sample.meta.get("degenerate")))
    if sample.reasoning is not None and not isinstance(sample.reasoning, str):
        raise sample_error(where, "reasoning", "a string or None", sample.reasoning)
    if sample.target is not None and (not isinstance(sample.target, str) or not sample.target.strip()):
        raise sample_error(where, "target", "a non-empty assistant text or None", sample.target)
    for i, ref in enumerate(sample.ref_boxes):
        _check_box(where, f"ref_boxes[{i}]", ref, allow_degenerate=True)


@dataclass
class ReadReport:
    """What a reader did with a file: counts and the ids it skipped, clamped or flagged.

    Nothing is dropped silently: every skipped record is listed with its reason.
    """

    path: str
    format: str
    records: int = 0
    samples: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (index, id, reason)
    clamped: list[str] = field(default_factory=list)  # ids whose box was clamped into [0, 1]
    degenerate: list[str] = field(default_factory=list)  # ids kept with inverted or equal corners as written
    swapped: list[str] = field(default_factory=list)  # ids whose inverted corners were swapped
    notes: dict[str, int] = field(default_factory=dict)  # other counted fixes, by name

    def note(self, name: str, count: int = 1) -> None:
        self.notes[name] = self.notes.get(name, 0) + count

    def summary(self) -> str:
        """One line: ``mig_bench MIG_data.json: 4295 records -> 4295 samples; skipped 0; ...``."""
        parts = [
            f"{self.format} {self.path}: {self.records} records -> {self.samples} samples",
            f"skipped {len(self.skipped)}",
            f"clamped {len(self.clamped)}" + (f" {self.clamped}" if self.clamped else ""),
            f"degenerate kept {len(self.degenerate)}" + (f" {self.degenerate}" if self.degenerate else ""),
        ]
        if self.swapped:
            parts.append(f"inverted corners swapped {len(self.swapped)} {self.swapped}")
        parts += [f"{k} {v}" for k, v in sorted(self.notes.items())]
        return "; ".join(parts)


class SampleList(list):
    """A ``list[GroundingSample]`` that also carries the :class:`ReadReport` of the read."""

    report: ReadReport | None = None
