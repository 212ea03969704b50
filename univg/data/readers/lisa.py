"""LISA-Grounding (reasoning segmentation turned into boxes), the release's zero-shot eval set.

Record: ``image_path`` (or ``image``), ``instruction``, ``boxes`` (absolute-pixel xyxy; a list of
boxes of which the first is the target, as in the release's eval, or one box); optional ``id``,
``width``/``height``. Without a size in the record the image header is read (the file must exist).
"""

from __future__ import annotations

import os

from univg.data.readers.common import Record, run_reader, single_image_sample
from univg.data.schema import GroundingSample, SampleList


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


def read_single_image_pixels(
    rec: Record,
    image_root,
    task: str,
    image_keys: tuple[str, ...],
    question_keys: tuple[str, ...],
    box_keys: tuple[str, ...],
) -> list[GroundingSample]:
    """One single-image sample with an absolute-pixel box (LISA, LLMSeg)."""
    images = rec.single_image(*image_keys)
    question = rec.get(*question_keys, expected="the instruction text", types=str)
    rec.map_field("question", *question_keys)  # errors name the file's field (e.g. 'instruction')
    coords, field = pixel_box_field(rec, *box_keys)
    box, meta, size = rec.pixel_box(coords, field, images[0], image_root)
    meta["image_size"] = size
    return single_image_sample(rec, images, image_root, task, question, box, meta)


def read_lisa(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read a LISA-Grounding file: one sample per record, report attached."""
    return run_reader(
        path,
        "lisa",
        lambda rec: read_single_image_pixels(
            rec, image_root, "lisa", ("image_path", "image"), ("instruction", "question"), ("boxes", "bbox")
        ),
        skip_invalid,
        degenerate,
    )
