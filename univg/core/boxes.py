"""Boxes, coordinate frames and answer parsing.

Internally every box is a normalised xyxy :class:`Box` of floats in [0, 1] of its own image.
What the model reads and writes is a per-backbone *frame* (docs/design.md section 1): Qwen2-VL uses
integers in [0, 1000) (:class:`Qwen2VLFrame`), Qwen2.5-VL absolute pixels of the resized image
(:class:`PixelFrame`). Rewards and metrics take a frame object or name; none of them hard-code 1000.

Parsing never raises: anything that is not a box is ``None``. Functions that repair boxes
(swap inverted corners, clamp into the image) can count what they fixed in a :class:`BoxFixes`
so the trainer can log it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol, runtime_checkable

#: Four numbers in some frame: (x1, y1, x2, y2).
Coords = Sequence[float]
IntBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Box:
    """Normalised xyxy box: top-left (x1, y1), bottom-right (x2, y2), floats in [0, 1].

    >>> b = Box.from_xyxy([0.1, 0.2, 0.5, 0.6])
    >>> round(b.width, 6), round(b.height, 6), round(b.area, 6)
    (0.4, 0.4, 0.16)
    >>> Box(-0.1, 0.5, 1.2, 0.7).clamp()
    Box(x1=0.0, y1=0.5, x2=1.0, y2=0.7)
    >>> Box(0.5, 0.5, 0.5, 0.9).is_degenerate
    True
    """

    x1: float
    y1: float
    x2: float
    y2: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @classmethod
    def from_xyxy(cls, seq: Coords) -> Box:
        """A box from any sequence of four numbers (normalised xyxy); ValueError otherwise."""
        values = list(seq)
        if len(values) != 4:
            raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(values)}: {values!r}")
        return cls(*(float(v) for v in values))

    @property
    def is_degenerate(self) -> bool:
        """True for an empty box (x2 <= x1 or y2 <= y1) or one with a NaN coordinate."""
        # Written as "not (a < b)" so that NaN, which compares False, counts as degenerate.
        return not (self.x1 < self.x2 and self.y1 < self.y2)

    def clamp(self) -> Box:
        """Each coordinate clipped into [0, 1] (NaN stays NaN; corners are not reordered)."""
        return Box(*(_clip(v, 0.0, 1.0) for v in self.as_tuple()))

    @property
    def width(self) -> float:
        """x2 - x1, or 0 for an inverted/NaN box (normalised units)."""
        return _extent(self.x1, self.x2)

    @property
    def height(self) -> float:
        """y2 - y1, or 0 for an inverted/NaN box (normalised units)."""
        return _extent(self.y1, self.y2)

    @property
    def area(self) -> float:
        """width * height (fraction of the image)."""
        return self.width * self.height


def _clip(value: float, low: float, high: float) -> float:
    if math.isnan(value):
        return value
    return min(max(value, low), high)


def _extent(low: float, high: float) -> float:
    size = high - low
    return size if size > 0 else 0.0  # NaN > 0 is False, so NaN gives 0


@dataclass
class BoxFixes:
    """Counts of repairs made while normalising boxes, for logging.

    ``swapped``: boxes whose corners were inverted (x2 < x1 or y2 < y1) and were swapped;
    ``clamped``: boxes with a coordinate outside the frame, clipped into it;
    ``degenerate``: boxes left with zero width or height (they score IoU 0);
    ``nan``: boxes with a NaN/inf coordinate (rejected, score 0).

    >>> fixes = BoxFixes()
    >>> normalise_coords((900, 10, 100, 1200), "qwen2-vl", fixes=fixes)
    Box(x1=0.1, y1=0.01, x2=0.9, y2=1.0)
    >>> fixes
    BoxFixes(swapped=1, clamped=1, degenerate=0, nan=0)
    """

    swapped: int = 0
    clamped: int = 0
    degenerate: int = 0
    nan: int = 0

    def update(self, other: BoxFixes) -> None:
        """Add another counter's counts to this one."""
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Coordinate frames
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class Frame(Protocol):
    """How a backbone writes coordinates. ``width``/``height`` are the (resized) image size in pixels."""

    name: str
    #: what the model's numbers mean, in words (model cards)
    summary: str

    def to_model(self, box: Box, width: int | None = None, height: int | None = None) -> IntBox: ...

    def from_model(
        self,
        coords: Coords,
        width: int | None = None,
        height: int | None = None,
        fixes: BoxFixes | None = None,
    ) -> Box: ...


