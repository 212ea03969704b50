"""Pictures of predictions: ground-truth and predicted boxes on the target image, reasoning below.

Boxes are normalised xyxy (:class:`~univg.core.boxes.Box`) of the image they are drawn on; small images
(the synthetic 56-112 px ones) are enlarged with nearest-neighbour sampling first so that the text
panel stays legible. Colours are fixed so that a picture can be read without a legend and tests can
find the edges: ground truth green, strict prediction red, compatible-only prediction orange.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from univg.core.boxes import Box

GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 0)
COMPAT_COLOR = (255, 165, 0)
MIN_WIDTH = 384  # enlarge smaller images to at least this width (integer factor)
LINE_WIDTH = 3
_PANEL_BG = (255, 255, 255)
_TEXT = (0, 0, 0)


def box_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Normalised box -> integer pixel corners inside a ``width`` x ``height`` image.

    >>> box_pixels(Box(0.25, 0.5, 1.0, 1.0), 200, 100)
    (50, 50, 199, 99)
    """
    x1, y1, x2, y2 = box.as_tuple()
    return (
        min(max(round(x1 * width), 0), width - 1),
        min(max(round(y1 * height), 0), height - 1),
        min(max(round(x2 * width), 0), width - 1),
        min(max(round(y2 * height), 0), height - 1),
    )


def draw_prediction(
    image: Image.Image,
    gt: Box | None = None,
    pred: Box | None = None,
    text: str | None = None,
    pred_color: tuple[int, int, int] = PRED_COLOR,
    line_width: int = LINE_WIDTH,
    wrap: int = 80,
) -> Image.Image:
    """A new RGB picture: ``image`` (enlarged if small) with ``gt`` and ``pred`` boxes, ``text`` below.

    The rectangles' outlines are ``line_width`` pixels wide and start exactly on the box's pixel
    corners (:func:`box_pixels` of the enlarged image), growing inwards.
    """
    img = image.convert("RGB")
    scale = max(1, -(-MIN_WIDTH // img.width)) if img.width < MIN_WIDTH else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for box, color in ((gt, GT_COLOR), (pred, pred_color)):
        if box is not None:
            x1, y1, x2, y2 = box_pixels(box, img.width, img.height)
            draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=color, width=line_width)
    if not text:
        return img
    font = ImageFont.load_default()
    chars = max(20, min(wrap, img.width // 7))
    lines = [ln for para in text.splitlines() for ln in (textwrap.wrap(para, chars) or [""])]
    line_h = 13
    panel = Image.new("RGB", (img.width, line_h * len(lines) + 8), _PANEL_BG)
    pdraw = ImageDraw.Draw(panel)
    for i, line in enumerate(lines):
        pdraw.text((4, 4 + i * line_h), line, fill=_TEXT, font=font)
    out = Image.new("RGB", (img.width, img.height + panel.height), _PANEL_BG)
    out.paste(img, (0, 0))
    out.paste(panel, (0, img.height))
    return out


def caption(record: dict[str, Any]) -> str:
    """The text under a picture: id, task, IoU, reasoning and the answer as written by the model."""
    iou = record.get("iou")
    head = f"{record.get('id', '?')} | {record.get('task', '?')}"
    if iou is not None:
        head += f" | IoU {iou:.2f} (strict), {record.get('iou_compatible', 0.0):.2f} (compatible)"
    parts = [head]
    if record.get("question"):
        parts.append("Q: " + str(record["question"]))
    if record.get("reasoning"):
        parts.append("Reasoning: " + str(record["reasoning"]))
    if record.get("pred_box_px") is not None:
        parts.append(f"Box (pixels of image {record.get('target_index', 0)}): {record['pred_box_px']}")
    elif record.get("completion") is not None:
        parts.append("Completion: " + (" ".join(str(record["completion"]).split())[:400] or "(empty)"))
    return "\n".join(parts)


def record_boxes(record: dict[str, Any], frame: Any) -> tuple[Box | None, Box | None, tuple[int, int, int]]:
    """(gt, pred, pred colour) as normalised boxes from a prediction record's model-frame corners.

    ``frame`` converts model coordinates (``record["frame_size"]`` is the resized target size that
    pixel frames need). The strict parse is drawn red; without one, the compatible parse orange.
    """
    size = record.get("frame_size") or (None, None)
    gt = None if record.get("gt") is None or record.get("no_gt") else frame.from_model(record["gt"], *size)
    if record.get("pred") is not None:
        return gt, frame.from_model(record["pred"], *size), PRED_COLOR
    if record.get("pred_compatible") is not None:
        return gt, frame.from_model(record["pred_compatible"], *size), COMPAT_COLOR
    return gt, None, PRED_COLOR


def save_prediction_picture(
    path: str | os.PathLike, image: Image.Image, record: dict[str, Any], frame: Any
) -> Image.Image:
    """Draw ``record`` (a prediction row) on ``image`` (its target image) and save a PNG at ``path``."""
    gt, pred, color = record_boxes(record, frame)
    picture = draw_prediction(image, gt, pred, caption(record), pred_color=color)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return picture


def safe_name(text: str) -> str:
    """A file-name-safe version of a sample id.

    >>> safe_name("MIG_data-3/a:b")
    'MIG_data-3_a_b'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]


def log_pictures(logger: Any, tag: str, pictures: Sequence[Image.Image], step: int = 0) -> int:
    """Log pictures to TensorBoard (``logger`` a Lightning ``TensorBoardLogger``); returns how many.

    Other loggers are ignored (0): the PNG files are the record that always exists.
    """
    writer = getattr(logger, "experiment", None)
    if writer is None or not hasattr(writer, "add_image"):
        return 0
    for i, pic in enumerate(pictures):
        writer.add_image(f"{tag}/{i}", np.asarray(pic.convert("RGB")), step, dataformats="HWC")
    return len(pictures)
