"""GRPO-Difficulty steps of a full-size backbone on one accelerator, through the config users run.

    python benchmarks/gpu_step.py --preset qwen2-vl-2b                    # configs/grpo_diff.yaml, bf16-mixed
    python benchmarks/gpu_step.py --preset qwen2-vl-2b --fsdp             # + configs/fsdp/2b_8gpu.yaml, 1 rank
    python benchmarks/gpu_step.py --preset qwen2-vl-7b --lora --steps 2
    python benchmarks/gpu_step.py --preset tiny --accelerator cpu --new-tokens 8 --group-size 2   # smoke

The run is ``python -m univg fit --config configs/grpo_diff.yaml`` (plus the FSDP overlay with
``--fsdp``) built by :func:`univg.cli.main` with overrides only: the preset with random weights (no
checkpoint is read), no stage-1 checkpoint, synthetic single-image prompts of ``--image-size``
pixels, ``--prompts`` prompts per optimiser step, G ``--group-size``, ``--new-tokens`` new
tokens, no logger, no checkpoints, no validation. Everything else (precision, gradient
checkpointing, frozen vision tower, fp32 master weights, beta, lr, the rollout engine, sampling) is
the config's. A random model almost never writes its end token, so every completion runs to
``--new-tokens``.

Prints one JSON line: the build's seconds, each optimiser step's seconds and the module's own
split of it (generation, scoring, backward), completions and tokens per second (prompt tokens x G
plus completion tokens), peak accelerator memory (``max_memory_allocated`` and
``max_memory_reserved``, GiB) after the build and over the steps, and the host's peak RSS.
The first ``--warmup`` steps (CUDA kernels' first calls, allocator growth) are reported apart.
With ``--accelerator cpu``, 16-bit matrix products run as fp32 tiles on CPUs without bf16
arithmetic (``--bf16-matmul``, ``benchmarks/cpu_bf16.py``); the line records which ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cpu_bf16  # benchmarks/ is on sys.path: the script's own folder

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
FSDP_OVERLAY = {"qwen2-vl-2b": "2b_8gpu.yaml", "qwen2-vl-7b": "7b_8gpu.yaml"}


def fit_args(
    preset: str,
    *,
    lora: bool,
    prompts: int,
    group_size: int,
    new_tokens: int,
    image_size: int,
    steps: int,
    accelerator: str,
    out: str,
    fsdp: bool = False,
    engine: str = "shared",
    precision: str | None = None,
    logger: dict[str, Any] | None = None,
) -> list[str]:
    """The ``univg fit`` arguments (without ``fit``): the paper's GRPO-Difficulty config, then
    overrides only (also ``tests/test_scale_2b.py``'s command). ``logger`` None: no logger."""
    # as configs/grpo_diff.yaml's backbone (frozen vision, checkpointing, fp32 master weights), with
    # the preset's random weights and optionally LoRA
    backbone: dict[str, Any] = {
        "preset": preset,
        "checkpoint": None,
        "freeze_vision": True,
        "gradient_checkpointing": True,
        "dtype": "float32",
    }
    if lora:
        backbone["lora"] = {"r": 8, "alpha": 16, "dropout": 0.05}
    data = {
        "class_path": "univg.data.SyntheticDataModule",
        "init_args": {
            "num_train": prompts * steps,
            "num_val": 0,
            "tasks": ["single"],
            "image_size": image_size,
            "batch_size": prompts,
            "shuffle": False,
        },
    }
    m = "--model.init_args."
    argv = ["--config", str(ROOT / "configs" / "grpo_diff.yaml")]
    if fsdp:
        argv += ["--config", str(ROOT / "configs" / "fsdp" / FSDP_OVERLAY.get(preset, "2b_8gpu.yaml"))]
    argv += [
        # the whole backbone as one value: a dotted "checkpoint null" would parse as the string 'None'
        f"{m}backbone", json.dumps(backbone),
        f"{m}init_checkpoint", "null",
        f"{m}group_size", str(group_size),
        f"{m}max_completion_length", str(new_tokens),
        f"{m}max_new_tokens", str(new_tokens),
        f"{m}prompts_per_step", str(prompts),
        f"{m}log_completions_every", "0",
        "--data", json.dumps(data),
        "--trainer.accelerator", accelerator,
        "--trainer.devices", "1",
        "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false",
        "--trainer.logger", json.dumps(logger) if logger else "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", out,
    ]  # fmt: skip
    if engine == "hf":
        argv += [f"{m}engine", "univg.engines.HFGenerate"]
    if precision:
        argv += ["--trainer.precision", precision]
    return argv


def cli_args(args: argparse.Namespace, out: str) -> list[str]:
    """:func:`fit_args` for this script's command line (no subcommand: built with ``run=False``)."""
    return fit_args(
        args.preset,
        lora=args.lora,
        prompts=args.prompts,
        group_size=args.group_size,
        new_tokens=args.new_tokens,
        image_size=args.image_size,
        steps=args.warmup + args.steps,
        accelerator=args.accelerator,
        out=out,
        fsdp=args.fsdp,
        engine=args.engine,
        precision=args.precision,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import lightning as L
    import torch

    from univg.cli import main as cli_main

    cuda = torch.cuda.is_available() and args.accelerator != "cpu"
    record: dict[str, Any] = {
        "preset": args.preset,
        "lora": args.lora,
        "fsdp": args.fsdp,
        "engine": args.engine,
        "prompts": args.prompts,
        "group_size": args.group_size,
        "new_tokens": args.new_tokens,
        "image_size": args.image_size,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
    }

    def peak(reset: bool = False) -> dict[str, float]:
        out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
        if cuda:
            out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
            if reset:
                torch.cuda.reset_peak_memory_stats()
        return {k: round(v, 3) for k, v in out.items()}

    class Measure(L.Callback):
        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            self.t0 = time.perf_counter()

        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            record["precision"] = str(trainer.precision)
            record["strategy"] = type(trainer.strategy).__name__
            record["parameters"] = sum(p.numel() for p in pl_module.model.parameters())
            record["trainable"] = sum(p.numel() for p in pl_module.model.parameters() if p.requires_grad)
            record["seconds_build"] = round(time.perf_counter() - self.t0, 2)
            record["memory_build"] = peak(reset=True)
            self.steps: list[dict[str, float]] = []
            self.done, self.t = trainer.global_step, time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
            if trainer.global_step == self.done:
                return  # a micro-batch inside an optimiser step
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            logs = dict(getattr(pl_module, "last_step_logs", {}) or {})
            step = {"seconds": now - self.t}
            for key in ("generation", "scoring", "backward", "weight_sync"):
                if f"perf/{key}_seconds" in logs:
                    step[key] = logs[f"perf/{key}_seconds"]
            for key in ("perf/tokens_per_second", "completions/length_mean", "train/loss", "train/kl"):
                if key in logs:
                    step[key.split("/")[1]] = logs[key]
            step["tokens"] = logs.get("perf/tokens_per_second", 0.0) * logs.get("perf/seconds_per_step", 0.0)
            self.steps.append(step)
            if len(self.steps) == args.warmup:
                record["memory_warmup"] = peak(reset=True)
            self.done, self.t = trainer.global_step, time.perf_counter()

    sys.argv[1:] = []  # LightningCLI reads the list below, not this script's flags
    matmuls, record["bf16_matmul"] = cpu_bf16.matmul_context("native" if cuda else args.bf16_matmul)
    with tempfile.TemporaryDirectory() as out:
        cli = cli_main(cli_args(args, out), run=False)
        measure = Measure()
        cli.trainer.callbacks.append(measure)
        with matmuls:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    steps = measure.steps
    record["warmup_steps"] = [{k: round(v, 4) for k, v in s.items()} for s in steps[: args.warmup]]
    measured = steps[args.warmup :]
    record["steps"] = [{k: round(v, 4) for k, v in s.items()} for s in measured]
    if measured:
        secs = [s["seconds"] for s in measured]
        record["seconds_per_step_median"] = round(statistics.median(secs), 3)
        completions = args.prompts * args.group_size
        record["completions_per_second"] = round(completions / statistics.median(secs), 2)
        record["tokens_per_second"] = round(
            statistics.median(s["tokens"] / s["seconds"] for s in measured), 1
        )
        record["memory_steps"] = peak()
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2-vl-2b", choices=["tiny", "qwen2-vl-2b", "qwen2-vl-7b"])
    p.add_argument("--lora", action="store_true", help="LoRA r 8 (the config trains every weight)")
    p.add_argument("--fsdp", action="store_true", help="add configs/fsdp/<preset>_8gpu.yaml, on 1 rank")
    p.add_argument("--engine", default="shared", choices=["shared", "hf"], help="rollout engine")
    p.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    p.add_argument("--precision", default=None, help="override the config's trainer.precision")
    p.add_argument("--prompts", type=int, default=2, help="prompts per optimiser step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--steps", type=int, default=3, help="measured optimiser steps")
    p.add_argument("--warmup", type=int, default=1, help="optimiser steps before the measured ones")
    cpu_bf16.add_argument(p)  # on the CPU only (--accelerator cpu)
    args = p.parse_args(argv)
    record = run(args)
    print(json.dumps(record), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: on the H200 it outlived the step itself (CUDA, NCCL)


if __name__ == "__main__":
    sys.exit(main())
