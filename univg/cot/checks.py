"""Automatic checks a teacher's reasoning chain must pass before the judge sees it.

In order (the first failure is the reason counted):

1. ``format``: the format reward is 1 (``<think>...</think><answer>(x1, y1), (x2, y2)</answer>``)
   and the reasoning holds no stray ``<think>``/``<answer>`` tag.
2. ``iou``: the answer box (0-1000 Qwen2-VL frame) has IoU >= threshold with the ground truth.
3. ``shallow_reasoning``: with every number removed, the reasoning still has ``min_words`` words,
   so a chain that only restates the coordinates ("The box is (1, 2), (3, 4).") is dropped.
4. ``leaks_answer``: the reasoning says the answer was given ("ground truth", "the provided box",
   ...). The student will not be given it, so such a chain teaches it to cite a source it lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from univg.core.boxes import IntBox, box_iou, parse_answer
from univg.rl.rewards import format_reward

#: Chain-level rejection reasons, in the order they are checked.
CHAIN_REASONS = ("format", "iou", "shallow_reasoning", "leaks_answer")

# The reasoning is what the format regex's lazy ``<think>(.*?)</think>\s*<answer>`` captures; a tag
# left inside it (a nested or repeated think block) would end up verbatim in the SFT target.
_THINK_RE = re.compile(r"<think>(.*?)</think>\s*<answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Letters only (any script): digits, punctuation and coordinate brackets are not words.
_WORD_RE = re.compile(r"[^\W\d_]+")
_LEAK_RE = re.compile(
    r"ground[\s-]?truth"
    r"|\b(?:given|provided|supplied|known|correct)\s+(?:bounding\s+)?(?:box|answer|coordinates)\b"
    r"|\b(?:box|answer|coordinates)\s+(?:is|was|are|were)\s+(?:given|provided|supplied)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ChainCheck:
    """Outcome of :func:`check_chain`. ``box`` is the parsed answer in the 0-1000 frame (or
    ``None``), ``iou`` its IoU with the ground truth (0 when unparsable), ``reasoning`` the text
    inside ``<think>`` (stripped), ``reason`` the first failed check or ``None``."""

    reason: str | None
    iou: float
    box: IntBox | None
    reasoning: str
    words: int

    @property
    def ok(self) -> bool:
        return self.reason is None


def reasoning_words(reasoning: str) -> int:
    """Number of words left once numbers and punctuation are removed.

    >>> reasoning_words("The answer is (120, 40), (300, 220).")
    3
    >>> reasoning_words("Image 2 shows a red car left of the tree.")
    9
    """
    return len(_WORD_RE.findall(reasoning))


def check_chain(text: str, gt: IntBox, iou_threshold: float = 0.5, min_words: int = 15) -> ChainCheck:
    """Run the checks on one teacher reply; ``gt`` is the ground truth in the 0-1000 frame.

    >>> good = ("<think>The task asks for the red car. Image 1 shows a street; the red car is parked "
    ...         "on the left side, next to the tree near the bottom.</think>"
    ...         "<answer>(100, 500), (300, 700)</answer>")
    >>> c = check_chain(good, (100, 500, 300, 700))
    >>> c.ok, c.iou, c.words
    (True, 1.0, 27)
    >>> check_chain(good.replace("(300, 700)", "(900, 990)"), (100, 500, 300, 700)).reason
    'iou'
    >>> check_chain("<think>It is (1, 2), (3, 4).</think><answer>(1, 2), (3, 4)</answer>", (1, 2, 3, 4)).reason
    'shallow_reasoning'
    >>> check_chain("The box is (1, 2), (3, 4).", (1, 2, 3, 4)).reason
    'format'
    >>> check_chain("<think>a</think><think>" + good[7:], (100, 500, 300, 700)).reason
    'format'
    """
    match = _THINK_RE.match(text) if isinstance(text, str) else None
    reasoning = match.group(1).strip() if match else ""
    words = reasoning_words(reasoning)
    box = parse_answer(text, strict=True)
    iou = box_iou(box, gt) if box is not None else 0.0
    if format_reward([text])[0] != 1.0 or any(tag in reasoning for tag in _TAGS):
        reason: str | None = "format"
    elif iou < iou_threshold:
        reason = "iou"
    elif words < min_words:
        reason = "shallow_reasoning"
    elif _LEAK_RE.search(reasoning):
        reason = "leaks_answer"
    else:
        reason = None
    return ChainCheck(reason=reason, iou=iou, box=box, reasoning=reasoning, words=words)
