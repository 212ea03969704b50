"""GRPO's loss and advantages against TRL 1.16's own ``GRPOTrainer._compute_loss`` and ``nanstd``
on the same tensors: every loss type and importance level, micro-batches, weighted losses."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from univg.rl.loss import (
    IMPORTANCE_LEVELS,
    LOSS_TYPES,
    group_advantages,
    grpo_loss,
    grpo_loss_terms,
    loss_share_size,
)

# ------------------------------------------------------------------------ parity with TRL 1.16


@pytest.fixture(scope="module")
def trl_compute_loss() -> Any:
    """TRL's own ``GRPOTrainer._compute_loss`` run on given tensors, with the model call mocked out.

    The stand-in ``self`` carries only the attributes ``_compute_loss`` reads in TRL 1.16
    (trl/trainer/grpo_trainer.py, ``_compute_loss``): token-level importance sampling, no vLLM, no
    entropy masking/bonus, eval mode so the gradient-accumulation normaliser is 1, one process.
    """
    grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")

    def run(
        logp, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, max_len, level="token", accum=None
    ):
        # accum = (micro-batches, tokens in the step): train mode, the step split into micro-batches
        n, t = logp.shape
        fake = SimpleNamespace(
            _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            importance_sampling_level=level,
            beta=beta,
            loss_type=loss_type,
            epsilon_low=eps_low,
            epsilon_high=eps_high,
            args=SimpleNamespace(
                use_bias_correction_kl=False, delta=None, steps_per_generation=accum[0] if accum else 1
            ),
            use_vllm=False,
            vllm_importance_sampling_correction=False,
            model=SimpleNamespace(training=accum is not None),
            current_gradient_accumulation_steps=accum[0] if accum else 1,
            max_completion_length=max_len,
            _entropy_bonus_enabled=False,
            aux_loss_enabled=False,
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
            accelerator=SimpleNamespace(reduce=lambda x, reduction: x, gather=lambda x: x, num_processes=1),
        )
        inputs = {
            "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
            "prompt_mask": torch.ones(n, 1, dtype=torch.long),
            "completion_ids": torch.zeros(n, t, dtype=torch.long),
            "completion_mask": mask,
            "advantages": adv,
            "num_items_in_batch": torch.tensor(float(accum[1] if accum else mask.sum())),
        }
        if old is not None:
            inputs["old_per_token_logps"] = old
        if ref is not None:
            inputs["ref_per_token_logps"] = ref
        loss = grpo_trainer.GRPOTrainer._compute_loss(fake, None, inputs)
        mode = "train" if accum else "eval"
        return loss, {k: v[-1] for k, v in fake._metrics[mode].items()}

    return run


def _random_case(seed: int, n: int = 8, t: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logp0 = -torch.rand(n, t, generator=g) * 4
    mask = (
        torch.arange(t)[None, :] < torch.randint(1, t + 1, (n,), generator=g)[:, None]
    ).float()  # right padding
    return {
        "logp0": logp0,
        # Ratios spread well past 1 +- 0.2 so both clips engage.
        "old": logp0 + 0.5 * torch.randn(n, t, generator=g),
        "ref": logp0 + 0.5 * torch.randn(n, t, generator=g),
        "adv": torch.randn(n, generator=g),
        "w": torch.rand(n, generator=g) * 3,
        "mask": mask,
    }


@pytest.mark.parametrize("level", IMPORTANCE_LEVELS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("on_policy", [False, True])
def test_grpo_loss_matches_trl(trl_compute_loss: Any, loss_type: str, on_policy: bool, level: str) -> None:
    case = _random_case(seed=3)
    old = None if on_policy else case["old"]
    kwargs = {"beta": 0.04, "eps_low": 0.2, "eps_high": 0.28, "loss_type": loss_type, "max_len": 9}

    theirs_logp = case["logp0"].clone().requires_grad_(True)
    theirs, metrics = trl_compute_loss(
        theirs_logp, old, case["ref"], case["adv"], case["mask"], level=level, **kwargs
    )
    theirs.backward()

    ours_logp = case["logp0"].clone().requires_grad_(True)
    terms = grpo_loss_terms(
        ours_logp,
        old,
        case["ref"],
        case["adv"],
        None,
        case["mask"],
        importance_sampling_level=level,
        **kwargs,
    )
    terms.loss.backward()

    torch.testing.assert_close(terms.loss, theirs.detach())
    torch.testing.assert_close(ours_logp.grad, theirs_logp.grad)
    assert terms.kl.item() == pytest.approx(metrics["kl"], rel=1e-5)
    assert terms.clip_low_frac.item() == pytest.approx(metrics["clip_ratio/low_mean"], abs=1e-6)
    assert terms.clip_high_frac.item() == pytest.approx(metrics["clip_ratio/high_mean"], abs=1e-6)
    assert terms.clip_frac.item() == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    if not on_policy:
        assert terms.clip_frac.item() > 0
        if level == "token":
            assert terms.clip_low_frac.item() > 0 and terms.clip_high_frac.item() > 0


@pytest.mark.parametrize("level", IMPORTANCE_LEVELS)
def test_dapo_over_micro_batches_matches_trl(trl_compute_loss: Any, level: str) -> None:
    # DAPO's token-level loss over a step split into 3 micro-batches of unequal token counts: TRL
    # divides each micro-batch's token sum by the step's tokens (num_items_in_batch, train mode,
    # steps_per_generation = gradient accumulation = 3) and sums the accumulated gradients. Ours
    # scales each micro-batch's token mean by its loss_share_size over the step's total.
    case = _random_case(seed=6, n=9)
    parts = [slice(0, 2), slice(2, 6), slice(6, 9)]
    total = float(case["mask"].sum())
    kwargs = {"beta": 0.04, "eps_low": 0.2, "eps_high": 0.28, "loss_type": "dapo", "max_len": 7}
    theirs_logp = case["logp0"].clone().requires_grad_(True)
    ours_logp = case["logp0"].clone().requires_grad_(True)
    theirs_total, ours_total = 0.0, 0.0
    for p in parts:
        mask = case["mask"][p]
        loss, _ = trl_compute_loss(
            theirs_logp[p],
            case["old"][p],
            case["ref"][p],
            case["adv"][p],
            mask,
            level=level,
            accum=(len(parts), total),
            **kwargs,
        )
        loss.backward()
        theirs_total += loss.item()
        share = loss_share_size(mask, "dapo") / total
        terms = grpo_loss_terms(
            ours_logp[p],
            case["old"][p],
            case["ref"][p],
            case["adv"][p],
            None,
            mask,
            importance_sampling_level=level,
            **kwargs,
        )
        (terms.loss * share).backward()
        ours_total += terms.loss.item() * share
    assert ours_total == pytest.approx(theirs_total, rel=1e-5)
    torch.testing.assert_close(ours_logp.grad, theirs_logp.grad)
    # one micro-batch of the whole step is the same step
    whole = grpo_loss_terms(
        case["logp0"],
        case["old"],
        case["ref"],
        case["adv"],
        None,
        case["mask"],
        importance_sampling_level=level,
        **kwargs,
    )
    assert whole.loss.item() == pytest.approx(ours_total, rel=1e-5)


def test_weighted_loss_matches_trl_with_scaled_advantages(trl_compute_loss: Any) -> None:
    # For w >= 0, -w * min(r A, clip(r) A) = -min(r (w A), clip(r) (w A)): TRL given advantages w * A
    # must reproduce our weighted loss exactly, KL included, which shows the KL is left unweighted.
    case = _random_case(seed=4)
    kwargs = {"beta": 0.04, "eps_low": 0.2, "eps_high": 0.2, "loss_type": "grpo", "max_len": 7}
    theirs_logp = case["logp0"].clone().requires_grad_(True)
    theirs, _ = trl_compute_loss(
        theirs_logp, case["old"], case["ref"], case["adv"] * case["w"], case["mask"], **kwargs
    )
    theirs.backward()
    ours_logp = case["logp0"].clone().requires_grad_(True)
    ours = grpo_loss(ours_logp, case["old"], case["ref"], case["adv"], case["w"], case["mask"], **kwargs)
    ours.backward()
    torch.testing.assert_close(ours, theirs.detach())
    torch.testing.assert_close(ours_logp.grad, theirs_logp.grad)


def test_group_advantages_match_trl_nanstd() -> None:
    # TRL (grpo_trainer.py, _generate_and_score_completions, scale_rewards="group"):
    # (r - mean_g) / (nanstd_g + 1e-4), with its Bessel-corrected nanstd from trl.trainer.utils.
    utils = pytest.importorskip("trl.trainer.utils")
    rewards = torch.rand(24, generator=torch.Generator().manual_seed(5)) * 2
    grouped = rewards.view(-1, 8)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (utils.nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 8), expected.flatten())
    expected = (grouped - grouped.mean(1, keepdim=True)) / (utils.nanstd(rewards) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 8, scale="batch"), expected.flatten())
