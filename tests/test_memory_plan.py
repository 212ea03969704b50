"""benchmarks/memory_plan.py's host-memory model, against bytes counted by hand on a made-up shape."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from memory_plan import Shape, gathered_bytes, host_plan, transient  # noqa: E402

# 1,000 parameters: 300 vision (20 of them in the root), 100 in the root unit, layers of 50,
# the largest parameter 80, 10 LoRA parameters. No tokens: activations and logits are 0.
S = Shape(
    total=1000, vision=300, root=100, layer=50, hidden=4, kv_hidden=2, intermediate=8,
    layers=4, vocab=16, largest=80, lora=10, root_vision=20,
)  # fmt: skip


def test_frozen_root_is_the_whole_root_with_lora_and_its_vision_part_without():
    assert S.frozen_root(lora=True) == 100 and S.frozen_root(lora=False) == 20


def test_gathered_bytes_is_the_root_held_twice_or_the_root_plus_two_layers_held_twice():
    assert gathered_bytes(S, 2) == 2 * max(2 * 100, 100 + 4 * 50)  # 600: root + two layers x 2
    assert gathered_bytes(S, 2, root=0) == 2 * 4 * 50  # 400: nothing of the root gathered
    assert gathered_bytes(S, 4, root=300) == 4 * 2 * 300  # 2400: the root's own gather dominates


@pytest.mark.parametrize(
    ("replicate", "params", "gathered"),
    [
        # whole root in bf16: 2 x 100, plus the fp32 rows of the other 900 and the 10 adapters / 2
        (True, 2 * 100 + 4 * 910 / 2, 2 * 4 * 50),
        # everything sharded: 4 x 1010 / 2, and the root gathered on top of two layers
        (False, 4 * 1010 / 2, 2 * (100 + 4 * 50)),
    ],
)
def test_lora_on_two_ranks_costs_the_same_bytes_whole_and_drops_the_root_gather(replicate, params, gathered):
    plan = host_plan(S, 2, lora=True, stage="grpo", tokens=0, logit_tokens=0, replicate_frozen_root=replicate)
    assert plan["parameters"] == params == 2020
    assert plan["gradients"] == 4 * 10 / 2 and plan["optimizer"] == 8 * 10 / 2
    assert plan["gathered"] == gathered
    assert plan["step"] == params + 20 + 40 + gathered
    assert plan["build"] == params + 4 * 80  # one full parameter of scratch


def test_full_finetuning_reference_and_fp32_gathers():
    plan = host_plan(S, 4, lora=False, stage="grpo", tokens=0, logit_tokens=0, reference=True, gather_bytes=4)
    sharded = 4 * (1000 - 20) / 4  # the frozen vision root (20) is whole, in fp32 here
    assert plan["parameters"] == 2 * (sharded + 4 * 20)  # policy and reference alike
    assert plan["gradients"] == 4 * 700 / 4 and plan["optimizer"] == 8 * 700 / 4
    # the trainable root (80) is gathered: max(2 x 80, 80 + 200) elements in fp32, plus a layer's
    # fp32 gradients twice before their reduce-scatter
    assert plan["gathered"] == 4 * (80 + 4 * 50) + 4 * 2 * 50


def test_one_process_holds_everything_and_gathers_nothing():
    plan = host_plan(S, 1, lora=True, stage="grpo", tokens=0, logit_tokens=0, build="single")
    assert plan["parameters"] == 4 * 1010 and plan["gathered"] == 0.0 and plan["build"] == 4 * 1000


def test_grpo_logits_are_one_tile_and_sft_logits_every_answer_token():
    # fp32 logits and their gradient, 4 + 4 bytes per vocab entry: SFT holds all 1,000 rows, GRPO's
    # tiled head one tile of 64 (fewer when there are fewer tokens)
    assert transient(S, 0, 1000)["logits"] == 8 * 1000 * 16
    assert transient(S, 0, 1000, tiled=True)["logits"] == 8 * 64 * 16
    assert transient(S, 0, 10, tiled=True)["logits"] == 8 * 10 * 16
    assert host_plan(S, 1, False, "grpo", 0, 1000, "single")["logits"] == 8 * 64 * 16
    assert host_plan(S, 1, False, "sft", 0, 1000, "single")["logits"] == 8 * 1000 * 16
