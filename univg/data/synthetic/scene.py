"""Synthetic scenes: the palette, objects with exact pixel boxes, backgrounds, drawing and
non-overlapping placement (:mod:`univg.data.synthetic`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from univg.core.boxes import Box

#: Saturated palette. Every colour has a channel outside [64, 192], the range backgrounds use.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "orange": (255, 140, 0),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("rectangle", "ellipse", "triangle")
#: Outline colour of reference marks ("marked with a white bounding box"); not a palette colour.
MARK_COLOUR = (255, 255, 255)
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "grid")

# Pixels kept free around each object (so marks and neighbours never touch) and from the border.
_GAP = 3
_BORDER = 2


@dataclass(frozen=True)
class _Obj:
    """A drawn object: colour name, shape name, pixel box with exclusive ends ``[x1, x2) x [y1, y2)``."""

    colour: str
    shape: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def box(self, size: int) -> Box:
        return Box(self.x1 / size, self.y1 / size, self.x2 / size, self.y2 / size)

    def moved(self, x1: int, y1: int, w: int | None = None, h: int | None = None) -> _Obj:
        w = self.x2 - self.x1 if w is None else w
        h = self.y2 - self.y1 if h is None else h
        return _Obj(self.colour, self.shape, x1, y1, x1 + w, y1 + h)


# ---------------------------------------------------------------------------------------------
# Drawing


@lru_cache(maxsize=16)
def _background_array(kind: str, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 background; all values in [64, 192] so no palette colour occurs.

    ``gradient`` encodes position in colour (red grows left to right, green top to bottom), which
    gives a vision tower without absolute position embeddings something to read (docs/design.md section 11).
    ``grid`` draws faint lines every eighth of the side.
    """
    if kind == "plain":
        return np.full((size, size, 3), 128, dtype=np.uint8)
    if kind == "gradient":
        ramp = (64 + np.arange(size) * 128 // max(size - 1, 1)).astype(np.uint8)  # [size]
        out = np.empty((size, size, 3), dtype=np.uint8)
        out[:, :, 0] = ramp[None, :]
        out[:, :, 1] = ramp[:, None]
        out[:, :, 2] = 128
        return out
    if kind == "grid":
        out = np.full((size, size, 3), 150, dtype=np.uint8)
        lines = (np.arange(1, 8) * size) // 8
        out[lines, :, :] = 100
        out[:, lines, :] = 100
        return out
    raise ValueError(f"synthetic: unknown background {kind!r}; choose one of {BACKGROUNDS}")


def _draw(objects: Sequence[_Obj], size: int, background: str, marks: Sequence[_Obj] = ()) -> Image.Image:
    """Render objects (and 1-pixel white outlines just outside each of ``marks``) on a background."""
    image = Image.fromarray(_background_array(background, size).copy(), "RGB")
    draw = ImageDraw.Draw(image)
    for o in objects:
        fill = COLOURS[o.colour]
        # PIL's xy ends are inclusive, ours exclusive.
        x2, y2 = o.x2 - 1, o.y2 - 1
        if o.shape == "rectangle":
            draw.rectangle((o.x1, o.y1, x2, y2), fill=fill)
        elif o.shape == "ellipse":
            draw.ellipse((o.x1, o.y1, x2, y2), fill=fill)
        else:  # triangle pointing up; its base spans the box bottom, its apex the box top
            draw.polygon([(o.x1, y2), (x2, y2), ((o.x1 + x2) / 2, o.y1)], fill=fill)
    for m in marks:
        draw.rectangle((m.x1 - 1, m.y1 - 1, m.x2, m.y2), outline=MARK_COLOUR)
    return image


# ---------------------------------------------------------------------------------------------
# Placement


class _Scene:
    """Random non-overlapping placement of objects in one ``size x size`` image."""

    def __init__(self, rng: random.Random, size: int, object_size: tuple[float, float]):
        self.rng = rng
        self.size = size
        lo = max(6, round(object_size[0] * size))
        hi = max(lo, round(object_size[1] * size))
        self.side = (lo, hi)

    def _free(self, cand: _Obj, placed: Sequence[_Obj]) -> bool:
        return all(
            cand.x1 >= p.x2 + _GAP
            or p.x1 >= cand.x2 + _GAP
            or cand.y1 >= p.y2 + _GAP
            or p.y1 >= cand.y2 + _GAP
            for p in placed
        )

    def dims(self, scale: float = 1.0) -> tuple[int, int]:
        lo, hi = self.side
        w = self.rng.randint(lo, hi)
        h = self.rng.randint(lo, hi)
        return max(6, round(w * scale)), max(6, round(h * scale))

    def place(
        self, colour: str, shape: str, placed: Sequence[_Obj], dims: tuple[int, int] | None = None
    ) -> _Obj:
        """A new object that keeps ``_GAP`` pixels from every placed one; shrinks when crowded."""
        w, h = dims or self.dims()
        for attempt in range(400):
            if attempt and attempt % 100 == 0:  # crowded: shrink and retry
                w, h = max(6, w * 3 // 4), max(6, h * 3 // 4)
            x1 = self.rng.randint(_BORDER, self.size - _BORDER - w)
            y1 = self.rng.randint(_BORDER, self.size - _BORDER - h)
            cand = _Obj(colour, shape, x1, y1, x1 + w, y1 + h)
            if self._free(cand, placed):
                return cand
        raise RuntimeError(
            f"synthetic: cannot place {len(placed) + 1} objects in a {self.size}px image; "
            "lower num_distractors or object_size"
        )

    def layout(self, specs: Sequence[tuple[str, str]], scale: float = 1.0) -> list[_Obj]:
        placed: list[_Obj] = []
        for colour, shape in specs:
            placed.append(self.place(colour, shape, placed, self.dims(scale)))
        return placed
