"""Memory plan per rank under FSDP2: Qwen2-VL-2B and -7B on 8 GPUs, and the tiny preset measured.

    python benchmarks/memory_plan.py                  # plan for 2B and 7B, then measure tiny on 2 CPU ranks
    python benchmarks/memory_plan.py --gpus 16 --seq-len 4096 --no-measure

Parameter counts come from the presets built on the meta device (no weights allocated). The plan
assumes what configs/fsdp/*.yaml set: fp32 master weights, gradients and AdamW moments, all sharded
over the ranks (the frozen vision tower has no gradient or optimiser state); bf16 all-gathers of
one unit at a time (plus one prefetched); activation checkpointing per decoder layer (each layer's
bf16 input kept, one layer's internals live during recompute); logits only where the loss needs
them (SFT: the answer tokens; GRPO: one 64-token tile of the completion tokens at a time).
Activation figures are estimates (element counts of the tensors autograd saves), not measurements;
the tiny model's sharded state is measured on 2 CPU processes and checked against the same formula.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

GIB = 2**30


@dataclass
class Shape:
    total: int  # all parameters (tied once)
    vision: int  # vision tower incl. merger (frozen)
    root: int  # parameters outside every decoder layer and vision block (the root FSDP unit)
    layer: int  # one decoder layer
    hidden: int
    kv_hidden: int
    intermediate: int
    layers: int
    vocab: int
    largest: int = 0  # the largest single parameter (the embedding): the meta build's scratch
    lora: int = 0  # LoRA r 8 on q/v (univg.model.backbone.LoRASpec defaults)
    root_vision: int = 0  # the root's vision part (patch embedding, merger): frozen with the tower

    def frozen_root(self, lora: bool) -> int:
        """Root parameters FSDP leaves whole on every rank (``replicate_frozen_root``): with LoRA the
        whole root, else the frozen vision part."""
        return self.root if lora else self.root_vision


def shape_of(preset: str) -> Shape:
    """Parameter counts of a preset from a meta-device build."""
    from univg.distributed import frozen_root_params
    from univg.model.backbone import (
        BackboneSpec,
        build_from_config,
        count_parameters,
        fsdp_units,
        vision_tower,
    )

    spec = BackboneSpec(preset=preset)
    cfg = spec.config()
    model = build_from_config(cfg, device="meta")
    lora = BackboneSpec(preset=preset, lora={}).prepare(build_from_config(cfg, device="meta"))
    units = fsdp_units(model)
    in_units = sum(count_parameters(u) for u in units)
    text = cfg.text_config
    dec = [u for u in units if type(u).__name__ == "Qwen2VLDecoderLayer"]
    head_dim = text.hidden_size // text.num_attention_heads
    return Shape(
        total=count_parameters(model),
        vision=count_parameters(vision_tower(model)),
        root=count_parameters(model) - in_units,
        layer=count_parameters(dec[0]),
        hidden=text.hidden_size,
        kv_hidden=text.num_key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        largest=max(p.numel() for p in model.parameters()),
        lora=count_parameters(lora, trainable_only=True),
        root_vision=sum(p.numel() for p in frozen_root_params(spec.prepare(model)).values()),
    )


def sharded_state(
    s: Shape, ranks: int, param_bytes: int = 4, grad_bytes: int = 4, adam_bytes: int = 8
) -> dict[str, float]:
    """Bytes per rank of the sharded fp32 state: weights, gradients (trainable only), AdamW moments
    (full fine-tuning; the frozen vision part of the root is replicated in bf16)."""
    trainable = s.total - s.vision
    return {
        "parameters": param_bytes * (s.total - s.root_vision) / ranks + 2 * s.root_vision,
        "gradients": grad_bytes * trainable / ranks,
        "optimizer": adam_bytes * trainable / ranks,
    }


def gathered_bytes(s: Shape, gather_bytes: int = 2, root: int | None = None) -> float:
    """Unsharded parameter bytes at the peak of an FSDP2 step (``gather_bytes`` per element: 2 for bf16).

    FSDP2 keeps the root unit unsharded for the whole step, and gathering a unit holds its
    all-gather buffer and the unsharded parameters copied out of it at once (2x the unit), so the
    peak is the root's own gather or, on top of the root, a decoder layer's and the next one's
    (prefetched). ``root``: the root parameters FSDP shards (default all; the frozen ones are
    replicated instead, :meth:`Shape.frozen_root`). Measured on 2 CPU ranks with the 2B preset
    (benchmarks/RESULTS.md): the root alone, gathered once, left the step's peak 1 GB (fp32) above
    the plan.
    """
    root = s.root if root is None else root
    return gather_bytes * max(2 * root, root + 2 * 2 * s.layer)


def transient(
    s: Shape, tokens: int, logit_tokens: int, checkpointing: bool = True, tiled: bool = False
) -> dict[str, float]:
    """Bytes per rank that are not sharded: gathered bf16 units, activations, logits (estimates).

    ``tiled``: the head scores tokens in tiles (GRPO's log-prob passes,
    :func:`univg.rl.rollout.logprobs.log_prob_head`), so at most one tile of logits and one of their
    gradient exist at a time; otherwise (SFT's cross-entropy) every logit token's row does.
    """
    from univg.rl.rollout.logprobs import HEAD_TOKENS_PER_TILE

    gathered = gathered_bytes(s, root=s.root - s.frozen_root(lora=False))
    grad_unsharded = 4 * 2 * s.layer  # a layer's fp32 gradients before reduce-scatter (x2 overlap)
    # elements autograd keeps per token inside one decoder layer (norms, q/k/v/o inputs, attention
    # output, MLP gate/up/act/down inputs), bf16
    per_layer_token = 8 * s.hidden + 2 * s.kv_hidden + 4 * s.intermediate
    if checkpointing:
        acts = 2 * tokens * (s.hidden * s.layers + per_layer_token)
    else:
        acts = 2 * tokens * per_layer_token * s.layers
    rows = min(logit_tokens, HEAD_TOKENS_PER_TILE) if tiled else logit_tokens
    logits = 2 * 4 * rows * s.vocab  # fp32 logits and their gradient
    return {"gathered_params": gathered + grad_unsharded, "activations": acts, "logits": logits}


def plan_rows(
    preset: str, ranks: int, sft_tokens: int, answer_tokens: int, grpo_rows: int, prompt: int, completion: int
) -> list[tuple[str, dict[str, float]]]:
    s = shape_of(preset)
    state = sharded_state(s, ranks)
    sft = transient(s, sft_tokens, answer_tokens)
    grpo = transient(s, grpo_rows * (prompt + completion), grpo_rows * completion, tiled=True)
    return [(f"{preset} SFT", {**state, **sft}), (f"{preset} GRPO", {**state, **grpo})], s


def print_plan(args: argparse.Namespace) -> None:
    print(
        f"FSDP2 memory plan per rank: {args.gpus} ranks, fp32 master/grad/AdamW sharded, bf16 compute, "
        f"activation checkpointing\nSFT: micro-batch 1 x {args.seq_len} tokens, {args.answer_tokens} answer tokens; "
        f"GRPO: {args.logprob_rows} rows x ({args.prompt_len} prompt + {args.completion_len} completion) per log-prob pass\n"
    )
    cols = ["parameters", "gradients", "optimizer", "gathered_params", "activations", "logits"]
    print(f"{'run':<22}" + "".join(f"{c:>16}" for c in cols) + f"{'total GiB':>12}")
    for preset in ("qwen2-vl-2b", "qwen2-vl-7b"):
        rows, s = plan_rows(
            preset,
            args.gpus,
            args.seq_len,
            args.answer_tokens,
            args.logprob_rows,
            args.prompt_len,
            args.completion_len,
        )
        print(
            f"# {preset}: {s.total:,} parameters ({s.vision:,} vision, frozen; root unit {s.root:,}; {s.layers} layers of {s.layer:,})"
        )
        for name, row in rows:
            print(
                f"{name:<22}"
                + "".join(f"{row[c] / GIB:>16.2f}" for c in cols)
                + f"{sum(row.values()) / GIB:>12.2f}"
            )
    print(
        "\n(GiB per rank; add the CUDA context and allocator slack, ~2-4 GiB, and the GRPO reference model: "
        "a second sharded fp32 copy, parameters column again, when beta > 0 without LoRA.)"
    )


# ------------------------------------------------------------------------------------------ host memory
def host_plan(
    s: Shape,
    ranks: int,
    lora: bool,
    stage: str,
    tokens: int,
    logit_tokens: int,
    build: str = "meta",
    reference: bool = False,
    gather_bytes: int = 2,
    replicate_frozen_root: bool = True,
) -> dict[str, float]:
    """Bytes per rank of host memory (CPU training) beyond the runtime's fixed overhead.

    ``build``: "meta" (each rank materialises its rows; one full parameter of scratch), "legacy"
    (every rank builds the full model, then shards it) or "single" (one process, no FSDP). The peak
    is the larger of the build and the step. The step holds the sharded fp32 state (weights, the
    frozen reference copy for full fine-tuning with beta > 0, gradients and AdamW moments of what
    trains), and, with FSDP, the gathered units (:func:`gathered_bytes`; ``gather_bytes`` per
    element: 2 for bf16 all-gathers, 4 with ``param_dtype: null``). With ``replicate_frozen_root``
    the root's frozen parameters are held whole on every rank in the all-gather dtype and never
    gathered.
    """
    sharded = build != "single"
    trainable = s.lora if lora else s.total - s.vision
    frozen_root = s.frozen_root(lora) if sharded and replicate_frozen_root else 0
    whole = gather_bytes * frozen_root  # replicated, in the dtype FSDP computes in
    params = 4 * (s.total - frozen_root + (s.lora if lora else 0)) / ranks + whole
    ref = 4 * (s.total - frozen_root) / ranks + whole if reference and not lora else 0.0
    state = {
        "parameters": params + ref,
        "gradients": 4 * trainable / ranks,
        "optimizer": 8 * trainable / ranks,
    }
    gathered = gathered_bytes(s, gather_bytes, root=s.root - frozen_root) if sharded else 0.0
    grad_unsharded = 4 * 2 * s.layer if sharded and not lora else 0.0
    acts = transient(s, tokens, logit_tokens, tiled=stage == "grpo")
    step = {
        **state,
        "gathered": gathered + grad_unsharded,
        "activations": acts["activations"],
        "logits": acts["logits"],
    }
    if build == "meta":
        build_bytes = params + 4 * s.largest
    elif build == "legacy":
        build_bytes = 4 * s.total + params  # the full model, and its shard copied out of it
    else:
        build_bytes = 4 * s.total
    return {"build": build_bytes, "step": sum(step.values()), **step}


def check_measured(path: str, overhead_gb: float | None) -> None:
    """Predicted vs measured per rank, for the JSON lines ``benchmarks/fsdp_memory.py`` printed."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip().startswith("{")]
    rows = [r for r in rows if "peak_rss_gb" in r]
    shapes = {p: shape_of(p) for p in {r["preset"] for r in rows}}

    def predict(r: dict) -> dict[str, float]:
        reference = r["stage"] == "grpo" and not r["lora"]
        tokens, logit_tokens = check_tokens(r.get("image_size", 448))
        return host_plan(
            shapes[r["preset"]],
            r["procs"],
            r["lora"],
            r["stage"],
            tokens,
            logit_tokens,
            r["build"],
            reference,
            4 if r.get("param_dtype", "bfloat16") in (None, "float32") else 2,
            r.get("replicate_frozen_root", False),  # rows measured before the setting existed: sharded
        )

    # The fixed overhead (interpreter, torch, data, tokenizer, gloo; GRPO adds its rollout machinery)
    # is what a tiny run holds beyond its predicted bytes, per stage: tiny weights are ~40 MB.
    overhead: dict[str, float] = {}
    for stage in ("sft", "grpo"):
        tiny = [r for r in rows if r["preset"] == "tiny" and r["stage"] == stage and r["build"] != "legacy"]
        if overhead_gb is not None:
            overhead[stage] = overhead_gb
        elif tiny:
            overhead[stage] = min(
                r["peak_rss_gb"] - max(predict(r)["build"], predict(r)["step"]) / 1e9 for r in tiny
            )
    # the same for the build alone (before any data, rollout or step)
    tiny = [r for r in rows if r["preset"] == "tiny" and r["build"] != "legacy"]
    build_overhead = (
        overhead_gb
        if overhead_gb is not None or not tiny
        else min(r["peak_rss_build_gb"] - predict(r)["build"] / 1e9 for r in tiny)
    )
    missing = {r["stage"] for r in rows if "seconds_step" in r} - set(overhead)
    if missing:
        raise SystemExit(
            f"no tiny-preset rows for {sorted(missing)} to measure the fixed overhead from: pass --overhead-gb"
        )
    print(
        "Host memory per rank, predicted (fixed overhead from the tiny rows: "
        + ", ".join(f"{k} {v:.2f} GB" for k, v in overhead.items())
        + f", build {build_overhead:.2f} GB, plus the plan) vs measured; GB = 1e9 bytes; a run whose step"
        + " did not finish has its build figures only"
    )
    head = [
        "preset",
        "ranks",
        "train",
        "stage",
        "build",
        "frozen root",
        "image",
        "gather",
        "rank",
        "params pred",
        "params meas",
        "build pred",
        "build meas",
        "peak pred",
        "peak meas",
        "meas/pred",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        plan = predict(r)
        build = build_overhead + plan["build"] / 1e9
        if "seconds_step" in r:
            peak = overhead[r["stage"]] + max(plan["build"], plan["step"]) / 1e9
            step = [f"{peak:.2f}", f"{r['peak_rss_gb']:.2f}", f"{r['peak_rss_gb'] / peak:.2f}"]
        else:
            step = ["-", "-", f"{r['peak_rss_build_gb'] / build:.2f} (build)"]
        cells = [
            r["preset"], r["procs"], "LoRA" if r["lora"] else "full", r["stage"], r["build"],
            _root_name(r), r.get("image_size", 448), _gather_name(r), r.get("rank", 0),
            f"{plan['parameters'] / 1e9:.3f}", f"{r['param_bytes_local'] / 1e9:.3f}",
            f"{build:.2f}", f"{r['peak_rss_build_gb']:.2f}", *step,
        ]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


def _root_name(r: dict) -> str:
    """How a fsdp_memory.py row held the root's frozen parameters ("-" for one process)."""
    if r["procs"] == 1:
        return "-"
    return "whole" if r.get("replicate_frozen_root", False) else "sharded"


def _gather_name(r: dict) -> str:
    """The all-gather dtype of a fsdp_memory.py row ("-" for one process: nothing is gathered)."""
    if r["procs"] == 1:
        return "-"
    return "fp32" if r.get("param_dtype", "bfloat16") in (None, "float32") else "bf16"


def check_tokens(image_size: int) -> tuple[int, int]:
    """Tokens of a fsdp_memory.py step (G 2 rows of one image, (size / 28)^2 tokens, plus ~74 of text
    and answer) and logit tokens (the completion or answer positions); small next to the weights.

    >>> check_tokens(448)
    (660, 60)
    """
    return 2 * ((image_size // 28) ** 2 + 74), 2 * 30


# ------------------------------------------------------------------------------------------ measure
def measure_worker(out: str) -> None:  # pragma: no cover - runs under torchrun
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from univg.data import SyntheticDataModule
    from univg.distributed import FSDP2Strategy, rank_state_bytes
    from univg.model.backbone import BackboneSpec
    from univg.modules import SFTModule

    torch.set_num_threads(1)

    class Measure(Callback):
        def on_train_end(self, trainer, pl_module):
            rec = rank_state_bytes(pl_module.model, trainer.optimizers[0])
            with open(Path(out) / f"rank{trainer.global_rank}.json", "w") as f:
                json.dump(rec, f)

    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=FSDP2Strategy(process_group_backend="gloo"),
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Measure()],
    )
    data = SyntheticDataModule(num_train=8, num_val=0, tasks=["single"], image_size=56, batch_size=2)
    trainer.fit(SFTModule(backbone=BackboneSpec(preset="tiny")), datamodule=data)


def measure_tiny() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            __file__,
            "--measure-worker",
            tmp,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit("tiny measurement failed")
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in (0, 1)]
    plan = sharded_state(shape_of("tiny"), 2)
    print("\nTiny preset, FSDP2 on 2 CPU processes (gloo), after one SFT step: sharded state per rank (MiB)")
    print(f"{'':<14}{'planned':>10}{'rank 0':>10}{'rank 1':>10}")
    for k in ("parameters", "gradients", "optimizer"):
        print(f"{k:<14}{plan[k] / 2**20:>10.2f}{ranks[0][k] / 2**20:>10.2f}{ranks[1][k] / 2**20:>10.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument(
        "--seq-len", type=int, default=2560, help="SFT tokens per micro-batch (4 images x 512 + text)"
    )
    p.add_argument("--answer-tokens", type=int, default=256)
    p.add_argument("--logprob-rows", type=int, default=8, help="GRPO logprob_chunk_size")
    p.add_argument("--prompt-len", type=int, default=2304)
    p.add_argument("--completion-len", type=int, default=256)
    p.add_argument("--no-measure", action="store_true", help="skip the 2-process tiny measurement")
    p.add_argument(
        "--check",
        default=None,
        metavar="JSONL",
        help="print predicted vs measured host memory for benchmarks/fsdp_memory.py output lines",
    )
    p.add_argument("--overhead-gb", type=float, default=None, help="fixed overhead (default: from tiny rows)")
    p.add_argument("--measure-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure_worker:
        measure_worker(args.measure_worker)
        return
    if args.check:
        check_measured(args.check, args.overhead_gb)
        return
    print_plan(args)
    if not args.no_measure:
        measure_tiny()


if __name__ == "__main__":
    main()
