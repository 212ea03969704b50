"""The loss of one GRPO optimiser step: each scored micro-batch's loss terms, and the statistics
taken over the whole step on every process (the "batch" reward scale, each micro-batch's share of
the loss normalisation)."""

from __future__ import annotations

import math

import torch

from univg.distributed.collectives import world_sum
from univg.modules.grpo.scored import ScoredRollout
from univg.rl.loss import GRPOLossTerms, group_advantages, grpo_loss_terms, loss_share_size


def rollout_loss_terms(
    scored: ScoredRollout,
    logp: torch.Tensor,
    weights: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    *,
    beta: float,
    eps_low: float,
    eps_high: float,
    loss_type: str,
    max_len: int,
    importance_sampling_level: str,
) -> GRPOLossTerms:
    """The GRPO(-Difficulty) loss of one scored micro-batch given the policy's log-probs ``logp``
    [N, C] (``weights`` and ``advantages``, when given, are of the rows that count in the loss,
    :attr:`ScoredRollout.loss_rows`; the rest are :func:`univg.rl.loss.grpo_loss_terms`'s settings).

    Padding rows are scored but enter the loss with weight 0, so their backward still runs."""
    r = scored.rollout
    counted = scored.counted
    if scored.loss_rows is not None and not bool(scored.loss_rows.any()):
        zero = (logp * 0.0).sum()  # the passes of a process that holds only padding
        return GRPOLossTerms(zero, zero.detach(), *(torch.zeros((), device=logp.device),) * 4)
    old, ref = scored.old_logp, scored.ref_logp
    terms = grpo_loss_terms(
        counted(logp),
        None if old is None else counted(old),
        None if ref is None else counted(ref),
        counted(scored.advantages) if advantages is None else advantages,
        counted(scored.weights) if weights is None else weights,
        counted(r.completion_mask),
        beta=beta,
        eps_low=eps_low,
        eps_high=eps_high,
        loss_type=loss_type,
        max_len=max_len,
        importance_sampling_level=importance_sampling_level,
    )
    if scored.loss_rows is not None:  # the padding rows' passes are backpropagated too
        terms.loss = terms.loss + (logp * 0.0).sum()
    return terms


def step_std(totals: torch.Tensor) -> float:
    """Unbiased std of every reward of the optimiser step, over all processes."""
    n, s1, s2 = world_sum(
        [float(totals.numel()), float(totals.double().sum()), float((totals.double() ** 2).sum())]
    )
    if n < 2:
        return 0.0
    return math.sqrt(max(0.0, (s2 - s1 * s1 / n) / (n - 1)))


def step_advantages(buffer: list[ScoredRollout], group_size: int, scale: str) -> list[torch.Tensor | None]:
    """Each micro-batch's advantages under the "batch" scale (of the rows that count in the loss):
    divided by the std of every reward of the optimiser step on every process (TRL's generation
    batch). None (the scored ones) otherwise."""
    if scale != "batch":
        return [None] * len(buffer)
    std = step_std(torch.cat([s.stats["total_all"] for s in buffer]))
    return [
        s.counted(group_advantages(s.rewards["total"], group_size, "batch", batch_std=std)).to(
            s.advantages.device
        )
        for s in buffer
    ]


def step_sizes(buffer: list[ScoredRollout], loss_type: str) -> list[float]:
    """Each micro-batch's size in the loss normalisation: tokens (bnpo, dapo) or sequences (grpo,
    dr_grpo); :func:`univg.rl.loss.loss_share_size`."""
    return [loss_share_size(s.counted(s.rollout.completion_mask), loss_type) for s in buffer]
