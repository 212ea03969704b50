"""The release's own training rewards, for runs that must reproduce it (``rewards:
{accuracy_release: 1.0, format_release: 1.0}`` with ``miou_reward: accuracy_release``).

Where they differ from :func:`univg.rewards.format_reward` / :func:`univg.rewards.iou_reward` on
think/answer prompts (the box-only rule of single-image COCO prompts is the same in both):

- format: the release *searches* ``<think>.*?</think>\\s*<answer>(x1, y1), (x2, y2)</answer>$``
  (anchored at the end only), so text before ``<think>`` still earns the format reward;
- accuracy: the release reads the **first** ``<answer>`` block (ours: the last) and needs
  ``(\\d+`` right after each parenthesis (no space; ours allows spaces).

Boxes are then scored by the same IoU (mapped out of the model frame, clamped into the image).

>>> t = ["preamble <think>a</think><answer>(0, 0), (100, 100)</answer>"]
>>> format_release(t), format_release(t, answer_formats=["think"])
([1.0], [1.0])
>>> from univg.rewards import format_reward
>>> format_reward(t)
[0.0]
>>> two = ["<think>.</think><answer>(0, 0), (100, 100)</answer><answer>(0, 0), (50, 50)</answer>"]
>>> accuracy_release(two, [(0, 0, 100, 100)]), accuracy_release(["<answer>( 0, 0), (100, 100)</answer>"], [(0, 0, 100, 100)])
([1.0], [0.0])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from univg.boxes import Frame, box_iou, get_frame, normalise_coords
from univg.rewards import _TRAILING_RE, BOX_RE, _forms, _sizes, register_reward

#: The release's format pattern: searched, anchored at the end only.
FORMAT_SEARCH_RE = re.compile(
    r"<think>.*?</think>\s*<answer>\(\d+,\s*\d+\),\s*\(\d+,\s*\d+\)</answer>$", re.DOTALL | re.ASCII
)
_FIRST_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PAIR_RE = re.compile(r"\((\d+),\s*(\d+)\),\s*\((\d+),\s*(\d+)\)", re.ASCII)


@register_reward("format_release")
def format_release(
    completions: Sequence[str], answer_formats: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """The release's format reward (see the module docstring); non-strings score 0."""
    out = []
    for text, form in zip(completions, _forms(answer_formats, len(completions))):
        if not isinstance(text, str):
            out.append(0.0)
        elif form == "box":
            out.append(1.0 if BOX_RE.search(text) else 0.0)
        else:
            out.append(1.0 if FORMAT_SEARCH_RE.search(_TRAILING_RE.sub("", text)) else 0.0)
    return out


@register_reward("accuracy_release")
def accuracy_release(
    completions: Sequence[str],
    boxes: Sequence[Sequence[float]],
    frame: str | Frame = "qwen2-vl",
    sizes: Sequence[tuple[int, int]] | None = None,
    answer_formats: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[float]:
    """The release's accuracy reward: IoU of the first box of the first ``<answer>`` block (of the
    whole completion for a "box" prompt), 0 when there is none."""
    frame = get_frame(frame)
    forms = _forms(answer_formats, len(completions))
    scores = []
    for text, gt, (w, h), form in zip(completions, boxes, _sizes(sizes, len(completions)), forms):
        region = text if isinstance(text, str) else ""
        if form == "think":
            block = _FIRST_ANSWER_RE.search(region)
            region = block.group(1) if block else ""
        match = _PAIR_RE.search(region)
        pred = normalise_coords([int(g) for g in match.groups()], frame, None, w, h) if match else None
        target = normalise_coords(gt, frame, None, w, h)
        scores.append(box_iou(pred, target) if pred is not None and target is not None else 0.0)
    return scores
