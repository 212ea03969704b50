"""GRPO maths by hand: advantages, losses (token- and sequence-level ratios, clipping, KL,
normalisations, difficulty weights) and autograd checks; parity with TRL: tests/test_grpo_trl_parity.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from univg.rl.difficulty import difficulty_weights, group_miou
from univg.rl.loss import (
    LOSS_TYPES,
    GRPOLossTerms,
    group_advantages,
    grpo_loss,
    grpo_loss_terms,
    zero_variance_groups,
)

LN2 = math.log(2.0)

# ---------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_values() -> None:
    # Group 0 = [1, 0, 0, 0]: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
    # Group 1 = [0.5] * 4: std 0 -> A = 0 exactly.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    a = group_advantages(rewards, group_size=4)
    expected = [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(a, torch.tensor(expected))
    assert (a[4:] == 0).all()


def test_group_advantages_batch_and_none_scales() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    # Batch: mean 0.375, sum of squares 0.625^2 + 3 * 0.375^2 + 4 * 0.125^2 = 0.875, std sqrt(0.875 / 7).
    std = math.sqrt(0.875 / 7)
    centred = [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]  # still centred on each group's mean
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale="batch"), torch.tensor([c / (std + 1e-4) for c in centred])
    )
    torch.testing.assert_close(group_advantages(rewards, 4, scale="none"), torch.tensor(centred))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_zero_advantage(scale: str) -> None:
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.7, 1.7, 1.7])
    assert (group_advantages(rewards, 3, scale=scale) == 0).all()


def test_group_advantages_single_completion_groups_are_zero_not_nan() -> None:
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 2.0]), 1), torch.zeros(2))
    torch.testing.assert_close(group_advantages(torch.tensor([1.0]), 1, scale="batch"), torch.zeros(1))


def test_group_advantages_validation() -> None:
    with pytest.raises(ValueError, match="5 rewards cannot be split into groups of group_size=2"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size=0"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="unknown advantage scale 'std'"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([0.0, math.nan]), 2)


def test_group_miou_and_zero_variance_groups() -> None:
    acc = torch.tensor([0.0, 0.5, 1.0, 0.25, 0.25, 0.25, 1.0, 1.0, 1.0])
    torch.testing.assert_close(group_miou(acc, 3), torch.tensor([0.5, 0.25, 1.0]))
    assert zero_variance_groups(acc, 3).tolist() == [False, True, True]
    assert zero_variance_groups(torch.tensor([0.5, 0.5 + 1e-7]), 2).tolist() == [True]
    assert zero_variance_groups(torch.tensor([0.5, 0.5 + 1e-7]), 2, atol=0.0).tolist() == [False]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.data())
def test_group_advantages_properties(num_prompts: int, group_size: int, data: st.DataObject) -> None:
    values = data.draw(
        st.lists(
            st.floats(0, 2, width=32), min_size=num_prompts * group_size, max_size=num_prompts * group_size
        )
    )
    a = group_advantages(torch.tensor(values), group_size).view(num_prompts, group_size)
    torch.testing.assert_close(a.sum(dim=1), torch.zeros(num_prompts), atol=1e-3, rtol=0)  # centred per group
    zero = zero_variance_groups(torch.tensor(values), group_size, atol=0.0)
    assert (a[zero] == 0).all()


# ------------------------------------------------------------------------------ loss, by hand


def test_kl_term_is_not_weighted_by_phi() -> None:
    # ratio 1 (old = logp); ref - logp = ln 2 on every token, so k3 = 2 - ln 2 - 1.
    kl = 1.0 - LN2
    logp = torch.zeros(2, 2)
    ref = torch.full((2, 2), LN2)
    adv, w, mask = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 3.0]), torch.ones(2, 2)
    terms = grpo_loss_terms(logp, None, ref, adv, w, mask, beta=0.04)
    # Sequence 0: pg = -2 * 1 = -2, sequence 1: pg = -3 * -1 = 3; both add beta * kl unweighted.
    assert terms.loss.item() == pytest.approx((-2 + 3) / 2 + 0.04 * kl)
    assert terms.pg_loss.item() == pytest.approx(0.5)
    assert terms.kl.item() == pytest.approx(kl)
    # Had the KL been weighted, it would read 0.5 + 0.04 * kl * 2.5.
    assert terms.loss.item() != pytest.approx(0.5 + 0.04 * kl * 2.5)


def test_kl_gradient_is_independent_of_weights() -> None:
    # Zero advantages: the policy term vanishes and only the KL gradient remains, whatever phi is.
    ref = torch.tensor([[LN2, 0.0], [-LN2, LN2]])
    grads = []
    for w in (torch.ones(2), torch.tensor([5.0, 0.1])):
        logp = torch.zeros(2, 2, requires_grad=True)
        grpo_loss(logp, None, ref, torch.zeros(2), w, torch.ones(2, 2), beta=0.5).backward()
        grads.append(logp.grad)
    # d/dlogp of beta * (exp(ref - logp) - (ref - logp) - 1) = beta * (1 - exp(ref - logp)), / 2 tokens / 2 seqs.
    expected = 0.5 * (1 - torch.exp(ref)) / 4
    torch.testing.assert_close(grads[0], expected)
    torch.testing.assert_close(grads[1], expected)


def test_clipping_engages_on_both_sides() -> None:
    # One token per sequence. ratio = exp(logp - old): 0.5 (old = ln 2) or 2 (old = -ln 2); eps 0.2.
    #   ratio 0.5, A = -1: min(-0.5, 0.8 * -1) = -0.8 -> pg  0.8, low clip active, no gradient
    #   ratio 0.5, A = +1: min( 0.5, 0.8)      =  0.5 -> pg -0.5, unclipped, d pg/d logp = -0.5
    #   ratio 2,   A = +1: min( 2,   1.2)      =  1.2 -> pg -1.2, high clip active, no gradient
    #   ratio 2,   A = -1: min(-2,  -1.2)      = -2   -> pg  2.0, unclipped, d pg/d logp = 2
    logp = torch.zeros(4, 1, requires_grad=True)
    old = torch.tensor([[LN2], [LN2], [-LN2], [-LN2]])
    adv = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    terms = grpo_loss_terms(logp, old, None, adv, None, torch.ones(4, 1), beta=0.0)
    assert terms.loss.item() == pytest.approx((0.8 - 0.5 - 1.2 + 2.0) / 4)
    terms.loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [-0.5 / 4], [0.0], [2.0 / 4]]))
    assert terms.clip_low_frac.item() == pytest.approx(0.25)
    assert terms.clip_high_frac.item() == pytest.approx(0.25)
    assert terms.clip_frac.item() == pytest.approx(0.5)
    assert terms.kl.item() == 0.0


def test_asymmetric_clip_range() -> None:
    # ratio 1.25 with A = +1: clipped at 1.2 with eps_high = 0.2 but not with eps_high = 0.28 (DAPO's value).
    logp = torch.zeros(1, 1)
    old = torch.tensor([[-math.log(1.25)]])
    adv = torch.tensor([1.0])
    narrow = grpo_loss_terms(logp, old, None, adv, None, torch.ones(1, 1), beta=0.0)
    wide = grpo_loss_terms(logp, old, None, adv, None, torch.ones(1, 1), beta=0.0, eps_high=0.28)
    assert narrow.loss.item() == pytest.approx(-1.2)
    assert wide.loss.item() == pytest.approx(-1.25)
    assert (narrow.clip_high_frac.item(), wide.clip_high_frac.item()) == (1.0, 0.0)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_on_policy_gradient_is_the_plain_policy_gradient(beta: float) -> None:
    # With old_logp = logp the ratio is 1 and never clipped, so d loss / d logp must equal that of
    # the REINFORCE-style surrogate mean_seq mean_tok(-w * A * logp + beta * kl).
    g = torch.Generator().manual_seed(0)
    n, t = 6, 5
    logp0 = -torch.rand(n, t, generator=g) * 3
    ref = logp0 + 0.3 * torch.randn(n, t, generator=g)
    adv, w = torch.randn(n, generator=g), torch.rand(n, generator=g) * 2
    mask = torch.ones(n, t)
    mask[1, 3:] = 0
    mask[4, 1:] = 0

    logp = logp0.clone().requires_grad_(True)
    grpo_loss(logp, None, ref, adv, w, mask, beta=beta).backward()

    plain_logp = logp0.clone().requires_grad_(True)
    delta = ref - plain_logp
    per_token = -w[:, None] * adv[:, None] * plain_logp + beta * (torch.exp(delta) - delta - 1)
    ((per_token * mask).sum(1) / mask.sum(1)).mean().backward()

    torch.testing.assert_close(logp.grad, plain_logp.grad)
    assert (logp.grad[mask == 0] == 0).all()


def test_loss_type_normalisations() -> None:
    # Ratio 1; pg = -A per token: sequence 0 has 2 real tokens of -1, sequence 1 one real token of 3.
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -3.0])
    loss = {
        lt: grpo_loss(logp, None, None, adv, None, mask, beta=0.0, loss_type=lt).item() for lt in LOSS_TYPES
    }
    assert loss["grpo"] == pytest.approx((-1 + 3) / 2)  # mean of per-sequence means
    assert loss["bnpo"] == pytest.approx((-2 + 3) / 3)  # token mean
    assert loss["dr_grpo"] == pytest.approx((-2 + 3) / (2 * 3))  # sum / (N * T)
    dr = grpo_loss(logp, None, None, adv, None, mask, beta=0.0, loss_type="dr_grpo", max_len=4)
    assert dr.item() == pytest.approx(1 / 8)


def test_padding_does_not_change_the_loss() -> None:
    g = torch.Generator().manual_seed(1)
    logp, old, ref = (-torch.rand(3, 4, generator=g) for _ in range(3))
    adv, w = torch.randn(3, generator=g), torch.rand(3, generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    base = grpo_loss_terms(logp, old, ref, adv, w, mask)
    junk = torch.where(mask.bool(), torch.zeros(3, 4), torch.full((3, 4), 7.0))
    moved = grpo_loss_terms(logp + junk, old - junk, ref + junk, adv, w, mask)
    for key, value in base.as_dict().items():
        torch.testing.assert_close(moved.as_dict()[key], value)


def test_zero_advantage_group_gives_no_policy_gradient() -> None:
    # A group whose rewards are all equal has A = 0: with beta = 0 its completions get no gradient.
    rewards = torch.tensor([0.7, 0.7, 1.0, 0.0])
    adv = group_advantages(rewards, 2)
    logp = torch.full((4, 2), -1.0, requires_grad=True)
    w = difficulty_weights(rewards, 2, "exp")
    grpo_loss(logp, None, None, adv, w, torch.ones(4, 2), beta=0.0).backward()
    assert (logp.grad[:2] == 0).all()
    assert (logp.grad[2:] != 0).all()


def test_phi_is_computed_per_group_in_the_loss() -> None:
    # Two groups in one batch: group 0 solved (acc 1, 0.9), group 1 hard (acc 0.1, 0) -> mIoU 0.95, 0.05.
    acc = torch.tensor([1.0, 0.9, 0.1, 0.0])
    adv = group_advantages(acc, 2)  # +-0.1 / (0.0707 + 1e-4) in both groups: the same magnitudes
    w = difficulty_weights(acc, 2, "exp")
    torch.testing.assert_close(w, torch.tensor([math.exp(0.05)] * 2 + [math.exp(0.95)] * 2))
    logp = torch.zeros(4, 1, requires_grad=True)
    grpo_loss(logp, None, None, adv, w, torch.ones(4, 1), beta=0.0).backward()
    # Equal |A| in both groups, so the gradient ratio between groups is exactly phi's ratio exp(0.9).
    ratio = (logp.grad[2:].abs() / logp.grad[:2].abs()).flatten()
    torch.testing.assert_close(ratio, torch.full((2,), math.exp(0.9)))


def test_grpo_loss_is_grpo_loss_terms_loss() -> None:
    g = torch.Generator().manual_seed(2)
    logp, old, ref = (-torch.rand(4, 3, generator=g) for _ in range(3))
    args = (logp, old, ref, torch.randn(4, generator=g), torch.rand(4, generator=g), torch.ones(4, 3))
    terms = grpo_loss_terms(*args, loss_type="bnpo")
    assert isinstance(terms, GRPOLossTerms)
    assert set(terms.as_dict()) == {"loss", "pg_loss", "kl", "clip_low_frac", "clip_high_frac", "clip_frac"}
    assert grpo_loss(*args, loss_type="bnpo").item() == terms.loss.item()
    assert terms.loss.item() == pytest.approx(terms.pg_loss.item() + 0.04 * terms.kl.item())  # full mask


def test_grpo_loss_validation() -> None:
    logp, mask, adv = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, None, None, adv, None, mask, beta=0.04)
    with pytest.raises(ValueError, match="unknown loss_type 'gspo'"):
        grpo_loss(logp, None, None, adv, None, mask, beta=0.0, loss_type="gspo")
    with pytest.raises(ValueError, match=r"logp and mask must both be \[N, T\]"):
        grpo_loss(logp, None, None, adv, None, torch.ones(2, 2), beta=0.0)
    with pytest.raises(ValueError, match=r"advantages must be \[N=2\]"):
        grpo_loss(logp, None, None, torch.zeros(3), None, mask, beta=0.0)
    with pytest.raises(ValueError, match=r"weights must be \[N=2\]"):
        grpo_loss(logp, None, None, adv, torch.ones(2, 1), mask, beta=0.0)
    with pytest.raises(ValueError, match="ref_logp must match"):
        grpo_loss(logp, None, torch.zeros(2, 2), adv, None, mask)


def test_sequence_level_ratio_is_one_clip_per_completion() -> None:
    # GSPO by hand: one sequence of 2 tokens with log-ratios 0.3 and 0.1 -> s = exp(0.2) = 1.2214;
    # A = 1 and eps_high 0.2 clip it to 1.2 (no gradient), so the loss is -1.2 and the clip share 1
    # (of sequences). Per token the ratios exp(0.3) = 1.35 (clipped) and exp(0.1) = 1.105 (not):
    # loss -(1.2 + 1.105) / 2 and a token clip share of 1/2.
    logp = torch.tensor([[0.3, 0.1]], requires_grad=True)
    old, mask, adv = torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([1.0])
    seq = grpo_loss_terms(logp, old, None, adv, None, mask, beta=0.0, importance_sampling_level="sequence")
    assert seq.loss.item() == pytest.approx(-1.2)
    assert seq.clip_high_frac.item() == 1.0
    seq.loss.backward()
    assert logp.grad.abs().sum().item() == 0.0
    tok = grpo_loss_terms(logp, old, None, adv, None, mask, beta=0.0)
    assert tok.loss.item() == pytest.approx(-(1.2 + math.exp(0.1)) / 2)
    assert tok.clip_high_frac.item() == 0.5
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss_terms(logp, old, None, adv, None, mask, importance_sampling_level="seq")
