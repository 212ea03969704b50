"""Rewards for grounding completions: pure functions, registered by name (docs/design.md section 3).

Every reward has TRL's calling convention, ``fn(completions, **kwargs) -> list[float]`` with one
float per completion, so the same functions serve our trainer, TRL's ``GRPOTrainer`` (dataset
columns arrive as keyword arguments) and evaluation. Keyword arguments a reward does not use are
ignored. Ground-truth ``boxes`` are in the backbone's model frame (``frame``, default "qwen2-vl";
the pixel frame also needs ``sizes``, one ``(width, height)`` per completion).

Per-sample answer forms (``answer_formats``, one per completion, "think" or "box";
:func:`univg.core.prompts.answer_format`): a prompt that asks for the box only (single-image RefCOCO)
is answered with a bare ``(x1, y1), (x2, y2)``, so for it the format reward accepts such a box
anywhere and the accuracy reward parses the first box of the whole completion, as the release
scored its COCO prompts. ``None`` means "think" for every completion.

A reward never raises on bad model output: unparsable, truncated, NaN, negative, out-of-range or
inverted boxes score 0 or are repaired (swap, clamp) and counted; see :func:`reward_stats`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from univg.core.boxes import BoxFixes, Frame, box_iou, get_frame, normalise_coords, parse_answer
from univg.core.errors import RewardError, error_summary
from univg.rl.reward_args import answer_forms, check_lengths
from univg.rl.rewards_release import accuracy_release, format_release

#: A reward: ``fn(completions, **kwargs) -> list[float]`` (one score per completion).
RewardFn = Callable[..., list[float]]

#: Registered rewards by name; YAML lists names and weights (see :func:`compute_rewards`).
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering ``fn`` under ``name``; a name may be registered once."""

    def decorator(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered (by {REWARDS[name].__qualname__})")
        REWARDS[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    """The reward registered under ``name``; ValueError naming the registered ones otherwise."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {sorted(REWARDS)}") from None


def _sizes(sizes: Sequence[tuple[int, int]] | None, n: int) -> Sequence[tuple[int | None, int | None]]:
    if sizes is None:
        return [(None, None)] * n
    if len(sizes) != n:
        raise ValueError(f"rewards: got {len(sizes)} image sizes for {n} completions")
    return sizes


@register_reward("accuracy")
def iou_reward(
    completions: Sequence[str],
    boxes: Sequence[Sequence[float]],
    strict: bool = True,
    frame: str | Frame = "qwen2-vl",
    sizes: Sequence[tuple[int, int]] | None = None,
    fixes: BoxFixes | None = None,
    answer_formats: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[float]:
    """``r_acc``: IoU of the parsed answer with the ground truth, in [0, 1]; unparsable -> 0.

    A "box" completion (``answer_formats``) is parsed for the first box anywhere in its text.

    ``boxes``: ``[N]`` ground-truth boxes in the model frame (e.g. ints in [0, 1000)).
    Both boxes are mapped to normalised coordinates (IoU does not change under the frame's
    per-axis scaling; only clamping into the image does). Repairs of the *predicted* box
    (swapped corners, clamps, NaN, empty) are added to ``fixes`` when given.

    >>> iou_reward(["<think>.</think><answer>(0, 0), (100, 100)</answer>",
    ...             "<answer>(100, 100), (0, 0)</answer>",   # inverted: swapped
    ...             "<answer>(0, 0), (100"],                 # truncated: 0
    ...            [(0, 0, 100, 200)] * 3)
    [0.5, 0.5, 0.0]
    """
    check_lengths(completions, boxes)
    frame = get_frame(frame)
    scores = []
    forms = answer_forms(answer_formats, len(completions))
    for text, gt, (w, h), form in zip(completions, boxes, _sizes(sizes, len(completions)), forms):
        coords = parse_answer(text, strict=strict and form == "think")
        pred = normalise_coords(coords, frame, fixes, w, h) if coords is not None else None
        target = normalise_coords(gt, frame, None, w, h)
        scores.append(box_iou(pred, target) if pred is not None and target is not None else 0.0)
    return scores


# The pattern of docs/design.md section 3 verbatim; re.ASCII keeps \d to 0-9 so the format reward and the parser agree.
FORMAT_RE = re.compile(
    r"^<think>.*?</think>\s*<answer>\(\d+,\s*\d+\),\s*\(\d+,\s*\d+\)</answer>$", re.DOTALL | re.ASCII
)
# Removed from the end before matching, so the score does not depend on whether the caller decoded
# with skip_special_tokens: the chat end marker, the pad/eos token and trailing whitespace.
#: The box-only answer of a "box" prompt: a bare box anywhere (the release's COCO format check).
BOX_RE = re.compile(r"\(\d+,\s*\d+\),\s*\(\d+,\s*\d+\)", re.ASCII)
_TRAILING_RE = re.compile(r"(?:\s|<\|im_end\|>|<\|endoftext\|>)+\Z")


@register_reward("format")
def format_reward(
    completions: Sequence[str], answer_formats: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """``r_fmt``: 1 iff the whole completion is ``<think>...</think><answer>(x1, y1), (x2, y2)</answer>``.

    Matches ``^<think>.*?</think>\\s*<answer>\\(\\d+,\\s*\\d+\\),\\s*\\(\\d+,\\s*\\d+\\)</answer>$``
    (DOTALL, ASCII digits) against the whole text, after removing trailing whitespace and trailing
    ``<|im_end|>`` / ``<|endoftext|>`` markers (callers may or may not strip them). Leading text,
    text after ``</answer>``, spaces inside the parentheses or a negative number score 0.
    Non-string items score 0. A "box" completion (``answer_formats``) scores 1 iff a bare
    ``(x1, y1), (x2, y2)`` appears anywhere in it.

    >>> format_reward(["<think>a</think>\\n<answer>(1, 2),(3, 4)</answer><|im_end|>\\n",
    ...                "<answer>(1, 2), (3, 4)</answer>",
    ...                "<think>a</think><answer>( 1, 2), (3, 4)</answer>"])
    [1.0, 0.0, 0.0]
    >>> format_reward(["(1, 2), (3, 4)", "(1, 2), (3, 4)"], answer_formats=["box", "think"])
    [1.0, 0.0]
    """
    scores = []
    for text, form in zip(completions, answer_forms(answer_formats, len(completions))):
        if not isinstance(text, str):
            scores.append(0.0)
            continue
        if form == "box":
            scores.append(1.0 if BOX_RE.search(text) else 0.0)
            continue
        # fullmatch, not match: "$" alone would also accept a trailing newline.
        stripped = _TRAILING_RE.sub("", text)
        scores.append(1.0 if FORMAT_RE.fullmatch(stripped) else 0.0)
    return scores


def compute_rewards(
    specs: Mapping[str, float],
    completions: Sequence[str],
    boxes: Sequence[Sequence[float]],
    functions: Mapping[str, RewardFn] | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Each named reward as a float32 ``[N]`` tensor, plus ``"total"`` = sum of weight * reward.

    ``functions`` supplies rewards by name beside the registry (plug-ins,
    :func:`univg.rl.reward_plugins.resolve_rewards`).

    ``specs`` maps reward names to weights, e.g. ``{"accuracy": 1.0, "format": 1.0}`` (docs/design.md section 3:
    ``r = r_acc + r_fmt``). Extra keyword arguments (``strict``, ``frame``, ``sizes``) are passed to
    every reward.

    >>> out = compute_rewards({"accuracy": 1.0, "format": 0.5},
    ...                       ["<think>x</think><answer>(0, 0), (100, 100)</answer>"], [(0, 0, 100, 200)])
    >>> {k: v.tolist() for k, v in out.items()}
    {'accuracy': [0.5], 'format': [1.0], 'total': [1.0]}
    """
    if not specs:
        raise ValueError(f"compute_rewards: no rewards requested; registered rewards: {sorted(REWARDS)}")
    if "total" in specs:
        raise ValueError("compute_rewards: 'total' is the weighted sum, not a reward name")
    check_lengths(completions, boxes)
    out: dict[str, torch.Tensor] = {}
    total = torch.zeros(len(completions), dtype=torch.float32)  # [N]
    for name, weight in specs.items():
        fn = functions[name] if functions is not None and name in functions else get_reward(name)
        try:
            scores = list(fn(completions, boxes=boxes, **kwargs))
        except Exception as err:  # a plug-in's own bug or bad input: name the reward that raised
            raise RewardError(f"reward {name!r} raised {error_summary(err)}") from err
        if len(scores) != len(completions):
            raise RewardError(
                f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions"
            )
        try:
            out[name] = torch.tensor([float(v) for v in scores], dtype=torch.float32)  # [N]
        except (TypeError, ValueError):
            raise RewardError(f"reward {name!r} returned a score that is not a number: {scores}") from None
        if not torch.isfinite(out[name]).all():
            raise RewardError(f"reward {name!r} returned a non-finite score: {scores}")
        total = total + float(weight) * out[name]
    out["total"] = total
    return out


def reward_stats(
    completions: Sequence[str],
    boxes: Sequence[Sequence[float]],
    strict: bool = True,
    frame: str | Frame = "qwen2-vl",
    sizes: Sequence[tuple[int, int]] | None = None,
    answer_formats: Sequence[str] | None = None,
) -> dict[str, float]:
    """Counts for logging: ``unparsable`` answers and repaired predicted boxes (:class:`BoxFixes`).

    >>> reward_stats(["no box", "<answer>(9, 9), (1, 1)</answer>", "<answer>(-5, 0), (10, 10)</answer>"],
    ...              [(0, 0, 10, 10)] * 3)
    {'unparsable': 1.0, 'swapped': 1.0, 'clamped': 1.0, 'degenerate': 0.0, 'nan': 0.0}
    """
    fixes = BoxFixes()
    iou_reward(completions, boxes, strict, frame, sizes, fixes, answer_formats)
    forms = answer_forms(answer_formats, len(completions))
    unparsable = sum(
        parse_answer(text, strict=strict and form == "think") is None
        for text, form in zip(completions, forms)
    )
    return {"unparsable": float(unparsable), **{k: float(v) for k, v in fixes.as_dict().items()}}


# The release's own training rewards (:mod:`univg.rl.rewards_release`), for runs that reproduce it.
register_reward("format_release")(format_release)
register_reward("accuracy_release")(accuracy_release)
