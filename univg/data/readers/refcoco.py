"""RefCOCO / RefCOCO+ / RefCOCOg in VLM-R1's REC format.

Record: ``image`` (path), ``problem`` (the referring expression), ``solution`` (absolute-pixel
xyxy), ``normalized_solution`` (0-1000 ints), ``height``, ``width``; optional ``id``.

The box is ``solution`` divided by ``width``/``height`` when both are present, else
``normalized_solution`` / 1000, else ``solution`` divided by the image header's size.
"""

from __future__ import annotations

import os

from univg.core.sample_types import GroundingSample
from univg.data.readers.common import DegeneratePolicy, Record, run_reader, single_image_sample
from univg.data.readers.questions import strip_image_placeholders
from univg.data.schema import SampleList

#: Schema field -> this format's field (aliases), so errors name what the file calls it.
FILE_FIELDS = {"question": ("problem", "question"), "images": ("image", "images")}


def _parse(rec: Record, image_root, task: str) -> list[GroundingSample]:
    images = rec.single_image("image", "images")
    question, _ = strip_image_placeholders(
        rec.get("problem", "question", expected="the referring expression", types=str)
    )
    has_size = isinstance(rec.raw, dict) and "width" in rec.raw and "height" in rec.raw
    if (
        isinstance(rec.raw, dict)
        and "solution" in rec.raw
        and (has_size or "normalized_solution" not in rec.raw)
    ):
        coords = rec.coords("solution", expected="absolute xyxy pixels")
        box, meta, _ = rec.pixel_box(coords, "solution", images[0], image_root)
    else:
        field = "normalized_solution"
        box, meta = rec.box(
            rec.coords(field, expected="4 ints in the 0-1000 frame"), field, rec.id, frame="qwen2-vl"
        )
    return single_image_sample(rec, images, image_root, task, question, box, meta)


def read_refcoco(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: DegeneratePolicy = "keep",
    task: str = "refcoco",
) -> SampleList:
    """Read a VLM-R1-style RefCOCO file: one sample per record, report attached."""
    return run_reader(
        path, "refcoco", lambda rec: _parse(rec, image_root, task), skip_invalid, degenerate, FILE_FIELDS
    )
