"""LLMSeg-Grounding, the release's zero-shot eval set.

Record: ``image`` (or ``image_path``, relative to the LLMSeg images folder), ``question``, ``bbox``
(absolute pixels, flat ``[x1, y1, x2, y2]`` or the release's ``[[x1, y1], [x2, y2]]``); optional
``id``, ``width``/``height``. Without a size in the record the image header is read.
"""

from __future__ import annotations

import os

from univg.data.readers.common import run_reader
from univg.data.readers.lisa import read_single_image_pixels
from univg.data.schema import SampleList


def read_llmseg(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read an LLMSeg-Grounding file: one sample per record, report attached."""
    return run_reader(
        path,
        "llmseg",
        lambda rec: read_single_image_pixels(
            rec, image_root, "llmseg", ("image", "image_path"), ("question", "instruction"), ("bbox", "boxes")
        ),
        skip_invalid,
        degenerate,
    )
