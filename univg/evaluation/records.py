"""Pieces of a prediction row that do not depend on the module: the reasoning text, the ground
truth in the model's frame (scored in floats), the prompts as the release's zero-shot scripts
decoded them, the fingerprint of the record a row was made for, and a row as ``predict`` prints it."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from PIL import Image

from univg.core.sample_types import GroundingSample

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def extract_reasoning(text: str) -> str | None:
    """The text of the last ``<think>`` block, stripped; ``None`` when there is none.

    >>> extract_reasoning("<think> red is left </think><answer>(1, 2), (3, 4)</answer>")
    'red is left'
    >>> extract_reasoning("(1, 2), (3, 4)") is None
    True
    """
    blocks = _THINK_RE.findall(text)
    return blocks[-1].strip() if blocks else None


def decode_prompts(tokenizer: Any, batch: dict[str, Any]) -> list[str]:
    """Each row's prompt decoded as the release's zero-shot scripts decoded theirs: special tokens
    (image pads, chat markers) skipped, no clean-up of spaces, padding left out."""
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for row, m in zip(batch["input_ids"], batch["attention_mask"])
    ]


def model_frame_gt(box: Any, frame: Any, size: tuple[int, int] | None) -> list[float]:
    """The ground truth in the model's frame, *not* rounded to integers (scored in floats, as the
    release does; the training target's ``int()`` would move it by up to one unit).

    >>> from univg.core.boxes import Box, Qwen2VLFrame, PixelFrame
    >>> model_frame_gt(Box(0.1234, 0.5, 0.75, 0.9999), Qwen2VLFrame(), None)
    [123.4, 500.0, 750.0, 999.9]
    >>> model_frame_gt(Box(0.25, 0.5, 1.0, 1.0), PixelFrame(), (448, 224))
    [112.0, 112.0, 448.0, 224.0]
    """
    scale = getattr(frame, "scale", None)
    if scale is not None:
        sx = sy = float(scale)
    elif size is not None:
        sx, sy = float(size[0]), float(size[1])
    else:
        raise ValueError(f"the {getattr(frame, 'name', frame)} frame needs the resized target image size")
    x1, y1, x2, y2 = box.as_tuple()
    # 6 decimals: a box read from 0-1000 integers comes back as those integers, not 122.99999999
    return [round(x1 * sx, 6), round(y1 * sy, 6), round(x2 * sx, 6), round(y2 * sy, 6)]


def format_prediction(record: dict[str, Any]) -> str:
    """What ``predict`` prints for one answer: reasoning, model-frame answer, pixel box, picture.

    >>> print(format_prediction({"id": "u0", "reasoning": "the red one", "pred": [10, 20, 30, 40],
    ...     "pred_compatible": [10, 20, 30, 40], "target_index": 1, "image_size": [640, 480],
    ...     "pred_box_px": [6, 10, 19, 19], "picture": "p.png"}))
    [univg predict] u0
      reasoning: the red one
      answer (model frame): (10, 20), (30, 40)
      box (pixels of image 1, 640 x 480): [6, 10, 19, 19]
      picture: p.png
    """
    pred = record.get("pred") or record.get("pred_compatible")
    size = record.get("image_size") or ["?", "?"]
    lines = [
        f"[univg predict] {record['id']}",
        f"  reasoning: {record.get('reasoning') or '(none)'}",
        "  answer (model frame): "
        + (
            f"({pred[0]}, {pred[1]}), ({pred[2]}, {pred[3]})"
            if pred
            else f"unparsable: {record.get('completion', '')!r}"
        ),
        f"  box (pixels of image {record.get('target_index', 0)}, {size[0]} x {size[1]}): {record.get('pred_box_px')}",
    ]
    if record.get("picture"):
        lines.append(f"  picture: {record['picture']}")
    return "\n".join(lines)


def _image_key(ref: Any) -> str:
    if isinstance(ref, Image.Image):  # in-memory: its pixels
        return f"pil:{ref.mode}:{ref.size}:{hashlib.sha1(ref.tobytes()).hexdigest()}"
    return str(ref)


def record_fingerprint(sample: GroundingSample) -> str:
    """A short hash of what a prediction row answers: id, task, question, images, target image,
    ground-truth box and reference boxes (to 9 decimals) and the sample's prompt template.

    A resumed evaluation keeps an earlier row only when its fingerprint is the current record's.

    >>> from univg.core.boxes import Box
    >>> s = GroundingSample("a", "t", ["x.jpg"], 0, "where?", Box(0.1, 0.1, 0.5, 0.5))
    >>> t = GroundingSample("a", "t", ["x.jpg"], 0, "where?", Box(0.1, 0.1, 0.5, 0.6))
    >>> record_fingerprint(s) == record_fingerprint(s), record_fingerprint(s) == record_fingerprint(t)
    (True, False)
    """
    parts = {
        "id": sample.id,
        "task": sample.task,
        "question": sample.question,
        "images": [_image_key(r) for r in sample.images],
        "target_index": sample.target_index,
        "box": [round(float(c), 9) for c in sample.box.as_tuple()],
        "ref_boxes": [[round(float(c), 9) for c in b.as_tuple()] for b in sample.ref_boxes],
        "prompt_template": sample.prompt_template,
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
