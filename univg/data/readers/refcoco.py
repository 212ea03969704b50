"""RefCOCO / RefCOCO+ / RefCOCOg in VLM-R1's REC format.

Record: ``image`` (path), ``problem`` (the referring expression), ``solution`` (absolute-pixel
xyxy), ``normalized_solution`` (0-1000 ints), ``height``, ``width``; optional ``id``.

The box is ``solution`` divided by ``width``/``height`` when both are present, else
``normalized_solution`` / 1000, else ``solution`` divided by the image header's size.
"""

from __future__ import annotations

import os

from univg.data.readers.common import Record, make_sample, resolve_all, run_reader, strip_image_placeholders
from univg.data.schema import GroundingSample, SampleList


def _parse(rec: Record, image_root, task: str) -> list[GroundingSample]:
    images = rec.str_list("image", "images", expected="an image path")
    if len(images) != 1:
        raise rec.error(rec.name_of("image", "images"), "exactly one image", images)
    question, _ = strip_image_placeholders(
        rec.get("problem", "question", expected="the referring expression", types=str)
    )
    has_size = isinstance(rec.raw, dict) and "width" in rec.raw and "height" in rec.raw
    if (
        isinstance(rec.raw, dict)
        and "solution" in rec.raw
        and (has_size or "normalized_solution" not in rec.raw)
    ):
        coords = rec.numbers(
            rec.get("solution", expected="absolute xyxy pixels", types=(list, str)), "solution"
        )
        size = rec.pixel_size(images[0], "solution", image_root)
        box, meta = rec.box(coords, "solution", rec.id, frame="pixels", size=size)
    else:
        field = "normalized_solution"
        coords = rec.numbers(rec.get(field, expected="4 ints in the 0-1000 frame", types=(list, str)), field)
        box, meta = rec.box(coords, field, rec.id, frame="qwen2-vl")
    return [
        make_sample(
            rec,
            id=rec.id,
            task=task,
            images=resolve_all(images, image_root),
            target_index=0,
            question=question.strip(),
            box=box,
            target_rule="single",
            meta=meta,
        )
    ]


def read_refcoco(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
    task: str = "refcoco",
) -> SampleList:
    """Read a VLM-R1-style RefCOCO file: one sample per record, report attached."""
    return run_reader(path, "refcoco", lambda rec: _parse(rec, image_root, task), skip_invalid, degenerate)