def _from_scaled(coords: Coords, sx: float, sy: float, fixes: BoxFixes | None) -> Box:
    """Divide by the frame's scale and clamp into [0, 1], counting a clamp once per box."""
    x1, y1, x2, y2 = (float(v) for v in coords)
    raw = Box(x1 / sx, y1 / sy, x2 / sx, y2 / sy)
    box = raw.clamp()
    if fixes is not None and box != raw:
        fixes.clamped += 1
    return box


@dataclass(frozen=True)
class Qwen2VLFrame:
    """Qwen2-VL: integers in [0, 1000) of the image, independent of its size.

    >>> f = Qwen2VLFrame()
    >>> f.to_model(Box(0.25, 0.5, 1.0, 0.9999))
    (250, 500, 999, 999)
    >>> f.from_model((250, 500, 1000, 1200))
    Box(x1=0.25, y1=0.5, x2=1.0, y2=1.0)
    """

    name: str = "qwen2-vl"
    scale: int = 1000
    summary: ClassVar[str] = "integers in [0, 1000) of the target image (`int(x / width * 1000)`)"

    def to_model(self, box: Box, width: int | None = None, height: int | None = None) -> IntBox:
        """``int(x * 1000)`` clipped to [0, 999] (the release's ``int(x / width * 1000)``)."""
        top = self.scale - 1
        return tuple(min(max(int(v * self.scale), 0), top) for v in box.as_tuple())  # type: ignore[return-value]

    def from_model(
        self,
        coords: Coords,
        width: int | None = None,
        height: int | None = None,
        fixes: BoxFixes | None = None,
    ) -> Box:
        """``x / 1000`` clamped into [0, 1]; a clamp is counted in ``fixes``."""
        return _from_scaled(coords, self.scale, self.scale, fixes)


@dataclass(frozen=True)
class PixelFrame:
    """Qwen2.5-VL: absolute pixels of the resized image; needs ``width`` and ``height``.

    >>> f = PixelFrame()
    >>> f.to_model(Box(0.25, 0.5, 1.0, 1.0), width=448, height=224)
    (112, 112, 448, 224)
    >>> f.from_model((112, 112, 448, 224), width=448, height=224)
    Box(x1=0.25, y1=0.5, x2=1.0, y2=1.0)
    """

    name: str = "pixels"
    summary: ClassVar[str] = "absolute pixels of the target image as resized for the model"

    @staticmethod
    def _size(width: int | None, height: int | None) -> tuple[int, int]:
        if width is None or height is None or width <= 0 or height <= 0:
            raise ValueError(
                f"the pixel frame needs the resized image size, got width={width}, height={height}"
            )
        return width, height

    def to_model(self, box: Box, width: int | None = None, height: int | None = None) -> IntBox:
        """Rounded pixels, clipped to [0, width] x [0, height] (a corner may sit on the far edge)."""
        w, h = self._size(width, height)
        limits = (w, h, w, h)
        return tuple(  # type: ignore[return-value]
            min(max(round(v * s), 0), s) for v, s in zip(box.as_tuple(), limits)
        )

    def from_model(
        self,
        coords: Coords,
        width: int | None = None,
        height: int | None = None,
        fixes: BoxFixes | None = None,
    ) -> Box:
        """Pixels divided by the image size, clamped into [0, 1]; a clamp is counted in ``fixes``."""
        w, h = self._size(width, height)
        return _from_scaled(coords, w, h, fixes)


