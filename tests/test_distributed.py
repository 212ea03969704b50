"""Two CPU processes (gloo): DDP replicas agree; FSDP2 shards, matches DDP, saves and resumes.

Each scenario runs this file as a ``torchrun`` worker (``python -m torch.distributed.run
--nproc_per_node 2 tests/test_distributed.py MODE OUT``): Lightning's launchers re-run the
calling script, which under pytest would be pytest itself. Workers write one JSON per rank (and
rank 0 the final full parameters); the tests compare those.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
STEPS = 2  # optimiser steps of the first run; the resume run adds one


# ------------------------------------------------------------------------------------------ worker
def _flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All parameters (full tensors, also under FSDP) as one fp32 vector, in name order."""
    parts = []
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        parts.append(t.detach().float().reshape(-1).cpu())
    return torch.cat(parts)


def _tiled_vs_full(module, data) -> dict:  # pragma: no cover - runs in torchrun children
    """Log-probs on the repeated-prompt path (the one FSDP takes) with the tiled head and with full
    logits, on the sharded model: the largest differences of the values and of this rank's gradient
    shards, and how many tokens went through the tiled function."""
    import univg.rl.rollout.logprobs as lp_module
    from univg.rl.rollout import completion_logprobs, model_inputs

    prompt = model_inputs(data.collator("generate")(data.samples["val"][:1]))
    ids = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    weights = torch.tensor([[1.0, -2.0, 0.5, 1.0, -1.0], [0.3, 1.0, -0.7, 0.0, 0.0]])
    tiled_tokens: list[int] = []
    real = lp_module.head_logprobs
    lp_module.head_logprobs = lambda h, *a: tiled_tokens.append(len(h)) or real(h, *a)
    model = module.model
    was_training = model.training
    model.eval()  # no dropout: both passes the same function
    runs = {}
    try:
        for tiled in (True, False):
            model.zero_grad(set_to_none=True)
            lp = completion_logprobs(model, prompt, ids, mask, 2, shared_prefix=False, tiled_head=tiled)
            (lp * weights).sum().backward()
            grads = {}
            for n, p in model.named_parameters():
                if p.grad is not None:
                    g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                    grads[n] = g.detach().float().clone()
            runs[tiled] = (lp.detach(), grads)
    finally:
        lp_module.head_logprobs = real
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    (lp_t, g_t), (lp_f, g_f) = runs[True], runs[False]
    rel = [float((g_t[n] - g_f[n]).abs().max() / g_f[n].abs().max().clamp_min(1e-12)) for n in g_f]
    return {
        "tiled_tokens": tiled_tokens,
        "logp_max_diff": float((lp_t - lp_f).abs().max()),
        "logp_mean": float(lp_f[mask.bool()].mean()),
        "grad_names": sorted(g_f) == sorted(g_t) and len(g_f),
        "grad_max_rel_diff": max(rel),
    }


