"""Checks of the arguments every reward shares, so all rewards fail alike on a caller's mistake.

A length mismatch or an unknown answer form is a bug of the caller (not bad model output): it
raises instead of being zip-truncated or scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def answer_forms(answer_formats: Sequence[str] | None, n: int) -> Sequence[str]:
    """The answer form ("think" or "box") of each of ``n`` completions; ``None`` means "think".

    >>> answer_forms(None, 2), answer_forms(["box", "think"], 2)
    (['think', 'think'], ['box', 'think'])
    """
    if answer_formats is None:
        return ["think"] * n
    if len(answer_formats) != n:
        raise ValueError(f"rewards: got {len(answer_formats)} answer formats for {n} completions")
    bad = sorted(set(answer_formats) - {"think", "box"})
    if bad:
        raise ValueError(f"rewards: unknown answer format(s) {bad}; expected 'think' or 'box'")
    return answer_formats


def check_lengths(completions: Sequence[Any], boxes: Sequence[Any]) -> None:
    """Raise unless there is one ground-truth box per completion."""
    if len(completions) != len(boxes):
        raise ValueError(f"rewards: got {len(completions)} completions but {len(boxes)} ground-truth boxes")


__all__ = ["answer_forms", "check_lengths"]
