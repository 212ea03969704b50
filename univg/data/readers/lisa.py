"""LISA-Grounding and LLMSeg-Grounding, the release's zero-shot eval sets: one reader body.

Both are single-image records with an absolute-pixel box and differ only in key names (each also
accepts the other's keys):

- LISA: ``image_path`` (or ``image``), ``instruction``, ``boxes`` (absolute-pixel xyxy; a list of
  boxes of which the first is the target, as in the release's eval, or one box);
- LLMSeg: ``image`` (or ``image_path``, relative to the LLMSeg images folder), ``question``, ``bbox``
  (absolute pixels, flat ``[x1, y1, x2, y2]`` or the release's ``[[x1, y1], [x2, y2]]``).

Optional in both: ``id``, ``width``/``height``. Without a size in the record the image header is
read (the file must exist).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from univg.core.sample_types import GroundingSample
from univg.data.readers.common import Record, run_reader, single_image_sample
from univg.data.schema import SampleList


@dataclass(frozen=True)
class PixelFormat:
    """The key names of one single-image, absolute-pixel format (first name preferred)."""

    name: str
    image_keys: tuple[str, ...]
    question_keys: tuple[str, ...]
    box_keys: tuple[str, ...]


LISA = PixelFormat("lisa", ("image_path", "image"), ("instruction", "question"), ("boxes", "bbox"))
LLMSEG = PixelFormat("llmseg", ("image", "image_path"), ("question", "instruction"), ("bbox", "boxes"))


def pixel_box_field(rec: Record, *names: str) -> tuple[list[float], str]:
    """The first box of a ``boxes`` list (or a single box), counting extra boxes in the report."""
    value = rec.get(*names, expected="absolute-pixel xyxy box(es)", types=(list, str))
    field = rec.name_of(*names)
    if isinstance(value, list) and value and isinstance(value[0], list) and not _is_pair_box(value):
        if len(value) > 1:
            rec.report.note("extra_boxes_ignored", len(value) - 1)
        return rec.numbers(value[0], f"{field}[0]"), f"{field}[0]"
    return rec.numbers(value, field), field


def _is_pair_box(value: list) -> bool:
    """[[x1, y1], [x2, y2]]: one box written as two corner pairs (LLMSeg)."""
    return len(value) == 2 and all(isinstance(v, list) and len(v) == 2 for v in value)


def read_single_image_pixels(rec: Record, image_root, fmt: PixelFormat) -> list[GroundingSample]:
    """One single-image sample with an absolute-pixel box (task: the format's name)."""
    images = rec.single_image(*fmt.image_keys)
    question = rec.get(*fmt.question_keys, expected="the instruction text", types=str)
    rec.map_field("question", *fmt.question_keys)  # errors name the file's field (e.g. 'instruction')
    coords, field = pixel_box_field(rec, *fmt.box_keys)
    box, meta, size = rec.pixel_box(coords, field, images[0], image_root)
    meta["image_size"] = size
    return single_image_sample(rec, images, image_root, fmt.name, question, box, meta)


def read_pixel_grounding(
    path: str | os.PathLike,
    fmt: PixelFormat,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read a file of ``fmt``: one sample per record, report attached."""
    return run_reader(
        path, fmt.name, lambda rec: read_single_image_pixels(rec, image_root, fmt), skip_invalid, degenerate
    )


def read_lisa(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read a LISA-Grounding file: one sample per record, report attached."""
    return read_pixel_grounding(path, LISA, image_root, skip_invalid, degenerate)


def read_llmseg(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read an LLMSeg-Grounding file: one sample per record, report attached."""
    return read_pixel_grounding(path, LLMSEG, image_root, skip_invalid, degenerate)
