"""Lazy image access: resolve a sample's image reference and open it only when a batch needs it."""

from __future__ import annotations

import os
from functools import lru_cache

from PIL import Image

from univg.core.errors import UsageError
from univg.core.sample_types import GroundingSample, ImageRef


class ImageNotFoundError(FileNotFoundError):
    """An image a sample needs is not on disk; the message names the sample and the path."""


class ImageDecodeError(UsageError, OSError):
    """An image a sample needs is not a readable image; the message names the sample and the path."""


def resolve_image_path(ref: str, image_root: str | os.PathLike | None = None) -> str:
    """Absolute paths stay; relative ones are joined to ``image_root`` (``./a/b.jpg`` -> ``root/a/b.jpg``).

    >>> resolve_image_path("./MIG-Bench/images/x.jpg", "/data")
    '/data/MIG-Bench/images/x.jpg'
    >>> resolve_image_path("/abs/x.jpg", "/data")
    '/abs/x.jpg'
    """
    if image_root is None or os.path.isabs(ref):
        return os.path.normpath(ref)
    return os.path.normpath(os.path.join(os.fspath(image_root), ref))


def load_image(sample: GroundingSample, i: int, image_root: str | os.PathLike | None = None) -> Image.Image:
    """The ``i``-th image of ``sample`` as an RGB PIL image; in-memory images pass through.

    Raises :class:`ImageNotFoundError` naming the sample (file, record, id) and the resolved path.
    """
    ref: ImageRef = sample.images[i]
    if isinstance(ref, Image.Image):
        return ref if ref.mode == "RGB" else ref.convert("RGB")
    path = resolve_image_path(ref, image_root)
    if not os.path.isfile(path):
        root = (
            f" (image_root {os.fspath(image_root)!s})" if image_root is not None else " (no image_root set)"
        )
        raise ImageNotFoundError(f"{sample.where()}: images[{i}] not found: {path}{root}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise ImageDecodeError(f"{sample.where()}: images[{i}] cannot be decoded: {path}: {err}") from err


@lru_cache(maxsize=65536)
def _header_size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:  # reads the header only, not the pixels
        return img.size


def image_size(
    ref: ImageRef, image_root: str | os.PathLike | None = None, where: str = ""
) -> tuple[int, int]:
    """``(width, height)`` in pixels, from the file header (cached) or the in-memory image.

    Readers of pixel-frame annotations (LISA, LLMSeg, VOS) need it to normalise boxes when the
    record does not carry ``width``/``height``.
    """
    if isinstance(ref, Image.Image):
        return ref.size
    path = resolve_image_path(ref, image_root)
    if not os.path.isfile(path):
        raise ImageNotFoundError(
            f"{where}: expected the image file (its size normalises the pixel box, or give width/height "
            f"in the record); missing: {path}"
        )
    return _header_size(path)
