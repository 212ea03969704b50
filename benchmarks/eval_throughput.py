"""Evaluation throughput: samples/s of greedy generation + answer parsing + IoU scoring.

Runs ``GroundingModule.evaluation_step`` (what ``trainer.validate``/``test`` call per batch) on
synthetic multi-image samples, once per rollout engine: ``shared`` (our decode loop, the default)
and ``hf`` (transformers' ``generate``). A randomly initialised model never writes an end token,
so every sample decodes the full ``--max-new-tokens``: the figures are the worst case per token
budget.

Usage::

    python benchmarks/eval_throughput.py                       # tiny preset, 16 samples, batch 4
    python benchmarks/eval_throughput.py --batches 2 --max-new-tokens 32 --engines shared
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=4, help="measured batches (one more runs first as warm-up)")
    p.add_argument("--images", type=int, default=4, help="images per sample")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engines", default="shared,hf")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import univg.modules.base as base
    from univg.data import GroundingCollator
    from univg.data.synthetic import generate_samples
    from univg.model.backbone import BackboneSpec
    from univg.model.tokenizer import load_processor
    from univg.modules import SFTModule
    from univg.rl.rollout import generate

    processor = load_processor()
    collate = GroundingCollator(processor, mode="generate")
    n = args.batch_size * (args.batches + 1)
    samples = generate_samples(n, tasks=["common_object"], image_size=args.image_size, num_images=args.images)
    batches = [collate(samples[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]
    torch.manual_seed(0)
    module = SFTModule(backbone=BackboneSpec(preset=args.preset), max_new_tokens=args.max_new_tokens)
    module.configure_model()
    module.eval()
    print(
        f"settings: preset={args.preset}, batch_size={args.batch_size}, measured_batches={args.batches}, "
        f"images_per_sample={args.images}, image_size={args.image_size}, max_new_tokens={args.max_new_tokens}, "
        f"greedy, threads={args.threads}; machine {platform.machine()}, {os.cpu_count()} CPU cores visible"
    )
    rates = {}
    for engine in [e for e in args.engines.split(",") if e]:
        base.generate = functools.partial(generate, engine=engine)
        times = []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            with torch.no_grad():
                module.evaluation_step(batch, "test")
            if i:  # the first batch is warm-up
                times.append(time.perf_counter() - t0)
        module.metrics["test"].reset()
        module.evaluation.records["test"].clear()
        rates[engine] = args.batch_size / statistics.median(times)
        print(
            f"{engine:<8} {rates[engine]:7.2f} samples/s  (median {statistics.median(times):.2f} s per batch of "
            f"{args.batch_size}, min {min(times):.2f}, max {max(times):.2f}), "
            f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
        )
    base.generate = generate
    if "shared" in rates and "hf" in rates:
        print(f"shared / hf: {rates['shared'] / rates['hf']:.2f}x samples/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
