"""Host memory and time per rank of building a backbone and running one optimiser step (CPU, gloo).

    python benchmarks/fsdp_memory.py --preset qwen2-vl-2b --procs 2 --lora            # FSDP2, meta init
    python benchmarks/fsdp_memory.py --preset qwen2-vl-2b --procs 2 --lora --legacy-build
    python benchmarks/fsdp_memory.py --preset qwen2-vl-2b --procs 2 --lora --shard-frozen-root
    python benchmarks/fsdp_memory.py --preset qwen2-vl-2b --procs 1 --lora            # one process, no FSDP
    python benchmarks/fsdp_memory.py --preset tiny --procs 2 --stage sft             # the runtime's fixed cost

``--procs N`` (N > 1) starts N ranks with ``torchrun`` and trains through ``trainer.fit`` with
:class:`univg.distributed.FSDP2Strategy` (gloo), i.e. the code path of ``python -m univg fit`` with a
``configs/fsdp/*.yaml`` overlay: FSDP2 with bf16 all-gathers and fp32 reduction, fp32 master weights,
activation checkpointing. ``--legacy-build`` sets ``meta_init: false`` (every rank builds the full
model, then shards it: the path before meta init); ``--shard-frozen-root`` shards the root's frozen
parameters (with LoRA: embedding and tied head) instead of replicating them (the layout before
``replicate_frozen_root``). ``--procs 1`` is the plain single-process
``fit`` (no strategy). One step on short sequences: one synthetic ``--image-size`` image per
prompt, one prompt per rank; GRPO samples G ``--group-size`` completions of ``--new-tokens`` tokens.

On a CPU without native bf16 arithmetic (no AVX-512 BF16 or AMX) the 16-bit matrix products run as
fp32 tiles (``--bf16-matmul auto``, see ``benchmarks/cpu_bf16.py``): PyTorch's portable bf16 kernel
makes the backward of the 2B step take hours there. The saved tensors, and so the memory measured,
are those of the native kernel plus a few fp32 tiles of at most 16 MB each; ``--bf16-matmul native`` keeps
PyTorch's kernel. The line records which ran (``bf16_matmul``).

Prints one JSON line per rank: ``peak_rss_gb`` (the process's peak resident set, GB = 1e9 bytes),
``peak_rss_build_gb`` (the peak up to the end of the build), ``param_bytes_local`` (bytes of
parameters this rank stores, reference model included), ``seconds_build`` (``configure_model`` and
the strategy's set-up, from the ``setup`` hook to ``on_fit_start``), ``seconds_step`` (the one
training step, rollout included for GRPO) and the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cpu_bf16  # benchmarks/ is on sys.path: the script's own folder

GB = 1e9


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # ru_maxrss is KiB on Linux


def worker(args: argparse.Namespace) -> None:  # pragma: no cover - runs in the spawned ranks
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from univg.data import SyntheticDataModule
    from univg.distributed import FSDP2Strategy, rank_state_bytes
    from univg.model.backbone import BackboneSpec, LoRASpec
    from univg.modules import GRPOModule, SFTModule

    torch.set_num_threads(args.threads)
    matmuls, matmul_kind = cpu_bf16.matmul_context(args.bf16_matmul)
    procs = args.procs
    record: dict = {
        "preset": args.preset,
        "procs": procs,
        "stage": args.stage,
        "lora": args.lora,
        "build": "single" if procs == 1 else ("legacy" if args.legacy_build else "meta"),
        "image_size": args.image_size,
        "param_dtype": args.param_dtype if procs > 1 else None,
        "replicate_frozen_root": procs > 1 and not args.shard_frozen_root,
        "precision": args.precision,
        "threads": args.threads,
        "bf16_matmul": matmul_kind,
    }

    class Measure(Callback):
        def setup(self, trainer, pl_module, stage):
            self.t0 = time.perf_counter()

        def on_fit_start(self, trainer, pl_module):
            record["seconds_build"] = round(time.perf_counter() - self.t0, 2)
            record["peak_rss_build_gb"] = round(_peak_rss_gb(), 3)
            local = rank_state_bytes(pl_module.model)["parameters"]
            ref = getattr(pl_module, "ref_model", None)
            if ref is not None:
                local += rank_state_bytes(ref)["parameters"]
            record["param_bytes_local"] = local
            self.write(trainer)  # the build's figures survive a step that does not finish

        def write(self, trainer):
            record["rank"] = trainer.global_rank
            record["peak_rss_gb"] = round(_peak_rss_gb(), 3)
            with open(Path(args.out) / f"rank{trainer.global_rank}.json", "w") as f:
                json.dump(record, f)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t1 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record["seconds_step"] = round(time.perf_counter() - self.t1, 2)
            if isinstance(outputs, dict) and "loss" in outputs:
                record["loss"] = float(outputs["loss"])
            logs = getattr(pl_module, "last_step_logs", None)
            if logs and "train/loss" in logs:
                record["loss"] = float(logs["train/loss"])

    L.seed_everything(0)
    backbone = BackboneSpec(
        preset=args.preset,
        lora=LoRASpec() if args.lora else None,
        gradient_checkpointing=True,
        dtype="float32",
    )
    if args.stage == "grpo":
        module = GRPOModule(
            backbone=backbone,
            group_size=args.group_size,
            max_completion_length=args.new_tokens,
            max_new_tokens=args.new_tokens,
            beta=0.04,
            prompts_per_step=procs,
            log_completions_every=0,
        )
    else:
        module = SFTModule(backbone=backbone, warmup_ratio=0.0, schedule="constant")
    data = SyntheticDataModule(
        num_train=procs, num_val=0, tasks=["single"], image_size=args.image_size, batch_size=1, shuffle=False
    )
    if procs > 1:
        strategy = FSDP2Strategy(
            process_group_backend="gloo",
            param_dtype=args.param_dtype,
            reduce_dtype="float32",
            meta_init=not args.legacy_build,
            replicate_frozen_root=not args.shard_frozen_root,
        )
        devices = procs
    else:
        strategy, devices = "auto", 1
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        precision=args.precision,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Measure()],
        default_root_dir=args.out,
    )
    measure = trainer.callbacks[0] if isinstance(trainer.callbacks[0], Measure) else None
    with matmuls:
        trainer.fit(module, datamodule=data)
    record["finished"] = True
    (measure or Measure()).write(trainer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2-vl-2b", choices=["tiny", "qwen2-vl-2b", "qwen2-vl-7b"])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--lora", action="store_true", help="LoRA adapters (peft) instead of full fine-tuning")
    p.add_argument("--stage", default="grpo", choices=["grpo", "sft"])
    p.add_argument(
        "--legacy-build", action="store_true", help="every rank builds the full model (meta_init: false)"
    )
    p.add_argument(
        "--shard-frozen-root",
        action="store_true",
        help="shard the root's frozen parameters too (replicate_frozen_root: false, the earlier layout)",
    )
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--group-size", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--param-dtype", default="bfloat16", help="FSDP all-gather/compute dtype (null: fp32)")
    p.add_argument("--precision", default="32-true", help="Lightning precision (32-true, bf16-mixed)")
    p.add_argument("--threads", type=int, default=1)
    cpu_bf16.add_argument(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop the ranks after this many seconds (build figures kept)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.param_dtype in ("null", "none", "None"):
        args.param_dtype = None
    if args.worker:
        worker(args)
        return 0
    if args.procs < 1:
        p.error("--procs must be >= 1")
    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    )
    with tempfile.TemporaryDirectory() as tmp:
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
        launcher = [sys.executable]
        if args.procs > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.procs)]
        cmd = launcher + [str(Path(__file__).resolve()), *forwarded, "--worker", "--out", tmp]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:  # stop every rank; what they wrote so far is still printed
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            stderr += f"\nstopped after --timeout {args.timeout} s"
        if proc.returncode != 0:
            sys.stderr.write(stdout[-3000:] + stderr[-6000:])
            print(json.dumps({"error": f"worker exited with {proc.returncode}", "preset": args.preset}))
        for r in range(args.procs):  # an unfinished rank's line has the build figures only
            path = Path(tmp) / f"rank{r}.json"
            if path.is_file():
                print(path.read_text())
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
