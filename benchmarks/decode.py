"""Decode speed of the rollout loops: ms per decode step and tokens/s, beside the bandwidth limit.

G completions of each of B prompts (default G 8 x 2 prompts, one and two synthetic images, left
padded), sampled at temperature 1 over the whole vocabulary, every completion forced to exactly
``--tokens`` tokens (``min_new_tokens``), on a randomly initialised model of each preset:

- ``eager``: our shared-prefill decoder's eager loop (finished rows dropped, a host sync per token);
- ``static``: the capture-safe loop (:mod:`univg.rl.rollout.static_decode`: static KV cache, fixed
  shapes, stop test every 8 tokens);
- ``compiled``: the same with the decode step through ``torch.compile`` (CPU: inductor; CUDA:
  ``mode="reduce-overhead"``, CUDA graphs);
- ``hf``: transformers' ``generate`` (``num_return_sequences = G``: images and prefill repeated G
  times, dynamic cache); ``hf-static``: with ``cache_implementation="static"``;
  ``hf-static-compiled``: that plus its own ``torch.compile`` of the forward (``compile_config``).

A decode step's time is ``(t(T) - t(1)) / (T - 1)``: a call of T tokens less a call of one token
(prefill and first draw, no decode forward), so prefill and set-up cancel. Variants are
interleaved in every repetition (the machine may be shared) and medians reported; compilation
happens in a warm-up call, timed apart. tokens/s: rows / step time (decode) and rows x T / t(T)
(the whole call); "cpu ms" is the step in process CPU time, which other jobs on a shared machine
disturb less than wall time (1 thread by default, as the project's other CPU benchmarks). The
bandwidth limit is the bytes a decode step must read (the language model's weights and the head,
not the vision tower or the embedding table) over the memory bandwidth: measured with a large
tensor copy on CPU; a GPU's from its spec sheet.

Usage::

    python benchmarks/decode.py                                   # tiny and 2B presets on CPU
    python benchmarks/decode.py --presets tiny --tokens 32 --reps 5 --json
    python benchmarks/decode.py --device cuda --presets qwen2-vl-2b,qwen2-vl-7b --tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("eager", "static", "compiled", "hf", "hf-static", "hf-static-compiled")
#: Per-preset defaults (each overridden by its command-line option): tokens per completion, measured
#: repetitions, images per prompt (0: text-only prompts) and variants. The sized presets on CPU:
#: short completions and text prompts (transformers' ``generate`` prefills every prompt G times).
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"tokens": 32, "reps": 3, "images": 1, "variants": ",".join(VARIANTS)},
    "qwen2-vl-2b": {"tokens": 16, "reps": 3, "images": 0, "variants": ",".join(VARIANTS)},
    "qwen2-vl-7b": {"tokens": 8, "reps": 2, "images": 0, "variants": ",".join(VARIANTS)},
}
#: Memory bandwidth of GPUs from their spec sheets, bytes/s (matched on the device name).
GPU_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100": 1.56e12,
}
RESULTS = Path(__file__).parent / "results"


# ------------------------------------------------------------------------------------------ pieces
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_bandwidth(mib: int = 512, reps: int = 7) -> float:
    """Bytes/s of a large float32 tensor copy (read + write), median of ``reps``."""
    a = torch.ones(mib * 2**20 // 4)
    b = torch.empty_like(a)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / statistics.median(times)


def gpu_bandwidth(device: torch.device) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, bw in GPU_BANDWIDTH.items():
        if key in name:
            return bw, f"{name}: {bw / 1e12:.2f} TB/s (spec sheet)"
    return None, f"{name}: bandwidth unknown"


def decode_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step reads: the language model's layers and norm, and the head."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm = hf.model.language_model
    seen: set[int] = set()
    total = 0
    for p in [*lm.layers.parameters(), *lm.norm.parameters(), *hf.lm_head.parameters()]:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def build_prompts(processor: Any, n_prompts: int, image_size: int, images: bool) -> dict[str, torch.Tensor]:
    """``n_prompts`` left-padded prompts of two lengths: grounding prompts with 1 and 2 synthetic
    images, or (``images`` False) chat-formatted text questions."""
    from univg.data import GroundingCollator
    from univg.data.synthetic import generate_samples
    from univg.rl.rollout import PAD_ID, model_inputs

    if not images:
        tok = processor.tokenizer
        questions = ["Where is the red box?", "Which of the objects on the table is the largest blue cup?"]
        rows = [
            tok.encode(f"<|im_start|>user\n{questions[i % 2]}<|im_end|>\n<|im_start|>assistant\n")
            for i in range(n_prompts)
        ]
        width = max(map(len, rows))
        ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}
    samples = []
    for i in range(n_prompts):  # 1, 2, 1, 2, ... images: prompts of different lengths, left padded
        task = "common_object" if i % 2 else "single"
        samples += generate_samples(1, tasks=[task], image_size=image_size, seed=i, num_images=1 + i % 2)
    return model_inputs(GroundingCollator(processor, mode="generate")(samples))


class Runner:
    """One call of a variant: ``run(variant, tokens)`` -> seconds."""

    def __init__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], group_size: int) -> None:
        from univg.rl.rollout.static_decode import StaticDecoder

        self.model, self.inputs, self.g = model, inputs, group_size
        self.device = next(model.parameters()).device
        # one decoder per (variant, length): the compiled step keeps its cache (a new cache recompiles)
        self.decoders: dict[tuple[str, int], StaticDecoder] = {}
        self.make_decoder = StaticDecoder

    def _ours(self, variant: str, tokens: int) -> None:
        from univg.rl.rollout.sampling import generate_shared

        decoder = None
        if variant != "eager":
            key = (variant, tokens)
            if key not in self.decoders:
                self.decoders[key] = self.make_decoder(compile=variant == "compiled")
            decoder = self.decoders[key]
        generate_shared(
            self.model,
            dict(self.inputs),
            group_size=self.g,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            static_decoder=decoder,
        )

    def _hf(self, variant: str, tokens: int) -> None:
        from transformers import CompileConfig, GenerationConfig

        from univg.rl.rollout import explicit_generation_config

        config = explicit_generation_config(self.g, tokens, tokens, True, 1.0, 1.0, 0)
        if variant != "hf":
            config.cache_implementation = "static"
        if variant == "hf-static-compiled":
            compile_config = CompileConfig(
                mode="reduce-overhead" if self.device.type == "cuda" else "default"
            )
            compile_config._compile_all_devices = True  # transformers compiles on GPUs only otherwise
            config.compile_config = compile_config
        else:
            config.disable_compile = True
        own, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:
            out = self.model.generate(**self.inputs, generation_config=config)
        finally:
            self.model.generation_config = own
        n = self.inputs["input_ids"].shape[0] * self.g
        assert out.sequences.shape == (n, self.inputs["input_ids"].shape[1] + tokens), out.sequences.shape

    def run(self, variant: str, tokens: int) -> tuple[float, float]:
        """Wall seconds and process CPU seconds of one call."""
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            (self._hf if variant.startswith("hf") else self._ours)(variant, tokens)
        _sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


# -------------------------------------------------------------------------------------------- main
def bench_preset(args: argparse.Namespace, preset: str, processor: Any, bandwidth: float | None) -> dict:
    from univg.model.backbone import BackboneSpec

    defaults = PRESET_DEFAULTS.get(preset, PRESET_DEFAULTS["qwen2-vl-7b"])
    tokens = args.tokens or defaults["tokens"]
    reps = args.reps or defaults["reps"]
    images = defaults["images"] if args.images is None else args.images
    if tokens < 2:
        raise SystemExit("--tokens must be >= 2 (a decode step is t(T) - t(1))")
    device = torch.device(args.device)
    dtype = args.dtype or ("float32" if preset == "tiny" else "bfloat16")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = BackboneSpec(preset=preset, dtype=dtype).build().to(device).eval()
    built = time.perf_counter() - t0
    inputs = {
        k: v.to(device) for k, v in build_prompts(processor, args.prompts, args.image_size, images).items()
    }
    rows = inputs["input_ids"].shape[0] * args.group_size
    weight_bytes = decode_bytes(model)
    limit_s = weight_bytes / bandwidth if bandwidth else None
    print(
        f"\n== {preset} ({dtype}, built in {built:.0f} s): {args.prompts} prompts x G {args.group_size} = {rows} rows, "
        f"prompt length {inputs['input_ids'].shape[1]} (left padded: {inputs['attention_mask'].sum(1).tolist()}), "
        f"{'image' if images else 'text'} prompts, {tokens} tokens each, {reps} repetitions; decode reads {weight_bytes / 2**20:.1f} MiB of weights per step",
        flush=True,
    )
    runner = Runner(model, inputs, args.group_size)
    variants = [v for v in (args.variants or defaults["variants"]).split(",") if v]
    warm: dict[str, float] = {}
    failed: dict[str, str] = {}
    for v in variants:  # warm-up: compiles, allocates caches
        try:
            warm[v] = runner.run(v, tokens)[0] + runner.run(v, 1)[0]
            print(f"  warm-up {v}: {warm[v]:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
            failed[v] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"  {v}: failed ({failed[v]})", flush=True)
    variants = [v for v in variants if v not in failed]
    keys = ("t_full", "t_one", "step", "cpu_full", "cpu_one", "cpu_step")
    raw: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in variants}
    for rep in range(reps):  # interleaved: every variant once per repetition
        order = variants if rep % 2 == 0 else variants[::-1]
        for v in order:
            (full, cpu_full), (one, cpu_one) = runner.run(v, tokens), runner.run(v, 1)
            for k, x in zip(keys, (full, one, (full - one) / (tokens - 1), cpu_full, cpu_one)):
                raw[v][k].append(x)
            raw[v]["cpu_step"].append((cpu_full - cpu_one) / (tokens - 1))
        print(f"  repetition {rep + 1}/{reps} done", flush=True)

    summary = {}
    for v in variants:
        step = statistics.median(raw[v]["step"])
        full = statistics.median(raw[v]["t_full"])
        summary[v] = {
            "ms_per_step": 1e3 * step,
            "cpu_ms_per_step": 1e3 * statistics.median(raw[v]["cpu_step"]),
            "ms_per_step_min": 1e3 * min(raw[v]["step"]),
            "ms_per_step_max": 1e3 * max(raw[v]["step"]),
            "decode_tokens_per_s": rows / step if step > 0 else float("nan"),
            "call_tokens_per_s": rows * tokens / full,
            "s_per_call": full,
            "warmup_s": warm[v],
        }
    base = summary.get("eager", {}).get("ms_per_step")
    print(
        f"\n{'variant':<20} {'ms/step':>9} {'(min-max)':>17} {'cpu ms':>8} {'tok/s decode':>13} {'tok/s call':>11} "
        f"{'s/call':>8} {'vs eager':>9} {'x limit':>8} {'warm-up s':>10}"
    )
    for v, r in summary.items():
        speed = f"{base / r['ms_per_step']:.2f}x" if base and r["ms_per_step"] > 0 else "-"
        over = f"{r['ms_per_step'] / (1e3 * limit_s):.1f}" if limit_s else "-"
        span = f"({r['ms_per_step_min']:.1f}-{r['ms_per_step_max']:.1f})"
        print(
            f"{v:<20} {r['ms_per_step']:>9.1f} {span:>17} {r['cpu_ms_per_step']:>8.1f} {r['decode_tokens_per_s']:>13.0f} "
            f"{r['call_tokens_per_s']:>11.0f} {r['s_per_call']:>8.2f} {speed:>9} {over:>8} {r['warmup_s']:>10.1f}"
        )
    if limit_s:
        print(
            f"{'bandwidth limit':<20} {1e3 * limit_s:>9.2f} {'':>17} {'':>8} {rows / limit_s:>13.0f} "
            f"{'':>11} {'':>8} {'':>9} {'1.0':>8}"
        )
    for v, why in failed.items():
        print(f"{v:<20} failed: {why}")
    del model, runner
    return {
        "preset": preset,
        "dtype": dtype,
        "rows": rows,
        "prompts": args.prompts,
        "group_size": args.group_size,
        "tokens": tokens,
        "reps": reps,
        "images": bool(images),
        "prompt_length": int(inputs["input_ids"].shape[1]),
        "decode_weight_bytes": weight_bytes,
        "bandwidth_limit_ms": 1e3 * limit_s if limit_s else None,
        "summary": summary,
        "raw": raw,
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,qwen2-vl-2b")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="parameter dtype (default: float32 for tiny, bfloat16 else)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--tokens", type=int, default=None, help="tokens per completion (default: per preset)")
    p.add_argument("--images", type=int, choices=(0, 1), default=None, help="1: image prompts, 0: text")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--reps", type=int, default=None, help="measured repetitions after a warm-up (per preset)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=None, help=f"comma-separated, of {VARIANTS} (default: per preset)")
    p.add_argument(
        "--json", nargs="?", const=RESULTS / "decode_cpu.json", type=Path, help="write raw results"
    )
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from univg.model.tokenizer import load_processor

    processor = load_processor()
    if device.type == "cuda":
        bandwidth, bw_text = gpu_bandwidth(device)
    else:
        bandwidth = cpu_bandwidth()
        bw_text = f"{bandwidth / 1e9:.1f} GB/s (CPU, measured: 512 MiB tensor copy, read + write, {args.threads} threads)"
    gpu = "no GPU was available" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"settings: device={device}, threads={args.threads}, torch {torch.__version__}, "
        f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'default')}, machine {platform.machine()} "
        f"{platform.processor() or ''}, {os.cpu_count()} CPUs visible, load average {load}; {gpu}\n"
        f"memory bandwidth: {bw_text}"
    )
    results: list[dict] = []
    for preset in [name for name in args.presets.split(",") if name]:
        results.append(bench_preset(args, preset, processor, bandwidth))
        if args.json:  # after each preset: one that fails later leaves the earlier ones written
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "torch": torch.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_at_start": load,
                "load_average_now": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "gpu": gpu,
                "bandwidth_bytes_per_s": bandwidth,
                "bandwidth": bw_text,
                "results": results,
            }
            args.json.write_text(json.dumps(payload, indent=1) + "\n")
            print(f"\nwrote {args.json}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
