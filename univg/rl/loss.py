"""GRPO maths as pure tensor functions (docs/design.md section 4).

Layout convention: a batch holds ``num_prompts`` groups of ``G = group_size`` completions laid out
prompt by prompt, ``[prompt0 x G, prompt1 x G, ...]``, so ``N = num_prompts * G``. Per-token tensors
are ``[N, T]`` over completion tokens only, with ``mask`` 1 on real tokens and 0 on padding.

The loss, per token, with ratio ``r = exp(logp - old_logp)``::

    pg  = -w * min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)
    kl  = exp(ref_logp - logp) - (ref_logp - logp) - 1          # k3 estimator
    loss = reduce(pg + beta * kl)

The difficulty weight ``w`` multiplies the policy-gradient term only, never the KL term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from univg.rl.groups import grouped as _grouped

#: Advantage scales and loss normalisations: typed config knobs (a typo fails at parse time).
ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
#: Where the importance ratio is taken: per token (GRPO) or per sequence (GSPO: the exp of the
#: sequence's mean log-ratio, one ratio and one clip per completion).
ImportanceLevel = Literal["token", "sequence"]
SCALES: tuple[str, ...] = get_args(ScaleRewards)
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
IMPORTANCE_LEVELS: tuple[str, ...] = get_args(ImportanceLevel)
#: Loss types normalised by tokens (over the whole optimiser step), the others by sequences.
TOKEN_NORMALISED = ("bnpo", "dapo")
#: Added to the std before dividing, as TRL does (keeps zero-variance groups at A = 0).
STD_EPS = 1e-4


def _unbiased_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std as TRL, but 0 (not NaN) for a single sample: A is then 0, not NaN."""
    count = x.numel() if dim is None else x.shape[dim]
    if count < 2:
        return torch.zeros(()) if dim is None else torch.zeros(x.shape[:dim] + x.shape[dim + 1 :])
    return x.std() if dim is None else x.std(dim=dim)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", batch_std: float | None = None
) -> torch.Tensor:
    """``A_i = (r_i - mean_g r) / (std r + 1e-4)``, ``[N]`` -> ``[N]`` float32.

    ``scale``: "group" divides by the group's unbiased std (TRL's default), "batch" by the whole
    batch's unbiased std (``batch_std`` when given: the std over the whole optimiser step on every
    process, as TRL's generation batch), "none" does not divide (Dr. GRPO). The mean is always the
    group's. A group whose rewards are all equal gets exactly 0.

    >>> group_advantages(torch.tensor([1.0, 0.0]), group_size=2, scale="batch", batch_std=0.9999)
    tensor([ 0.5000, -0.5000])

    >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)  # 0.5 / (0.7071 + 1e-4)
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {SCALES}")
    grouped = _grouped(rewards, group_size)  # [P, G]
    if not torch.isfinite(grouped).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [P, G]
    # A group of identical rewards gets exactly A = 0. Rounding in the float32 mean (e.g. 3 x 1.7) leaves
    # ~1e-7, which the group scale would blow up to ~1e-3 (TRL keeps that noise; we do not).
    centred = centred.masked_fill((grouped == grouped[:, :1]).all(dim=1, keepdim=True), 0.0)
    if scale == "group":
        centred = centred / (_unbiased_std(grouped, dim=1).unsqueeze(1) + STD_EPS)
    elif scale == "batch":
        std = _unbiased_std(grouped) if batch_std is None else torch.tensor(batch_std, dtype=centred.dtype)
        centred = centred / (std + STD_EPS)
    return centred.reshape(-1)  # [N]


def zero_variance_groups(rewards: torch.Tensor, group_size: int, atol: float = 1e-6) -> torch.Tensor:
    """Bool ``[num_prompts]``: True where all G rewards are equal (within ``atol``), so A = 0.

    >>> zero_variance_groups(torch.tensor([1.0, 1.0, 0.5, 0.0]), group_size=2)
    tensor([ True, False])
    """
    grouped = _grouped(rewards, group_size)  # [P, G]
    return (grouped.amax(dim=1) - grouped.amin(dim=1)) <= atol


@dataclass
class GRPOLossTerms:
    """The loss and what the trainer logs about it (all scalars; only ``loss`` carries gradient).

    ``pg_loss``: the weighted policy-gradient term alone, reduced like the loss; ``kl``: masked
    token mean of the k3 estimate (0 when beta == 0 and no reference is given); ``clip_*_frac``:
    masked token share where the clip is active (low: ratio < 1 - eps_low with A < 0; high:
    ratio > 1 + eps_high with A > 0; ``clip_frac`` their union).
    """

    loss: torch.Tensor
    pg_loss: torch.Tensor
    kl: torch.Tensor
    clip_low_frac: torch.Tensor
    clip_high_frac: torch.Tensor
    clip_frac: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_len: int) -> torch.Tensor:
    """``[N, T]`` -> scalar by the loss normalisation."""
    masked = per_token * mask
    if loss_type == "grpo":  # mean over sequences of each sequence's token mean
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    if loss_type in TOKEN_NORMALISED:  # token mean over the batch (the step: see loss_share_size)
        return masked.sum() / mask.sum().clamp(min=1.0)
    return masked.sum() / (per_token.shape[0] * max_len)  # dr_grpo: constant normaliser


def loss_share_size(mask: torch.Tensor, loss_type: str) -> float:
    """What one micro-batch counts for in its optimiser step: its tokens (``bnpo``, ``dapo``) or its
    sequences (``grpo``, ``dr_grpo``). A micro-batch's loss is scaled by its size over the step's
    total (all micro-batches, all processes), so the step's loss is one mean over the whole step
    however it is split: for the token-normalised types that is DAPO's token-level loss (TRL's
    ``dapo``, normalised by ``num_items_in_batch``).

    >>> loss_share_size(torch.tensor([[1, 1, 0], [1, 0, 0]]), "dapo"), loss_share_size(torch.ones(2, 3), "grpo")
    (3.0, 2.0)
    """
    return float(mask.sum()) if loss_type in TOKEN_NORMALISED else float(mask.shape[0])


def grpo_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    weights: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float = 0.04,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    loss_type: str = "grpo",
    max_len: int | None = None,
    importance_sampling_level: str = "token",
) -> GRPOLossTerms:
    """The GRPO(-Difficulty) loss and its logged terms.

    Args:
        logp: ``[N, T]`` per-token log-probs of the completions under the policy (with gradient).
        old_logp: ``[N, T]`` under the sampling policy; ``None`` means ``logp.detach()``
            (num_iterations = 1: ratio 1, the gradient is the plain advantage-weighted one).
        ref_logp: ``[N, T]`` under the reference model; may be ``None`` only when ``beta == 0``.
        advantages: ``[N]``.
        weights: ``[N]`` per-sequence difficulty weights phi (detached here); ``None`` means 1.
        mask: ``[N, T]`` 1 on completion tokens, 0 on padding.
        loss_type: "grpo" (default, docs/design.md section 4), "bnpo"/"dapo" (token mean; over the
            optimiser step with :func:`loss_share_size`) or "dr_grpo" (sum / (N * max_len)).
        max_len: the dr_grpo normaliser's length (e.g. max new tokens); default ``T``.
        importance_sampling_level: "token" (a ratio per token) or "sequence" (GSPO: one ratio per
            completion, ``exp(mean_t(logp - old_logp))``, clipped once; clip shares then count
            sequences, as TRL's).

    >>> lp = torch.zeros(1, 2, requires_grad=True)
    >>> t = grpo_loss_terms(lp, None, None, torch.tensor([2.0]), torch.tensor([1.5]), torch.ones(1, 2), beta=0.0)
    >>> t.loss  # -w * A with ratio 1
    tensor(-3., grad_fn=<MeanBackward0>)
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    if importance_sampling_level not in IMPORTANCE_LEVELS:
        raise ValueError(
            f"unknown importance_sampling_level {importance_sampling_level!r}; choose one of {IMPORTANCE_LEVELS}"
        )
    if logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(
            f"logp and mask must both be [N, T], got {tuple(logp.shape)} and {tuple(mask.shape)}"
        )
    n = logp.shape[0]
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must match logp's shape {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.shape != (n,):
        raise ValueError(f"advantages must be [N={n}], got {tuple(advantages.shape)}")
    if weights is not None and weights.shape != (n,):
        raise ValueError(f"weights must be [N={n}], got {tuple(weights.shape)}")
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp (the reference model's per-token log-probs)")

    mask = mask.to(logp.dtype)  # [N, T]
    old_logp = logp.detach() if old_logp is None else old_logp
    adv = advantages.to(logp.dtype).unsqueeze(1)  # [N, 1]
    w = (
        (torch.ones_like(advantages) if weights is None else weights).detach().to(logp.dtype).unsqueeze(1)
    )  # [N, 1]

    log_ratio = logp - old_logp  # [N, T]
    sequence = importance_sampling_level == "sequence"
    if sequence:  # GSPO: the length-normalised sequence ratio
        log_ratio = (log_ratio * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    ratio = torch.exp(log_ratio)  # [N, T], or [N, 1] per sequence
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pg = (-w * torch.min(ratio * adv, clipped * adv)).expand_as(logp)  # [N, T]
    if ref_logp is not None:
        delta = ref_logp - logp  # [N, T]
        kl = torch.exp(delta) - delta - 1.0  # [N, T], >= 0
    else:
        kl = torch.zeros_like(logp)
    per_token = pg + beta * kl  # [N, T]; the weight is already inside pg only

    length = logp.shape[1] if max_len is None else max_len
    loss = _reduce(per_token, mask, loss_type, length)

    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        low = ((ratio < 1.0 - eps_low) & (adv < 0)).to(mask.dtype)  # [N, T] or [N, 1]
        high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(mask.dtype)

        def share(x: torch.Tensor) -> torch.Tensor:  # of tokens, or of sequences when per sequence
            return x.mean() if sequence else (x * mask).sum() / tokens

        terms = GRPOLossTerms(
            loss=loss,
            pg_loss=_reduce(pg.detach(), mask, loss_type, length),
            kl=(kl.detach() * mask).sum() / tokens,
            clip_low_frac=share(low),
            clip_high_frac=share(high),
            clip_frac=share(torch.maximum(low, high)),
        )
    return terms


def grpo_loss(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The scalar loss of :func:`grpo_loss_terms` (same arguments)."""
    return grpo_loss_terms(*args, **kwargs).loss
