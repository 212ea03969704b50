"""phi and difficulty weights: hand-derived values, no gradient, per-group mIoU."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from univg.rl.difficulty import (
    PHI_NAMES,
    difficulty_shares,
    difficulty_weights,
    group_miou,
    group_weights,
    normalize_weights,
    phi,
    step_weights,
)

M = torch.tensor([0.0, 0.25, 0.5, 1.0])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", [1.0, 1.0, 1.0, 1.0]),
        ("exp", [math.e, math.exp(0.75), math.exp(0.5), 1.0]),
        ("square", [1.0, 0.5625, 0.25, 0.0]),
        ("neglog", [-math.log(0.02), -math.log(0.27), -math.log(0.52), -math.log(1.02)]),
        # the release's (1.05 - m)^1: 1.05 - 0, 1.05 - 0.25, 1.05 - 0.5, 1.05 - 1
        ("power", [1.05, 0.80, 0.55, 0.05]),
    ],
)
def test_phi_hand_values(name: str, expected: list[float]) -> None:
    torch.testing.assert_close(phi(name, M), torch.tensor(expected))


def test_phi_neglog_eps_is_configurable() -> None:
    torch.testing.assert_close(phi("neglog", torch.tensor([0.0]), eps=0.1), torch.tensor([-math.log(0.1)]))


def test_phi_names() -> None:
    assert PHI_NAMES == ("none", "exp", "square", "neglog", "power")
    with pytest.raises(ValueError, match=r"unknown phi 'log'.*'none', 'exp', 'square', 'neglog'"):
        phi("log", M)


@pytest.mark.parametrize("name", PHI_NAMES)
def test_phi_has_no_gradient(name: str) -> None:
    m = torch.tensor([0.2, 0.7], requires_grad=True)
    w = phi(name, m)
    assert not w.requires_grad
    assert w.grad_fn is None


def test_phi_clamps_and_reads_nan_as_zero() -> None:
    m = torch.tensor([math.nan, -0.5, 1.5])
    # NaN -> 0 (hardest), -0.5 -> 0, 1.5 -> 1.
    torch.testing.assert_close(phi("exp", m), torch.tensor([math.e, math.e, 1.0]))
    torch.testing.assert_close(phi("square", m), torch.tensor([1.0, 1.0, 0.0]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=8))
def test_phi_is_finite_and_monotone_in_range(values: list[float]) -> None:
    m = torch.tensor(values)
    for name in PHI_NAMES:
        w = phi(name, m)
        assert torch.isfinite(w).all()
    assert ((phi("exp", m) >= 1.0) & (phi("exp", m) <= math.e + 1e-6)).all()
    assert ((phi("square", m) >= 0.0) & (phi("square", m) <= 1.0)).all()
    assert ((phi("power", m) >= 0.05 - 1e-6) & (phi("power", m) <= 1.05 + 1e-6)).all()


def test_normalize_weights() -> None:
    torch.testing.assert_close(
        normalize_weights(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([0.5, 1.0, 1.5])
    )
    torch.testing.assert_close(normalize_weights(torch.zeros(3)), torch.zeros(3))
    w = torch.tensor([1.0, 3.0], requires_grad=True)
    assert not normalize_weights(w).requires_grad


def test_difficulty_weights_are_per_group() -> None:
    # Two prompts in one micro-batch, G = 2: prompt 0 solved (mIoU 1), prompt 1 failed (mIoU 0).
    acc = torch.tensor([1.0, 1.0, 0.0, 0.0])
    w = difficulty_weights(acc, group_size=2, name="exp")
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, math.e, math.e]))
    # The release's bug: mIoU over the whole micro-batch (0.5) gives every completion exp(0.5).
    assert not torch.allclose(w, torch.full((4,), math.exp(0.5)))


def test_difficulty_weights_several_groups_and_normalise() -> None:
    # G = 3, three prompts with mIoU 0.2, 0.5, 0.8 -> square weights 0.64, 0.25, 0.04 (mean 0.31).
    acc = torch.tensor([0.0, 0.3, 0.3, 0.5, 0.5, 0.5, 1.0, 0.7, 0.7])
    w = difficulty_weights(acc, group_size=3, name="square")
    torch.testing.assert_close(w, torch.tensor([0.64] * 3 + [0.25] * 3 + [0.04] * 3))
    w = difficulty_weights(acc, group_size=3, name="square", normalize=True)
    torch.testing.assert_close(w, torch.tensor([0.64 / 0.31] * 3 + [0.25 / 0.31] * 3 + [0.04 / 0.31] * 3))
    assert w.mean().item() == pytest.approx(1.0)


def test_difficulty_weights_reject_partial_groups() -> None:
    with pytest.raises(ValueError, match="groups of group_size=4"):
        difficulty_weights(torch.zeros(6), group_size=4, name="exp")


def test_difficulty_shares() -> None:
    shares = difficulty_shares(torch.tensor([0.0, 0.29, 0.3, 0.7, 0.71]))
    assert shares == pytest.approx({"miou_lt_0.3": 0.4, "miou_0.3_0.7": 0.4, "miou_gt_0.7": 0.2})
    assert difficulty_shares(torch.tensor([])) == {
        "miou_lt_0.3": 0.0,
        "miou_0.3_0.7": 0.0,
        "miou_gt_0.7": 0.0,
    }


def test_group_weights_drop_groups_before_phi() -> None:
    # G = 2: mIoU 1.0 (dropped: zero variance), 0.25 and 0.0 -> exp weights e^0.75 and e for the kept two
    acc = torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    gw = group_weights(acc, 2, "exp", drop=torch.tensor([True, False, False]))
    torch.testing.assert_close(gw.miou, torch.tensor([1.0, 0.25, 0.0]))  # every group, for the logs
    assert gw.keep.tolist() == [False, True, True]
    torch.testing.assert_close(gw.weights, torch.tensor([math.exp(0.75), math.e]))
    torch.testing.assert_close(gw.kept_miou, torch.tensor([0.25, 0.0]))
    assert group_weights(acc, 2, "none").keep.all()


def test_step_weights_normalise_over_the_whole_step_and_every_process() -> None:
    parts = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0, 4.0, 4.0])]
    assert step_weights(parts) == parts  # normalize off: as scored
    # one process: mean of the 6 per-completion weights = 14 / 6
    got = step_weights(parts, normalize=True)
    torch.testing.assert_close(torch.cat(got), torch.tensor([1.0, 1.0, 2.0, 2.0, 4.0, 4.0]) * 6 / 14)
    # a second process holding [8, 8]: sums (14 + 16) / (6 + 2) -> mean 3.75
    got = step_weights(parts, normalize=True, world_sum=lambda v: [v[0] + 16.0, v[1] + 2.0])
    torch.testing.assert_close(got[0], torch.tensor([1.0, 1.0]) / 3.75)
    zeros = [torch.zeros(2)]
    assert torch.equal(step_weights(zeros, normalize=True)[0], zeros[0])  # all solved: unchanged


def test_group_statistics_live_in_difficulty_without_the_loss_module() -> None:
    # difficulty does not import the loss module (univg.rl.loss)
    code = "import sys, univg.rl.difficulty; print('univg.rl.loss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    torch.testing.assert_close(group_miou(torch.tensor([0.2, 0.4, 1.0, 0.0]), 2), torch.tensor([0.3, 0.5]))