FRAMES: dict[str, Frame] = {"qwen2-vl": Qwen2VLFrame(), "pixels": PixelFrame()}


def get_frame(name: str | Frame) -> Frame:
    """The frame registered under ``name`` (a frame object is returned as is).

    >>> get_frame("qwen2-vl").name
    'qwen2-vl'
    """
    if isinstance(name, Frame) and not isinstance(name, str):
        return name
    try:
        return FRAMES[name]
    except KeyError:
        raise ValueError(f"unknown coordinate frame {name!r}; choose one of {sorted(FRAMES)}") from None


def normalise_coords(
    coords: Coords | None,
    frame: str | Frame = "qwen2-vl",
    fixes: BoxFixes | None = None,
    width: int | None = None,
    height: int | None = None,
) -> Box | None:
    """Model-frame coordinates to a normalised :class:`Box`, repairing what can be repaired.

    Inverted corners are swapped, coordinates outside the frame are clamped (each counted once
    per box in ``fixes``). A NaN/inf coordinate, a wrong count of numbers or ``None`` gives
    ``None`` (counted as ``nan`` when numeric). A box left empty is returned and counted as
    ``degenerate``; its IoU with anything is 0. Never raises for bad coordinates (an unknown
    frame name or a pixel frame without a size is a configuration error and does raise).

    >>> normalise_coords((100, 200, 300, 400))
    Box(x1=0.1, y1=0.2, x2=0.3, y2=0.4)
    >>> normalise_coords((float("nan"), 0, 1, 1)) is None
    True
    """
    frame = get_frame(frame)
    try:
        values = [float(v) for v in coords]  # type: ignore[union-attr]
    except (TypeError, ValueError, OverflowError):
        return None
    if len(values) != 4:
        return None
    if not all(math.isfinite(v) for v in values):
        if fixes is not None:
            fixes.nan += 1
        return None
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        if fixes is not None:
            fixes.swapped += 1
    box = frame.from_model((x1, y1, x2, y2), width, height, fixes)
    if box.is_degenerate and fixes is not None:
        fixes.degenerate += 1
    return box


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


def box_iou(a: Box | Coords, b: Box | Coords) -> float:
    """Intersection over union of two xyxy boxes given in the same frame, in [0, 1].

    Inverted corners are swapped first; a NaN/inf coordinate, an empty box or a zero union give 0.

    >>> box_iou((0, 0, 10, 10), (5, 0, 15, 10))  # overlap 50, union 150
    0.3333333333333333
    >>> box_iou(Box(0.0, 0.0, 0.5, 0.5), Box(0.0, 0.0, 0.5, 0.5))
    1.0
    >>> box_iou((10, 10, 0, 0), (0, 0, 10, 10))  # inverted corners are swapped
    1.0
    >>> box_iou((0, 0, 0, 10), (0, 0, 10, 10))  # zero width
    0.0
    """
    pa, pb = _ordered(a), _ordered(b)
    if pa is None or pb is None:
        return 0.0
    ax1, ay1, ax2, ay2 = pa
    bx1, by1, bx2, by2 = pb
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = area_a + area_b - inter
    if not union > 0 or not math.isfinite(union):
        return 0.0
    # Rounding can push the ratio a hair outside [0, 1]; the reward promises that range.
    return min(max(inter / union, 0.0), 1.0)


def _ordered(box: Box | Coords) -> tuple[float, float, float, float] | None:
    values = box.as_tuple() if isinstance(box, Box) else box
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


# --------------------------------------------------------------------------------------------------
# Parsing and formatting answers
# --------------------------------------------------------------------------------------------------

