"""Two CPU processes (gloo) fitting the GRPO module under FSDP2: the frozen reference is sharded like
the policy and generation stays in sync across ranks; ``init_checkpoint`` starts policy and reference
from its weights; LoRA with bf16 all-gathers holds the frozen root whole. Each scenario runs
tests/distributed_worker.py under ``torchrun``.
"""

from __future__ import annotations

import math

import pytest
import torch
from distributed_worker import run
from torchrun_helpers import flat_params, split_but_frozen_root


@pytest.mark.slow
def test_grpo_under_fsdp_shards_reference_and_generates_in_sync(tmp_path):
    ranks = run("grpo", tmp_path)
    for r in ranks:
        assert r["sharded"] and r["ref_sharded"]
        assert split_but_frozen_root(r["ref_shards"])
        assert "train/loss" in r["grpo_logs"] and r["grpo_logs"]["train/kl"] >= 0.0
        assert r["val"]["count"] == 2.0  # each rank evaluated one of the 2 prompts; results gathered once
    assert [r["generated_lengths"] for r in ranks] == [2, 5]
    for r in ranks:  # full fine-tuning, fp32: the tiled head under FSDP's gathered root
        check = r["tiled_vs_full"]
        assert check["tiled_tokens"] == [8]  # 5 + 3 real completion tokens, nothing else
        assert check["logp_max_diff"] < 1e-5 and check["logp_mean"] < -5.0
        assert check["grad_names"] > 0 and check["grad_max_rel_diff"] < 1e-4


@pytest.mark.slow
def test_fsdp_init_checkpoint_and_full_finetuning_reference(tmp_path):
    """``init_checkpoint`` (a univg .ckpt) under FSDP: policy and frozen reference both start from
    its weights, the reference sharded like the policy and built without a full copy."""
    import lightning as L

    from univg.model.backbone import BackboneSpec

    L.seed_everything(2)
    model = BackboneSpec(preset="tiny").build()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "init.ckpt")
    ranks = run("init", tmp_path)
    for r in ranks:
        assert r["sharded"] and r["ref_sharded"]
        assert split_but_frozen_root(r["ref_shards"])
    expected = flat_params(model)
    assert torch.equal(torch.load(tmp_path / "init_start_params.pt"), expected)
    assert torch.equal(torch.load(tmp_path / "init_start_ref_params.pt"), expected)


@pytest.mark.slow
def test_fsdp_lora_holds_the_frozen_root_whole_in_bf16(tmp_path):
    """LoRA under FSDP2 with bf16 all-gathers: the frozen root (tied embedding and head, final norm,
    vision patch embedding and merger) is whole on every rank, in bf16, equal to the single-process
    build's weights rounded to bf16; everything else is sharded and equals that build bit for bit
    (the probe build that finds the root draws no random numbers)."""
    import lightning as L

    from univg.model.backbone import BackboneSpec, LoRASpec

    ranks = run("lora", tmp_path)
    names = set(ranks[0]["root"])
    assert any(n.endswith("embed_tokens.weight") for n in names) and len(names) == 9
    for r in ranks:
        assert r["root"] == {n: ["torch.bfloat16", False] for n in names}  # whole, not a DTensor
        assert r["tied"] and math.isfinite(r["grpo_logs"]["train/loss"])
        # the replicated bf16 head: the tiled path rounds logits to bf16 as the head does
        check = r["tiled_vs_full"]
        assert check["tiled_tokens"] == [8] and check["logp_max_diff"] < 1e-3
        assert check["grad_names"] > 0 and check["grad_max_rel_diff"] < 2e-2
        assert all(
            0 < local < full for n, (local, full) in r["shards"].items() if n not in names and full > 1
        )
    L.seed_everything(0)
    single = dict(BackboneSpec(preset="tiny", lora=LoRASpec()).build().named_parameters())
    full = torch.load(tmp_path / "lora_start_params.pt")
    assert set(full) == set(single)
    for name, value in full.items():
        expected = single[name].detach().to(torch.bfloat16) if name in names else single[name].detach()
        assert value.dtype == expected.dtype and torch.equal(value, expected), name


def test_make_reference_is_a_frozen_copy_of_the_policy():
    """One rule for the reference, single-process and FSDP alike (the sharded branch runs in
    test_grpo_under_fsdp_shards_reference_and_generates_in_sync)."""
    from univg.distributed import make_reference
    from univg.model.backbone import BackboneSpec
    from univg.modules import GRPOModule

    policy = BackboneSpec(preset="tiny").build().train()
    ref = make_reference(policy)
    assert ref is not policy and not ref.training and not any(p.requires_grad for p in ref.parameters())
    for (name, a), (_, b) in zip(policy.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    # the module's rule for when one is made: beta > 0, no LoRA, none yet
    assert GRPOModule(beta=0.04).needs_reference and not GRPOModule(beta=0.0).needs_reference
