"""The release's own training rewards, for runs that must reproduce it (``rewards:
{accuracy_release: 1.0, format_release: 1.0}`` with ``miou_reward: accuracy_release``).

They score a completion as the release's Qwen module did (``format_reward_rec`` and ``iou_reward``
in ``vlm_modules/qwen_module.py``), with one exception: the answer form ("think" or "box") is
decided per sample from ``answer_formats``, where the release decided it per batch from the first
sample's image path (docs/release_parity.md, row 6).

Text. The release decoded completions with ``skip_special_tokens=True``; univg's rollout keeps
them. So the Qwen2-VL special tokens (``<|box_start|>``, ``<|im_end|>``, ...) are removed first,
and nothing else is: no whitespace is trimmed. Patterns use Python's default (Unicode) ``\\d`` and
``\\s``, as the release's did.

- format, "think": a *search* for ``<think>.*?</think>\\s*<answer>(x1, y1), (x2, y2)</answer>$``
  (DOTALL). Text before ``<think>`` is allowed. ``$`` matches at the very end or before one final
  newline, so ``"...</answer>\\n"`` scores 1 but ``"...</answer> "`` and ``"...</answer>\\n\\n"``
  score 0. Each ``(`` must be followed by a digit (no space).
- format, "box": a bare ``(x1, y1), (x2, y2)`` anywhere.
- accuracy: the first ``(x1, y1), (x2, y2)`` of the **first** ``<answer>`` block ("think") or of
  the whole text ("box"), read as integers; 0 when there is none.

IoU (:func:`release_iou`). The predicted integers are compared with the ground-truth numbers as
they are, in the model's frame (for Qwen2-VL, 0-1000): ``frame`` and ``sizes`` are accepted and not
used. Corners are never swapped and nothing is clamped. Areas are ``(x2 - x1) * (y2 - y1)``. The
overlap counts only when it is longer than one unit on both axes. A zero union, a number too long
to read or an overflow scores 0. Hence an inverted box scores 0 and a box running past the image
is not cut back to it.

Worked examples against the ground truth (0, 0, 100, 100), area 10000:

- (0, 0), (100, 100): overlap 100 x 100, union 10000 + 10000 - 10000: IoU 1;
- (100, 100), (0, 0) (inverted): no overlap counted: 0;
- (50, 0), (150, 100): overlap 50 x 100 = 5000, union 10000 + 10000 - 5000 = 15000: 1/3;
- (99, 0), (200, 100): overlap 1 x 100, one unit wide, not counted: 0;
- (0, 0), (200, 100), past the ground truth: overlap 10000, union 20000 + 10000 - 10000: 0.5.

>>> gt = [(0, 0, 100, 100)]
>>> [accuracy_release([f"<think>.</think><answer>{b}</answer>"], gt)[0] for b in
...  ["(0, 0), (100, 100)", "(100, 100), (0, 0)", "(50, 0), (150, 100)", "(99, 0), (200, 100)",
...   "(0, 0), (200, 100)"]]
[1.0, 0.0, 0.3333333333333333, 0.0, 0.5]
>>> ok = "<think>a</think><answer>(0, 0), (100, 100)</answer>"
>>> format_release(["preamble " + ok, ok + "\\n", ok + " ", ok + "\\n\\n", ok + "<|im_end|>"])
[1.0, 1.0, 0.0, 0.0, 1.0]
>>> from univg.rl.rewards import format_reward
>>> format_reward(["preamble " + ok, ok + " "])
[0.0, 1.0]
>>> two = ["<think>.</think><answer>(0, 0), (100, 100)</answer><answer>(0, 0), (50, 50)</answer>"]
>>> accuracy_release(two, gt), accuracy_release(["<answer>( 0, 0), (100, 100)</answer>"], gt)
([1.0], [0.0])
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from univg.core.boxes import Frame
from univg.model.tokenizer import SPECIAL_TOKENS
from univg.rl.reward_args import answer_forms, check_lengths

#: "think" format: searched, DOTALL, anchored by ``$`` alone (Unicode classes, as the release).
FORMAT_SEARCH_RE = re.compile(
    r"<think>.*?</think>\s*<answer>\(\d+,\s*\d+\),\s*\(\d+,\s*\d+\)</answer>$", re.DOTALL
)
#: "box" format, and the box the accuracy reward reads.
PAIR_RE = re.compile(r"\((\d+),\s*(\d+)\),\s*\((\d+),\s*(\d+)\)")
_FIRST_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def as_decoded_by_release(text: str) -> str:
    """``text`` without Qwen2-VL's special tokens, as ``skip_special_tokens=True`` decodes it.

    >>> as_decoded_by_release("<answer><|box_start|>(1,2),(3,4)<|box_end|></answer> \\n")
    '<answer>(1,2),(3,4)</answer> \\n'
    """
    return _SPECIAL_RE.sub("", text)


def release_iou(pred: Sequence[Any], gt: Sequence[Any]) -> float:
    """The release's IoU of two ``(x1, y1, x2, y2)`` boxes in one frame (see the module docstring).

    >>> release_iou((0, 0, 10, 10), (5, 0, 15, 10))  # overlap 5 x 10 = 50, union 100 + 100 - 50
    0.3333333333333333
    >>> release_iou((10, 10, 0, 0), (0, 0, 10, 10)), release_iou((0, 0, 11, 10), (10, 0, 20, 10))
    (0.0, 0.0)
    """
    try:
        px1, py1, px2, py2 = pred
        gx1, gy1, gx2, gy2 = gt
        if not all(math.isfinite(v) for v in (*pred, *gt)):
            return 0.0
        side_x = min(px2, gx2) - max(px1, gx1)
        side_y = min(py2, gy2) - max(py1, gy1)
        inter = side_x * side_y if side_x > 1 and side_y > 1 else 0
        union = (px2 - px1) * (py2 - py1) + (gx2 - gx1) * (gy2 - gy1) - inter
        return float(inter) / union + 0.0  # "+ 0.0": -0.0 (negative union) reads as 0.0
    except (ArithmeticError, TypeError, ValueError):  # zero union, overflow, not 4 numbers
        return 0.0


def format_release(
    completions: Sequence[str], answer_formats: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """The release's format reward (see the module docstring); non-strings score 0."""
    out = []
    for text, form in zip(completions, answer_forms(answer_formats, len(completions))):
        if not isinstance(text, str):
            out.append(0.0)
            continue
        pattern = PAIR_RE if form == "box" else FORMAT_SEARCH_RE
        out.append(1.0 if pattern.search(as_decoded_by_release(text)) else 0.0)
    return out


def accuracy_release(
    completions: Sequence[str],
    boxes: Sequence[Sequence[float]],
    frame: str | Frame = "qwen2-vl",
    sizes: Sequence[tuple[int, int]] | None = None,
    answer_formats: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[float]:
    """The release's accuracy reward: :func:`release_iou` of the first box of the first
    ``<answer>`` block (of the whole text for a "box" prompt) with ``boxes`` (model frame), 0 when
    there is none or the text is not a string. ``frame`` and ``sizes`` are not used."""
    check_lengths(completions, boxes)
    scores = []
    for text, gt, form in zip(completions, boxes, answer_forms(answer_formats, len(completions))):
        region = as_decoded_by_release(text) if isinstance(text, str) else ""
        if form == "think":
            block = _FIRST_ANSWER_RE.search(region)
            region = block.group(1) if block else ""
        match = PAIR_RE.search(region)
        if match is None:
            scores.append(0.0)
            continue
        try:
            pred = [int(g) for g in match.groups()]
        except ValueError:  # more digits than int() reads
            scores.append(0.0)
            continue
        target = gt.tolist() if hasattr(gt, "tolist") else list(gt)
        scores.append(release_iou(pred, target))
    return scores