def _worker(mode: str, out: Path) -> None:  # pragma: no cover - runs in torchrun children
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy

    from univg.data import SyntheticDataModule
    from univg.distributed import FSDP2Strategy, is_sharded, rank_state_bytes, shard_report
    from univg.model.backbone import BackboneSpec, LoRASpec
    from univg.modules import GRPOModule, SFTModule
    from univg.rl.rollout import generate, model_inputs

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    record: dict = {"rank": rank, "losses": []}

    class Recorder(Callback):
        def on_train_start(self, trainer, pl_module):
            record["start_step"] = trainer.global_step
            record["sharded"] = is_sharded(pl_module.model)
            record["shards"] = shard_report(pl_module.model)
            if getattr(pl_module, "ref_model", None) is not None:
                record["ref_sharded"] = is_sharded(pl_module.ref_model)
                record["ref_shards"] = shard_report(pl_module.ref_model)
            flat = _flat_params(pl_module.model)
            record["start_checksum"] = float(flat.double().sum())
            record["start_param_bytes"] = rank_state_bytes(pl_module.model)["parameters"]
            base = (
                pl_module.model.get_base_model()
                if hasattr(pl_module.model, "get_base_model")
                else pl_module.model
            )
            record["tied"] = base.lm_head.weight is base.model.language_model.embed_tokens.weight
            # full_tensor() is a collective: every rank gathers, rank 0 saves
            ref = getattr(pl_module, "ref_model", None)
            ref_flat = _flat_params(ref) if ref is not None else None
            if rank == 0 and mode in ("fsdp", "hf", "init"):
                torch.save(flat, out / f"{mode}_start_params.pt")
                if ref_flat is not None:
                    torch.save(ref_flat, out / f"{mode}_start_ref_params.pt")
            if mode == "lora":  # every parameter whole (a collective), and how each rank holds it
                from univg.distributed import frozen_root_params

                full = {
                    n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
                    for n, p in pl_module.model.named_parameters()
                }
                root = frozen_root_params(pl_module.model)
                record["root"] = {n: [str(p.dtype), hasattr(p, "full_tensor")] for n, p in root.items()}
                if rank == 0:
                    torch.save(full, out / "lora_start_params.pt")
            if mode == "resume":
                saved = torch.load(out / "fsdp_final_params.pt")
                record["start_matches_saved"] = bool(torch.equal(flat, saved))
                opt = trainer.optimizers[0]
                steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
                record["optimizer_steps"] = sorted(set(steps))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if outputs is not None and "loss" in outputs:
                record["losses"].append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):
            record["state_bytes"] = rank_state_bytes(pl_module.model, trainer.optimizers[0])
            flat = _flat_params(pl_module.model)
            gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flat)
            record["max_rank_diff"] = float((gathered[0] - gathered[1]).abs().max())
            if rank == 0:
                torch.save(flat, out / f"{mode}_final_params.pt")
            if mode == "lora":
                record["grpo_logs"] = {k: float(v) for k, v in pl_module.last_step_logs.items()}
            if mode in ("grpo", "lora"):
                record["tiled_vs_full"] = _tiled_vs_full(pl_module, trainer.datamodule)
            if mode == "grpo":
                # ranks ask for different lengths: without synced generation the all-gathers would
                # not pair up and this would hang
                data = trainer.datamodule
                batch = data.collator("generate")(data.samples["val"][:1])
                roll = generate(
                    pl_module.model, model_inputs(batch), pl_module.tokenizer, max_new_tokens=2 + 3 * rank
                )
                record["generated_lengths"] = roll.completion_ids.shape[1]
                record["grpo_logs"] = {
                    k: float(v) for k, v in getattr(pl_module, "last_step_logs", {}).items()
                }

    L.seed_everything(0)
    backbone = BackboneSpec(
        preset="tiny",
        checkpoint=str(out / "hf") if mode == "hf" else None,
        lora=LoRASpec() if mode == "lora" else None,
    )
    if mode in ("grpo", "init", "lora"):
        module = GRPOModule(
            backbone=backbone,
            init_checkpoint=str(out / "init.ckpt") if mode == "init" else None,
            lr=1e-3,
            group_size=2,
            max_completion_length=6,
            max_new_tokens=4,
            beta=0.04,
            prompts_per_step=2,
            log_completions_every=0,
        )
        data = SyntheticDataModule(num_train=4, num_val=2, tasks=["single"], image_size=56, batch_size=1)
    else:
        module = SFTModule(
            backbone=backbone, lr=1e-3, max_grad_norm=0.0, warmup_ratio=0.0, schedule="constant"
        )
        data = SyntheticDataModule(
            num_train=4 * STEPS + 4, num_val=2, tasks=["single"], image_size=56, batch_size=2, shuffle=False
        )
    if mode == "ddp":
        strategy = DDPStrategy(process_group_backend="gloo")
    elif mode == "lora":  # as configs/fsdp/*.yaml: bf16 all-gathers
        strategy = FSDP2Strategy(process_group_backend="gloo", param_dtype="bfloat16", reduce_dtype="float32")
    else:
        strategy = FSDP2Strategy(process_group_backend="gloo")
    callbacks = [Recorder()]
    ckpt_dir = out / "ckpt"
    if mode == "fsdp":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=STEPS + 1 if mode == "resume" else (1 if mode in ("grpo", "hf", "init", "lora") else STEPS),
        logger=False,
        enable_checkpointing=mode == "fsdp",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1 if mode == "grpo" else 0,
        val_check_interval=1 if mode == "grpo" else None,
        callbacks=callbacks,
        # as configs/sft.yaml: clipping by the trainer (over DTensor gradients under FSDP2)
        gradient_clip_val=None if mode in ("grpo", "init", "lora") else 1.0,
        default_root_dir=str(out),
    )
    ckpt = str(ckpt_dir / "last.ckpt") if mode == "resume" else None
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    if mode == "grpo":
        record["val"] = module.last_eval.get("val", {})
    if mode == "hf":
        record["checkpoint_dir"] = str(out / "hf")
    with open(out / f"{mode}_rank{rank}.json", "w") as f:
        json.dump(record, f)


