"""Known-answer learning with LoRA: GRPO through ``lightning.Trainer.fit`` trains adapters on the
decoder layers (``backbone.lora`` as a YAML sets it) to a reward whose optimum is known.

Policy, reward and observable are those of ``test_grpo_known_answer.py`` (:mod:`known_answer_policy`),
except for one setting of the policy: the end token's row is turned ``ANGLE`` = 70 degrees off the
mean final hidden state at the prompts' last position, towards a fixed random direction orthogonal
to it (``make_peaked_checkpoint(angle=70)``), still sized for a stop probability of 0.25. The full
fine-tuning tests' row points along that state, where the end token's logit is already at its
maximum over the state's directions (RMSNorm fixes the state's norm): to first order a turn of the
state leaves that logit unchanged and a turn of some size lowers it, so only the head (the tied
embedding) can raise it, and LoRA cannot reach the head (``apply_lora`` puts adapters on the
decoder-layer projections only and refuses ``lm_head``). Turned 70 degrees off, the layers raise it
by turning the final state towards the row.

What did not learn, with the row along the state (r 8, 8 steps unless said, stop share from 0.24):
q, v at lr 3e-3 and 1e-2 (0.24), 3e-2 (0.20); all 7 projections at 1e-2 (0.24); with the final
norm scaled instead of the embedding, q, v at 1e-2 (0.24), 3e-2 (0.01), all 7 at 3e-3 (0.25), 1e-2
(0.00), 5e-3 for 16 steps (0.26), 1e-2 with warm-up for 16 steps (0.23); with the embedding not
scaled at all, q, v at 3e-4 and 1e-3 (0.24, exact p(end first) 0.248 -> 0.250 in 4 steps), 1e-2
(0.01). A step of norm 0.1 along the loss gradient raised log p(end first) by 0.003 for LoRA (q, v)
against 0.6 for full fine-tuning.

Each run is the full fine-tuning tests' base run (8 optimiser steps of 2 prompts x G = 8, lr 6e-3,
beta 0, phi none, loss grpo) with LoRA r 8, alpha 16, dropout 0.05 (``LoRASpec``'s defaults) on
q_proj, v_proj. Held-out stop share, start 0.234 (standard error 0.037), exact mean p(end first) on
the held-out prompts 0.246:

========================  ====================  ==================================================
run                       seed 0 / 1 / 2        note
========================  ====================  ==================================================
q_proj, v_proj            1.00 / 1.00 / 1.00    exact p(end first) 0.64 / 0.73 / 0.61 after 3
                                                steps, 1.00 after 8
all 7 projections         1.00 / 1.00 / 1.00    faster: 0.90 / 0.96 / 0.96 after 2 steps
reward negated            0.00 / 0.00 / 0.00
beta 5 (KL test)          0.26 / 0.27 / 0.27    KL to the initial policy 0.006 / 0.024 / 0.015,
                                                beta 0 run 1.40 (= -log 0.246: it always stops)
========================  ====================  ==================================================

A LoRA run must end at least ``RISE`` = 0.5 above the start: the runs end 0.77 above it on every
seed, 7 start standard errors above the threshold, which is itself 13 above what no learning
gives. The negated reward must end at least ``FALL`` = 0.15 below the start (it ends at 0). The
KL test's run with ``BETA`` = 5 must end with less than half the beta 0 run's KL to the initial
policy (measured: under a fiftieth), the reference being the base model with the adapters off (no
copy). Independently of the module, the fit must change the adapters and nothing else: every other
parameter (the base layers under the adapters, the embedding and head, the vision tower) equals
the checkpoint's bit for bit, and every adapter's B moved off its initial 0.

Faults these tests catch (each injected in a working copy, the tests run, the copy discarded):

(a) sign error in the policy-gradient term, univg/rl/loss.py ``grpo_loss_terms`` (``-w`` made
    ``w``). The two learning tests fail (stop share 0.234 -> 0.000 for q, v and for all 7) and the
    negated control fails (0.234 -> 1.000).
(b) completion mask off by one, univg/rl/rollout/batch.py ``completion_mask`` (``before =
    torch.cumsum(is_end.long(), dim=1)``: the end token left out of the mask). The two learning
    runs stop with "element 0 of tensors does not require grad" in the backward of a step where
    every completion has an empty mask (all 16 read as truncated, one reward: they all stopped at
    once, and a completion that stops at once then has no scored token); the negated control
    passes, as it must (0.234 -> 0.008). Here the fault is caught by that failure, not by the
    held-out measure; the full fine-tuning tests catch it by the measure.
(c) the reference equal to the moving policy, univg/modules/grpo/reference.py
    ``ReferencePolicy.reference``: ``yield self.model`` with the adapters left on (no
    ``disable_adapter()``). The KL term is then 0 and the KL test fails with the two KLs equal
    (1.403 and 1.403) and both policies always stopping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from known_answer_policy import (
    assert_logged_rise,
    held_out_prompts,
    held_out_stops,
    kl_to,
    load_policy,
    make_peaked_checkpoint,
    report,
    starting_share,
    stop_reward,
    train,
)

ANGLE = 70.0  # the end token's row, degrees off the mean final hidden state
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RISE = 0.5  # the held-out stop share must rise by this much (module docstring) ...
FALL = 0.15  # ... and fall by this much with the reward negated
BETA = 5.0  # the KL test's coefficient
KL_MOVED, KL_HELD_SHARE = 0.3, 0.5


def train_lora(checkpoint: Path, processor: Any, targets: list[str] | None = None, **kwargs: Any):
    lora = dict(LORA, target_modules=targets or LORA["target_modules"])
    return train(checkpoint, processor, backbone={"lora": lora}, **kwargs)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, processor) -> Path:
    return make_peaked_checkpoint(tmp_path_factory.mktemp("turned") / "hf", processor, angle=ANGLE)


@pytest.fixture(scope="module")
def held_out(processor) -> dict[str, torch.Tensor]:
    return held_out_prompts(processor)


@pytest.fixture(scope="module")
def initial(checkpoint) -> torch.nn.Module:
    return load_policy(checkpoint)


@pytest.fixture(scope="module")
def start(initial, held_out, processor) -> tuple[float, float]:
    return starting_share(initial, held_out, processor.tokenizer)


@pytest.fixture(scope="module")
def base_run(checkpoint, processor):
    """LoRA on q_proj and v_proj, beta 0."""
    return train_lora(checkpoint, processor)


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_lora_learns_to_stop(base_run, start, held_out, processor):
    module, logs = base_run
    end = report(start, module.model, held_out, processor.tokenizer)
    assert end >= start[0] + RISE, (start, end)
    assert_logged_rise(logs)


@pytest.mark.slow
def test_lora_changes_the_adapters_only(base_run, initial):
    """Every parameter of the trained model that is not an adapter's equals the checkpoint's (the
    peft names mapped back to the model's), and the adapters moved off their initial B = 0."""
    module, _ = base_run
    before = initial.state_dict()
    adapters, base = {}, {}
    for name, p in module.model.named_parameters():
        assert p.requires_grad == (".lora_" in name), name  # the adapters alone are trained
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        (adapters if ".lora_" in name else base)[name] = p.detach()
    names = {n for n, _ in initial.named_parameters()}  # the tied head once, as the embedding
    assert set(base) == names, set(base) ^ names
    changed = [n for n, p in base.items() if not torch.equal(p, before[n])]
    assert not changed, changed
    ups = [p for n, p in adapters.items() if ".lora_B." in n]
    assert len(ups) == 2 * 2 and all(p.abs().max() > 0 for p in ups)  # q, v on both layers


@pytest.mark.slow
def test_lora_on_every_projection_learns_to_stop(checkpoint, processor, start, held_out):
    module, logs = train_lora(checkpoint, processor, targets=ALL_PROJECTIONS)
    end = report(start, module.model, held_out, processor.tokenizer)
    assert end >= start[0] + RISE, (start, end)
    assert_logged_rise(logs)


@pytest.mark.slow
def test_lora_negated_reward_moves_the_other_way(checkpoint, processor, start, held_out):
    module, _ = train_lora(checkpoint, processor, rewards=stop_reward(sign=-1.0))
    end = report(start, module.model, held_out, processor.tokenizer)
    assert end <= start[0] - FALL, (start, end)


@pytest.mark.slow
def test_lora_kl_to_the_adapterless_reference_holds_the_policy_near_its_start(
    base_run, checkpoint, processor, initial, held_out
):
    """beta = BETA against beta = 0 (the base run), same seed and data: the KL term pulls towards
    the base model with the adapters off, so the trained policy ends measurably closer to the
    initial policy (rebuilt from the checkpoint, KL on fresh samples) and stops at once less often."""
    free, _ = base_run
    held, logs = train_lora(checkpoint, processor, beta=BETA)
    tok = processor.tokenizer
    kl_free, kl_held = kl_to(free.model, initial, held_out, tok), kl_to(held.model, initial, held_out, tok)
    stops_free, _ = held_out_stops(free.model, held_out, tok)
    stops_held, _ = held_out_stops(held.model, held_out, tok)
    print(f"KL {kl_held:.3f} (beta {BETA}) vs {kl_free:.3f}; stops {stops_held:.3f} vs {stops_free:.3f}")
    assert kl_free > KL_MOVED, kl_free  # the free policy moved
    assert kl_held < KL_HELD_SHARE * kl_free, (kl_held, kl_free)
    assert stops_held < stops_free - 0.2, (stops_held, stops_free)
    assert max(s["train/kl"] for s in logs) > 0.0