# ASCII digits only: Python's \d also matches e.g. Arabic-Indic digits, which int() would accept.
# An optional minus sign is parsed so that a negative coordinate is clamped and counted rather than
# silently read as its absolute value.
_INT = r"(-?[0-9]+)"
_PAIR_RE = re.compile(rf"\(\s*{_INT}\s*,\s*{_INT}\s*\)\s*,\s*\(\s*{_INT}\s*,\s*{_INT}\s*\)")
_LIST_RE = re.compile(rf"\[\s*{_INT}\s*,\s*{_INT}\s*,\s*{_INT}\s*,\s*{_INT}\s*\]")
_BOX_TOKENS_RE = re.compile(rf"<\|box_start\|>\s*{_PAIR_RE.pattern}\s*<\|box_end\|>")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


def _ints(match: re.Match[str]) -> IntBox | None:
    try:
        return tuple(int(g) for g in match.groups())  # type: ignore[return-value]
    except ValueError:  # a number longer than Python's int-string limit (4300 digits)
        return None


def parse_answer(text: str, strict: bool = True) -> IntBox | None:
    """The answer box ``(x1, y1, x2, y2)`` in the model frame, or ``None``. Never raises.

    ``strict=True`` (our default): the first ``(x1, y1), (x2, y2)`` inside the last complete
    ``<answer>...</answer>`` block; a box quoted only in the reasoning, or an answer cut off before
    ``</answer>``, gives ``None``. ``strict=False`` (the release's eval): the first box anywhere in
    the text; only this mode also accepts the list form ``[x1, y1, x2, y2]`` (whichever form comes
    first), since docs/design.md section 1 fixes the answer format to corner pairs. Whitespace around numbers, commas
    and brackets is free. Numbers may be negative or out of range: callers clamp and count them.

    >>> parse_answer("<think>maybe (1, 2), (3, 4)</think><answer>(12,34),( 56 , 78 )</answer>")
    (12, 34, 56, 78)
    >>> parse_answer("<think>maybe (1, 2), (3, 4)</think><answer>(12,34),(56,78)</answer>", strict=False)
    (1, 2, 3, 4)
    >>> parse_answer("<answer>(1, 2), (3, 4)") is None  # truncated
    True
    >>> parse_answer("the box is [10, 20, 30, 40]", strict=False)
    (10, 20, 30, 40)
    """
    if not isinstance(text, str):
        return None
    if strict:
        end = text.rfind(_ANSWER_CLOSE)
        if end < 0:
            return None
        start = text.rfind(_ANSWER_OPEN, 0, end)
        if start < 0:
            return None
        match = _PAIR_RE.search(text, start + len(_ANSWER_OPEN), end)
        return _ints(match) if match else None
    found = [m for m in (_PAIR_RE.search(text), _LIST_RE.search(text)) if m is not None]
    if not found:
        return None
    return _ints(min(found, key=lambda m: m.start()))


def format_answer(coords: Coords) -> str:
    """The answer text for integer model-frame coordinates.

    >>> format_answer((12, 34, 56, 78))
    '(12, 34), (56, 78)'
    """
    x1, y1, x2, y2 = (int(v) for v in coords)
    return f"({x1}, {y1}), ({x2}, {y2})"


def format_box_tokens(coords: Coords) -> str:
    """A reference box as written inside questions (Qwen2-VL grounding tokens, no spaces).

    >>> format_box_tokens((12, 34, 56, 78))
    '<|box_start|>(12,34),(56,78)<|box_end|>'
    """
    x1, y1, x2, y2 = (int(v) for v in coords)
    return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


def parse_box_tokens(text: str) -> list[IntBox]:
    """Every ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` in ``text``, in order. Never raises.

    >>> parse_box_tokens("a <|box_start|>(1,2),(3,4)<|box_end|> and <|box_start|>(5, 6), (7, 8)<|box_end|>")
    [(1, 2, 3, 4), (5, 6, 7, 8)]
    """
    if not isinstance(text, str):
        return []
    boxes = (_ints(m) for m in _BOX_TOKENS_RE.finditer(text))
    return [b for b in boxes if b is not None]
