"""Difficulty weighting for GRPO-Difficulty (docs/design.md section 4, paper Table 5).

A prompt's difficulty is its group's mean IoU, ``mIoU_q = mean_g r_acc``; harder prompts (low
mIoU) get a larger weight ``w_q = phi(mIoU_q)`` on their policy-gradient term. The weight is a
constant: it carries no gradient.

The weights the loss uses come from two calls, in this order: :func:`group_weights` once per scored
micro-batch (mIoU per group, the groups kept, phi of the kept ones), then :func:`step_weights` once
per optimiser step (``normalize_phi``: divided by their mean over the whole step, every process).
What :func:`step_weights` returns is what the loss multiplies and what ``difficulty/phi_mean`` logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from univg.rl.groups import grouped

#: The difficulty weights (paper Table 5, plus the release's "power"); a typed config knob, so a
#: typo fails at parse time.
PhiName = Literal["none", "exp", "square", "neglog", "power"]
PHI_NAMES: tuple[str, ...] = get_args(PhiName)

#: ``power``: the release's weight ``(POWER_OFFSET - m) ** POWER_EXPONENT``. The release's trainer
#: (``miou_adjust_math: power``, its default) fixes the offset at 1.05 and reads the exponent from
#: ``miou_weight``, 1 unless set (its run script does not set it).
POWER_OFFSET = 1.05
POWER_EXPONENT = 1.0


def group_miou(acc_rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``mIoU_q = mean_g r_acc`` per prompt, ``[N]`` -> ``[num_prompts]``; accuracy reward only.

    Always per group, whatever the batch size (the release averaged a whole micro-batch).

    >>> group_miou(torch.tensor([0.2, 0.4, 1.0, 0.0]), group_size=2)
    tensor([0.3000, 0.5000])
    """
    return grouped(acc_rewards, group_size).mean(dim=1)


def phi(name: str, miou: torch.Tensor, eps: float = 0.02) -> torch.Tensor:
    """Difficulty weight for each mIoU, same shape as ``miou``, detached, float.

    ``none`` -> 1 (plain GRPO); ``exp`` -> exp(1 - m), in [1, e] (paper default); ``square`` ->
    (1 - m)^2, in [0, 1], the paper's formula (a solved group gets 0); ``neglog`` -> -log(m + eps),
    eps 0.02 as the release; ``power`` -> (1.05 - m)^1, in [0.05, 1.05] (a solved group keeps
    0.05), the release's code: it has no square, its ``power`` weight is (1.05 - m)^p with p = 1
    unless set. ``miou`` is first clamped into [0, 1] and NaN is read as 0 (the hardest case), so a
    weight is always finite.

    >>> m = torch.tensor([0.0, 0.5, 1.0])
    >>> phi("exp", m)
    tensor([2.7183, 1.6487, 1.0000])
    >>> phi("square", m)
    tensor([1.0000, 0.2500, 0.0000])
    >>> phi("neglog", m)
    tensor([ 3.9120,  0.6539, -0.0198])
    >>> phi("power", m)  # 1.05 - 0, 1.05 - 0.5, 1.05 - 1
    tensor([1.0500, 0.5500, 0.0500])
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
    if name == "power":
        return (POWER_OFFSET - m) ** POWER_EXPONENT
    return -torch.log(m + eps)


def normalize_weights(w: torch.Tensor) -> torch.Tensor:
    """``w / mean(w)`` so the weights average 1 over the batch (keeps the effective lr of plain GRPO).

    All-zero weights (every group solved under ``square``) are returned unchanged: there is no
    policy signal to rescale, and dividing would give NaN.

    >>> normalize_weights(torch.tensor([1.0, 3.0]))
    tensor([0.5000, 1.5000])
    >>> normalize_weights(torch.zeros(2))
    tensor([0., 0.])
    """
    w = w.detach()
    mean = w.mean()
    return w / mean if mean > 0 else w


@dataclass(frozen=True)
class GroupWeights:
    """phi of one micro-batch's groups (:func:`group_weights`)."""

    miou: torch.Tensor  # [num_prompts]: every group's mIoU (logged: Figure 3's shares)
    keep: torch.Tensor  # [num_prompts] bool: the groups that enter the loss
    weights: torch.Tensor  # [kept groups]: phi of each kept group (before step normalisation)

    @property
    def kept_miou(self) -> torch.Tensor:
        """[kept groups]: the mIoU each weight was computed from."""
        return self.miou[self.keep]


def group_weights(
    acc_rewards: torch.Tensor,
    group_size: int,
    name: str,
    eps: float = 0.02,
    drop: torch.Tensor | None = None,
) -> GroupWeights:
    """mIoU per group of ``group_size`` completions (never over the micro-batch), the groups kept
    (all but those where ``drop`` [num_prompts] is true) and phi of each kept group.

    >>> gw = group_weights(torch.tensor([1.0, 1.0, 0.0, 0.5]), 2, "exp", drop=torch.tensor([True, False]))
    >>> gw.miou.tolist(), gw.keep.tolist(), gw.weights
    ([1.0, 0.25], [False, True], tensor([2.1170]))
    """
    miou = group_miou(acc_rewards, group_size)  # [P]
    keep = torch.ones_like(miou, dtype=torch.bool) if drop is None else ~drop.to(miou.device)
    return GroupWeights(miou, keep, phi(name, miou, eps)[keep])


def step_weights(
    parts: Sequence[torch.Tensor],
    normalize: bool = False,
    world_sum: Callable[[list[float]], list[float]] | None = None,
) -> list[torch.Tensor]:
    """The weights the loss uses for each micro-batch of one optimiser step (per completion).

    ``parts`` are the scored micro-batches' weights; with ``normalize`` each is divided by the mean
    over the whole step: every micro-batch, and every process when ``world_sum`` sums a list of
    floats over them. All-zero weights are kept as they are (see :func:`normalize_weights`).

    >>> step_weights([torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])], normalize=True)
    [tensor([0.5000, 0.5000]), tensor([1.5000, 1.5000])]
    """
    if not normalize:
        return list(parts)
    flat = torch.cat(list(parts)) if parts else torch.zeros(0)
    local = [float(flat.sum()), float(flat.numel())]
    total, count = world_sum(local) if world_sum is not None else local
    mean = total / count if count else 0.0
    if mean > 0:  # all-zero weights (every group solved under square): nothing to rescale
        return [w / mean for w in parts]
    return list(parts)


def difficulty_weights(
    acc_rewards: torch.Tensor,
    group_size: int,
    name: str,
    eps: float = 0.02,
    normalize: bool = False,
) -> torch.Tensor:
    """Per-completion weights ``[N]`` of one batch from accuracy rewards ``[N]`` laid out prompt by
    prompt: :func:`group_weights` (no group dropped), optionally normalised to mean 1 over the
    groups, repeated for each completion.

    >>> difficulty_weights(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2, "exp")
    tensor([1.0000, 1.0000, 2.7183, 2.7183])
    """
    w = group_weights(acc_rewards, group_size, name, eps).weights  # [num_prompts]
    if normalize:
        w = normalize_weights(w)
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
