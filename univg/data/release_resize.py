"""The release's two-step image resize, as an option (``two_step_resize: true`` on a data module).

The release's scripts pass images through ``qwen_vl_utils.process_vision_info`` before the
processor: each image is first resized to the nearest multiples of 28 (within qwen_vl_utils' own
pixel limits, 3,136 to 12,845,056), and only then does the processor apply its own resize
(``max_pixels`` of the benchmark). univg resizes once, in the processor. The two differ by one
extra resampling, and for images above the processor's limit by where rounding happens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image

FACTOR = 28
#: qwen_vl_utils' defaults (the release's messages set no limits of their own)
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200


def smart_resize(
    height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` within the pixel limits (qwen_vl_utils).

    >>> smart_resize(480, 640)
    (476, 644)
    >>> smart_resize(10, 10)  # below min_pixels: scaled up
    (56, 56)
    """
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio above {MAX_RATIO}: {width} x {height}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def first_resize(image: Image.Image) -> Image.Image:
    """The release's first step: the image resized to :func:`smart_resize`'s size (bicubic)."""
    height, width = smart_resize(image.height, image.width)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.BICUBIC)


class TwoStepResizeProcessor:
    """A processor whose ``process_images`` applies :func:`first_resize` first; everything else
    is the wrapped processor's."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def process_images(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        return self.processor.process_images([first_resize(im) for im in images])

    def __getattr__(self, name: str) -> Any:
        if name == "processor":  # not set yet (unpickling in a data loader worker)
            raise AttributeError(name)
        return getattr(self.processor, name)
