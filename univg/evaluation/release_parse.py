"""The release's evaluation scorers, reproduced as pure functions (the ``release`` parse column).

univg scores every prediction three ways: ``strict`` (last ``<answer>`` block, our default),
``compatible`` (first box anywhere) and ``release``: exactly what the UniVG-R1 release's scripts
would have counted, so that its published numbers can be reproduced beside ours.

- MIG-Bench (``eval/MIG_bench``): ``extract_bbox`` tries six patterns in a fixed order and takes the
  first match of the first pattern that matches anything: ``(x1, y1), (x2, y2)`` integer pairs
  (no space allowed after ``(`` or before a comma), ``[f, f, f, f]`` floats, ``(f,f),(f,f)`` floats
  without spaces, ``(f, f, f, f)`` floats, ``[x1, y1, x2, y2]`` integers, ``<box>x1 y1 x2 y2</box>``.
  The values go through ``int()``, so a float form *matches* but fails to convert, and the
  fallback ``[0, 0, 0, 0]`` is scored (IoU 0). Its IoU divides by the union without any guard.
- Zero-shot sets (LISA, LLMSeg, ReasonVOS, ReVOS): the whole decode of prompt + completion (the
  scripts do not trim the prompt) is searched for the first ``( x1 , y1 ) , ( x2 , y2 )`` (spaces
  free), divided by 1000 and compared with the ground truth in [0, 1] (pixels / image size) by an
  IoU with ``1e-6`` added to the union; no match scores 0.

``None`` here means "the release found no usable box" (it scores 0 either way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

IntBox = tuple[int, int, int, int]
ReleaseScorer = Literal["mig", "zero_shot"]

# The release's patterns, verbatim and in its order (``\d`` as written there, not ASCII-only).
_MIG_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"\((\d+),\s*(\d+)\),\s*\((\d+),\s*(\d+)\)",
        r"\[(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+)\]",
        r"\((\d+\.\d+),(\d+\.\d+)\),\((\d+\.\d+),(\d+\.\d+)\)",
        r"\((\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+)\)",
        r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]",
        r"<box>(\d+)\s+(\d+)\s+(\d+)\s+(\d+)</box>",
    )
)
_ZERO_SHOT_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")

#: Benchmark name prefixes scored by the zero-shot scripts; everything else by MIG's extract_bbox.
ZERO_SHOT_BENCHMARKS: tuple[str, ...] = ("lisa", "llmseg", "reasonvos", "revos", "vos")


def release_scorer(benchmark: str | None) -> ReleaseScorer:
    """Which release script scores ``benchmark``: "zero_shot" for LISA/LLMSeg/VOS sets, else "mig".

    >>> release_scorer("lisa/test"), release_scorer("revos"), release_scorer("mig_bench_revised")
    ('zero_shot', 'zero_shot', 'mig')
    """
    name = (benchmark or "").lower()
    return "zero_shot" if name.split("/")[0] in ZERO_SHOT_BENCHMARKS else "mig"


def _to_ints(groups: Sequence[str]) -> IntBox | None:
    try:
        return tuple(int(g) for g in groups)  # type: ignore[return-value]
    except ValueError:  # "0.25": the release's int() fails and it falls back to [0, 0, 0, 0]
        return None


def release_mig_parse(text: str) -> IntBox | None:
    """The box MIG-Bench's ``extract_bbox`` scores, or ``None`` where it falls back to [0, 0, 0, 0].

    The first pattern (in the release's order) that matches anywhere wins, and its first match:

    >>> release_mig_parse("<think>it is (1,2), (3,4)</think><answer>(10, 20), (30, 40)</answer>")
    (1, 2, 3, 4)
    >>> release_mig_parse("<answer>( 10, 20), (30, 40)</answer>") is None  # no space after "(" allowed
    True
    >>> release_mig_parse("[10, 20, 30, 40] then (5,6),(7,8)")  # pairs beat lists wherever they are
    (5, 6, 7, 8)
    >>> release_mig_parse("[0.1, 0.2, 0.3, 0.4] [10, 20, 30, 40]") is None  # a float form matches, int() fails
    True
    >>> release_mig_parse("<box>1 2 3 4</box>"), release_mig_parse("nothing") is None
    ((1, 2, 3, 4), True)
    """
    if not isinstance(text, str):
        return None
    for pattern in _MIG_PATTERNS:
        match = pattern.search(text)
        if match is not None:
            return _to_ints(match.groups())
    return None


def release_zero_shot_parse(prompt: str, completion: str) -> IntBox | None:
    """The first ``(x1, y1), (x2, y2)`` in prompt + completion (spaces free), as the zero-shot
    scripts search the untrimmed decode; ``None`` where they score 0.

    >>> release_zero_shot_parse("user\\nfind the cup", "<think>(1, 2),( 3 ,4 )</think><answer>(5, 6), (7, 8)</answer>")
    (1, 2, 3, 4)
    >>> release_zero_shot_parse("user\\nthe box (9, 9), (99, 99) is wrong", "<answer>(5, 6), (7, 8)</answer>")
    (9, 9, 99, 99)
    >>> release_zero_shot_parse("user", "[5, 6, 7, 8] or (0.5, 0.6), (0.7, 0.8)") is None
    True
    """
    match = _ZERO_SHOT_PAIR.search(f"{prompt}{completion}")
    return _to_ints(match.groups()) if match is not None else None


def release_mig_iou(gt: Sequence[float], pred: Sequence[float] | None) -> float:
    """MIG-Bench's ``calculate_iou(gt, pred)`` on raw values (the release gives the model's 0-1000
    integers and the revised file's boxes). No swapping or clamping; a zero union, where the
    release would divide by zero, gives 0.

    >>> release_mig_iou([0, 0, 10, 10], [5, 0, 15, 10])
    0.3333333333333333
    >>> release_mig_iou([0, 0, 10, 10], None), release_mig_iou([0, 0, 10, 10], [10, 10, 0, 0])
    (0.0, 0.0)
    """
    p = list(pred) if pred is not None else [0.0, 0.0, 0.0, 0.0]
    x_left, y_top = max(gt[0], p[0]), max(gt[1], p[1])
    x_right, y_bottom = min(gt[2], p[2]), min(gt[3], p[3])
    if x_right < x_left or y_bottom < y_top:
        return 0.0
    inter = (x_right - x_left) * (y_bottom - y_top)
    union = (gt[2] - gt[0]) * (gt[3] - gt[1]) + (p[2] - p[0]) * (p[3] - p[1]) - inter
    return inter / union if union != 0 else 0.0


def release_zero_shot_iou(pred: Sequence[float] | None, gt: Sequence[float]) -> float:
    """The zero-shot scripts' ``compute_iou(pred / 1000, gt)``: boxes in [0, 1], ``1e-6`` added to
    the union; ``pred`` in the model's 0-1000 frame (``None``: the script's exception path, 0).

    >>> round(release_zero_shot_iou((0, 0, 500, 500), (0.0, 0.0, 0.5, 0.5)), 6)
    0.999996
    >>> release_zero_shot_iou(None, (0.0, 0.0, 0.5, 0.5))
    0.0
    """
    if pred is None:
        return 0.0
    a = [v / 1000 for v in pred]
    x_a, y_a = max(a[0], gt[0]), max(a[1], gt[1])
    x_b, y_b = min(a[2], gt[2]), min(a[3], gt[3])
    inter = max(0.0, x_b - x_a) * max(0.0, y_b - y_a)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter + 1e-6
    if union == 0:  # the script's exception handler appends 0
        return 0.0
    return max(inter / union, 0.0)  # an inverted prediction gives -0.0 there: it counts as 0


def release_fields(
    scorer: str,
    completion: str,
    prompt: str,
    gt_model: Sequence[float] | None,
    gt_normalised: Sequence[float] | None,
) -> dict[str, Any]:
    """``pred_release`` / ``iou_release`` of one prediction, as the release's script would score it.

    ``scorer`` is "mig" (``extract_bbox`` on the completion, IoU on raw model-frame values) or
    "zero_shot" (first pair in prompt + completion, IoU of ``pred / 1000`` with the ground truth
    in [0, 1]). Without ground truth the IoU is ``None``.

    >>> release_fields("mig", "<think>(1,2),(3,4)</think><answer>(10, 20), (30, 40)</answer>", "",
    ...     [10.0, 20.0, 30.0, 40.0], [0.01, 0.02, 0.03, 0.04])
    {'pred_release': [1, 2, 3, 4], 'iou_release': 0.0}
    """
    if scorer == "zero_shot":
        pred = release_zero_shot_parse(prompt, completion)
        iou = release_zero_shot_iou(pred, gt_normalised) if gt_normalised is not None else None
    else:
        pred = release_mig_parse(completion)
        iou = release_mig_iou(gt_model, pred) if gt_model is not None else None
    return {"pred_release": list(pred) if pred is not None else None, "iou_release": iou}