# ------------------------------------------------------------------------------------------ tests
def _run(mode: str, out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE),
        mode,
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{mode} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """DDP, then FSDP2 (saving a sharded checkpoint), then FSDP2 resumed from it."""
    out = tmp_path_factory.mktemp("dist")
    return {mode: _run(mode, out) for mode in ("ddp", "fsdp", "resume")} | {"out": out}


@pytest.mark.slow
def test_ddp_replicas_are_identical_after_training(runs):
    ddp = runs["ddp"]
    assert all(len(r["losses"]) == STEPS for r in ddp)
    assert ddp[0]["losses"] != ddp[1]["losses"]  # each rank saw its own batches ...
    assert ddp[0]["max_rank_diff"] == 0.0  # ... and the all-reduced update kept them in lockstep
    assert not ddp[0]["sharded"]


@pytest.mark.slow
def test_fsdp_shards_every_parameter_across_ranks(runs):
    fsdp = runs["fsdp"]
    assert fsdp[0]["sharded"] and fsdp[1]["sharded"]
    names = fsdp[0]["shards"].keys()
    assert len(names) > 20
    for name in names:
        (l0, full), (l1, full1) = fsdp[0]["shards"][name], fsdp[1]["shards"][name]
        assert full == full1
        if _replicated(name):  # frozen, outside every unit: whole on both ranks
            assert l0 == l1 == full, name
            continue
        # dim-0 sharding: each rank holds a part, together exactly the whole
        assert l0 + l1 == full, name
        if full > 1:
            assert 0 < l0 < full, name
    # the tied 151,936 x 64 embedding trains (full fine-tuning): split in two halves
    emb = [n for n in names if n.endswith("embed_tokens.weight")][0]
    assert fsdp[0]["shards"][emb] == [75968 * 64, 151936 * 64]
    # what the two ranks store together: the model once, plus the replicated part a second time
    b0, b1 = fsdp[0]["state_bytes"], fsdp[1]["state_bytes"]
    total = sum(full for _, full in fsdp[0]["shards"].values()) * 4
    whole = sum(full for n, (_, full) in fsdp[0]["shards"].items() if _replicated(n)) * 4
    assert 0 < whole < 0.1 * total
    assert b0["parameters"] + b1["parameters"] == total + whole


def _split_but_frozen_root(shards: dict) -> bool:
    """Every parameter split across the ranks, except the frozen root ones (whole on each rank)."""
    return all(
        local == full if _replicated(name) else 0 < local < full
        for name, (local, full) in shards.items()
        if full > 1
    )


def _replicated(name: str) -> bool:
    """The tiny model's frozen root parameters in these runs (full fine-tuning, vision frozen)."""
    return ".visual.patch_embed." in name or ".visual.merger." in name


@pytest.mark.slow
def test_fsdp_ranks_materialise_only_their_shard_of_the_single_process_weights(runs):
    """Built on meta, each rank filled only its rows, and those rows are the weights one process
    builds with the same seed (the random draws replayed in the same order), bit for bit."""
    import lightning as L

    from univg.model.backbone import BackboneSpec

    fsdp = runs["fsdp"]
    total = sum(full for _, full in fsdp[0]["shards"].values()) * 4  # fp32 bytes of the whole model
    whole = sum(full for n, (_, full) in fsdp[0]["shards"].items() if _replicated(n)) * 4
    for r in fsdp:
        # about half of the sharded part each (dim-0 chunks: at most one row more than half per
        # tensor), plus the replicated frozen part whole
        half = (total - whole) / 2 + whole
        assert abs(r["start_param_bytes"] - half) < 0.001 * total, r["start_param_bytes"]
        assert r["tied"]  # the tied head is still the embedding's parameter
    assert fsdp[0]["start_param_bytes"] + fsdp[1]["start_param_bytes"] == total + whole
    L.seed_everything(0)
    single = _flat_params(BackboneSpec(preset="tiny").build())
    assert torch.equal(torch.load(runs["out"] / "fsdp_start_params.pt"), single)


