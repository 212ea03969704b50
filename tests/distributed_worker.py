"""The ``torchrun`` worker of tests/test_distributed.py and tests/test_distributed_grpo.py: one tiny
fit on 2 CPU processes (gloo) per MODE, each rank writing what the tests check to
``OUT/MODE_rank{r}.json`` (rank 0 also the full parameters as ``.pt`` files).

Modes: ``ddp``, ``fsdp`` (saves a sharded checkpoint), ``resume`` (from it) and ``hf`` (FSDP from a
Hugging Face folder) fit the SFT module; ``grpo``, ``init`` (from a univg ``.ckpt``) and ``lora``
(bf16 all-gathers) fit the GRPO module under FSDP2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torchrun_helpers import flat_params, run_ranks

HERE = Path(__file__).resolve()
STEPS = 2  # optimiser steps of the first run; the resume run adds one


def run(mode: str, out: Path) -> list[dict]:
    """This worker in MODE on 2 processes; each rank's record."""
    return run_ranks(HERE, mode, out)


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


def worker(mode: str, out: Path) -> None:  # pragma: no cover - runs in torchrun children
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
            flat = flat_params(pl_module.model)
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
            ref_flat = flat_params(ref) if ref is not None else None
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
            flat = flat_params(pl_module.model)
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


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
