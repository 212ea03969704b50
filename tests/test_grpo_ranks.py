"""GRPO on 2 CPU processes (gloo) when one process keeps no group: no process waits forever.

With ``drop_zero_variance`` (or dynamic sampling) a process whose groups all have equal rewards
keeps none. It still runs the reference and old-policy passes and the policy forward/backward, as
the other process waits in the matching collectives (FSDP's all-gathers, the gradient reduction):
skipping them ends in "Timed out waiting". Here rank 0's completions differ in reward and rank 1's do not,
with a reference (beta > 0), an old policy (num_iterations 2) and chunked log-prob passes. The
collectives time out after 60 s, so the fault shows as a failure, not a hang.

Each scenario runs this file as a ``torchrun`` worker (tests/torchrun_helpers.py); workers write one
JSON per rank.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torchrun_helpers import run_ranks

HERE = Path(__file__).resolve()
MIXED = ["<think>a</think><answer>(10, 10), (500, 500)</answer>", "junk"]  # rewards differ
SAME = ["junk", "junk"]  # zero variance: dropped


def _worker(mode: str, out: Path) -> None:  # pragma: no cover - runs in torchrun children
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    sys.path.insert(0, str(HERE.parent))
    from scripted_engine import Scripted

    from univg.data import SyntheticDataModule
    from univg.distributed import FSDP2Strategy
    from univg.model.backbone import BackboneSpec
    from univg.modules import GRPOModule

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    record: dict = {"rank": rank, "logs": []}

    def flat(module) -> torch.Tensor:
        parts = [
            (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().reshape(-1)
            for _, p in sorted(module.model.named_parameters(), key=lambda kv: kv[0])
        ]
        return torch.cat(parts)

    class Recorder(L.Callback):
        def on_train_start(self, trainer, module):
            self.start = flat(module)

        def on_train_batch_end(self, trainer, module, *args):
            logs = getattr(module, "last_step_logs", None)
            if logs is not None and (not record["logs"] or record["logs"][-1] != logs):
                record["logs"].append({k: float(v) for k, v in logs.items()})

        def on_train_end(self, trainer, module):
            end = flat(module)
            record["steps"] = trainer.global_step
            record["weight_change"] = float((end - self.start).abs().max())
            both = [torch.zeros_like(end) for _ in range(2)]
            dist.all_gather(both, end)
            record["max_rank_diff"] = float((both[0] - both[1]).abs().max())

    L.seed_everything(0)
    dynamic = mode == "dynamic"
    module = GRPOModule(
        backbone=BackboneSpec(preset="tiny"),
        lr=1e-3,
        group_size=2,
        max_completion_length=16,
        beta=0.04,
        num_iterations=1 if dynamic else 2,
        drop_zero_variance=not dynamic,
        dynamic_sampling={"max_tries": 4} if dynamic else None,
        logprob_chunk_size=2,
        prompts_per_step=4,
        log_completions_every=0,
        engine=Scripted([MIXED if rank == 0 else SAME], None, cycle=True),
    )
    module.engine.tok = module.tokenizer
    data = SyntheticDataModule(
        num_train=16 if dynamic else 4,
        num_val=0,
        tasks=["single"],
        image_size=56,
        train_mode="generate",
        batch_size=2,
    )
    timeout = timedelta(seconds=60)
    if mode in ("ddp", "dynamic"):
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timeout)
    else:
        strategy = FSDP2Strategy(process_group_backend="gloo", timeout=timeout)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=1 if dynamic else 2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Recorder()],
    )
    trainer.fit(module, datamodule=data)
    with open(out / f"{mode}_rank{rank}.json", "w") as f:
        json.dump(record, f)


def _run(mode: str, out: Path) -> list[dict]:
    return run_ranks(HERE, mode, out, timeout=400)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_rank_that_keeps_no_group_still_steps_with_the_others(mode, tmp_path):
    ranks = _run(mode, tmp_path)
    for r in ranks:
        assert r["steps"] == 2  # num_iterations 2 over the one rollout batch: both updates made
        assert r["weight_change"] > 0.0  # rank 0's groups trained everyone's replica / shard
        assert r["max_rank_diff"] == 0.0
    # rank 0 kept both its groups, rank 1 dropped both (and scored them as padding only)
    assert ranks[0]["logs"][-1].get("completions/dropped_groups", 0.0) == 0.0
    assert ranks[1]["logs"][-1]["completions/dropped_groups"] == 2.0
    assert ranks[1]["logs"][-1]["train/zero_variance_frac"] == 1.0


@pytest.mark.slow
def test_dynamic_sampling_counts_only_kept_groups_not_padding(tmp_path):
    """DDP with dynamic sampling: each draw keeps rank 0's 2 prompts, rank 1 scores 2 padding groups.
    A step of 4 prompts needs 2 draws (counting the padding as kept filled it after 1)."""
    ranks = _run("dynamic", tmp_path)
    for r in ranks:
        assert r["steps"] == 1 and r["weight_change"] > 0.0 and r["max_rank_diff"] == 0.0
        logs = r["logs"][-1]
        assert logs["dynamic/tries"] == 2.0 and logs["dynamic/fill"] == 1.0
        assert logs["dynamic/kept_share"] == 0.5  # 4 of the 8 prompts drawn


if __name__ == "__main__":  # torchrun worker
    _worker(sys.argv[1], Path(sys.argv[2]))