@pytest.mark.slow
def test_fsdp_step_matches_ddp(runs):
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    for r in (0, 1):
        # step 1: same init, same batch; step 2: after the same update
        assert fsdp[r]["losses"] == pytest.approx(ddp[r]["losses"], rel=1e-5, abs=1e-6)
    assert fsdp[0]["max_rank_diff"] == 0.0  # the gathered full parameters agree across ranks
    a = torch.load(runs["out"] / "ddp_final_params.pt")
    b = torch.load(runs["out"] / "fsdp_final_params.pt")
    assert float((a - b).abs().max()) < 1e-5


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_resumes(runs):
    ckpt = runs["out"] / "ckpt" / "last.ckpt"
    assert ckpt.is_dir()  # one shard file per rank plus metadata
    assert len(list(ckpt.glob("*.distcp"))) == 2 and (ckpt / "meta.pt").is_file()
    # written as .last.ckpt.partial and put in place whole: nothing of the write is left beside it
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")) == []
    resume = runs["resume"]
    for r in resume:
        assert r["start_step"] == STEPS
        assert r["start_matches_saved"]  # weights exactly as saved
        assert r["optimizer_steps"] == [float(STEPS)]  # AdamW moments and step counts restored
        assert len(r["losses"]) == 1  # then trains the one remaining step


@pytest.mark.slow
def test_sharded_checkpoint_consolidates_for_init_checkpoint(runs, tmp_path):
    from univg.model.backbone import BackboneSpec
    from univg.model.checkpoints import load_model_weights

    # the command make/grid.mk runs on a sharded run's last checkpoint
    out = tmp_path / "weights.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "univg.sharded_checkpoint",
        "weights",
        str(runs["out"] / "ckpt" / "last.ckpt"),
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == str(out), proc.stderr[-3000:]
    state = torch.load(out, weights_only=False)
    assert state["global_step"] == STEPS and "optimizer_states" not in state
    model = BackboneSpec(preset="tiny").build()
    load_model_weights(model, out)  # how stage 2 starts from a sharded stage-1 run
    assert torch.equal(_flat_params(model), torch.load(runs["out"] / "fsdp_final_params.pt"))


@pytest.mark.slow
def test_grpo_under_fsdp_shards_reference_and_generates_in_sync(tmp_path):
    ranks = _run("grpo", tmp_path)
    for r in ranks:
        assert r["sharded"] and r["ref_sharded"]
        assert _split_but_frozen_root(r["ref_shards"])
        assert "train/loss" in r["grpo_logs"] and r["grpo_logs"]["train/kl"] >= 0.0
        assert r["val"]["count"] == 2.0  # each rank evaluated one of the 2 prompts; results gathered once
    assert [r["generated_lengths"] for r in ranks] == [2, 5]
    for r in ranks:  # full fine-tuning, fp32: the tiled head under FSDP's gathered root
        check = r["tiled_vs_full"]
        assert check["tiled_tokens"] == [8]  # 5 + 3 real completion tokens, nothing else
        assert check["logp_max_diff"] < 1e-5 and check["logp_mean"] < -5.0
        assert check["grad_names"] > 0 and check["grad_max_rel_diff"] < 1e-4


@pytest.mark.slow
def test_fsdp_reads_each_rank_rows_of_a_hf_checkpoint(tmp_path):
    """``backbone.checkpoint`` under FSDP: the safetensors rows each rank reads make up exactly the
    model ``from_pretrained`` loads in one process (released key names, tied head stored once)."""
    import lightning as L

    from univg.model.backbone import BackboneSpec, load_pretrained
    from univg.model.tokenizer import load_tokenizer

    L.seed_everything(1)  # other weights than the seed-0 random init the worker would draw
    BackboneSpec(preset="tiny").build().save_pretrained(tmp_path / "hf")
    load_tokenizer().save_pretrained(tmp_path / "hf")
    ranks = _run("hf", tmp_path)
    assert all(r["sharded"] and r["tied"] for r in ranks)
    loaded = _flat_params(load_pretrained(tmp_path / "hf"))
    assert torch.equal(torch.load(tmp_path / "hf_start_params.pt"), loaded)


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
    ranks = _run("init", tmp_path)
    for r in ranks:
        assert r["sharded"] and r["ref_sharded"]
        assert _split_but_frozen_root(r["ref_shards"])
    expected = _flat_params(model)
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

    ranks = _run("lora", tmp_path)
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


if __name__ == "__main__":  # torchrun worker
    _worker(sys.argv[1], Path(sys.argv[2]))


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
