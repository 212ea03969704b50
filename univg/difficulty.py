"""Difficulty weighting for GRPO-Difficulty (docs/design.md section 4, paper Table 5).

A prompt's difficulty is its group's mean IoU, ``mIoU_q = mean_g r_acc``; harder prompts (low
mIoU) get a larger weight ``w_q = phi(mIoU_q)`` on their policy-gradient term. The weight is a
constant: it carries no gradient.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from univg.grpo import group_miou

#: The difficulty weights (paper Table 5); a typed config knob, so a typo fails at parse time.
PhiName = Literal["none", "exp", "square", "neglog"]
PHI_NAMES: tuple[str, ...] = get_args(PhiName)


def phi(name: str, miou: torch.Tensor, eps: float = 0.02) -> torch.Tensor:
    """Difficulty weight for each mIoU, same shape as ``miou``, detached, float.

    ``none`` -> 1 (plain GRPO); ``exp`` -> exp(1 - m), in [1, e] (paper default); ``square`` ->
    (1 - m)^2, in [0, 1] (a solved group gets 0); ``neglog`` -> -log(m + eps), eps 0.02 as the
    release. ``miou`` is first clamped into [0, 1] and NaN is read as 0 (the hardest case), so a
    weight is always finite.

    >>> m = torch.tensor([0.0, 0.5, 1.0])
    >>> phi("exp", m)
    tensor([2.7183, 1.6487, 1.0000])
    >>> phi("square", m)
    tensor([1.0000, 0.2500, 0.0000])
    >>> phi("neglog", m)
    tensor([ 3.9120,  0.6539, -0.0198])
    """
    if name not in PHI_NAMES:
        raise ValueError(f"unknown phi {name!r}; choose one of {PHI_NAMES}")
    m = torch.nan_to_num(miou.detach().float(), nan=0.0).clamp(0.0, 1.0)
    if name == "none":
        return torch.ones_like(m)
    if name == "exp":
        return torch.exp(1.0 - m)
    if name == "square":
        return (1.0 - m) ** 2
    return -torch.log(m + eps)


def normalise_weights(w: torch.Tensor) -> torch.Tensor:
    """``w / mean(w)`` so the weights average 1 over the batch (keeps the effective lr of plain GRPO).

    All-zero weights (every group solved under ``square``) are returned unchanged: there is no
    policy signal to rescale, and dividing would give NaN.

    >>> normalise_weights(torch.tensor([1.0, 3.0]))
    tensor([0.5000, 1.5000])
    >>> normalise_weights(torch.zeros(2))
    tensor([0., 0.])
    """
    w = w.detach()
    mean = w.mean()
    return w / mean if mean > 0 else w


def difficulty_weights(
    acc_rewards: torch.Tensor,
    group_size: int,
    name: str,
    eps: float = 0.02,
    normalise: bool = False,
) -> torch.Tensor:
    """Per-completion weights ``[N]`` from accuracy rewards ``[N]`` laid out prompt by prompt.

    mIoU and phi are computed per group of ``group_size`` completions (never over the micro-batch),
    optionally normalised to mean 1 over the groups, then repeated for each completion.

    >>> difficulty_weights(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2, "exp")
    tensor([1.0000, 1.0000, 2.7183, 2.7183])
    """
    w = phi(name, group_miou(acc_rewards, group_size), eps)  # [num_prompts]
    if normalise:
        w = normalise_weights(w)
    return w.repeat_interleave(group_size)  # [N]


def difficulty_shares(miou: torch.Tensor) -> dict[str, float]:
    """Share of groups with mIoU < 0.3, in [0.3, 0.7] and > 0.7 (paper Figure 3), for logging.

    >>> difficulty_shares(torch.tensor([0.1, 0.3, 0.5, 0.9]))
    {'miou_lt_0.3': 0.25, 'miou_0.3_0.7': 0.5, 'miou_gt_0.7': 0.25}
    """
    m = torch.nan_to_num(miou.detach().float(), nan=0.0)
    n = max(m.numel(), 1)
    low = int((m < 0.3).sum())
    high = int((m > 0.7).sum())
    return {"miou_lt_0.3": low / n, "miou_0.3_0.7": (m.numel() - low - high) / n, "miou_gt_0.7": high / n}
