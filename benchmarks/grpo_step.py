"""One GRPO optimiser step, ours against TRL's ``GRPOTrainer``, on the same model, data and settings.

Three variants run in one invocation, each in its own process (a clean peak RSS, no monkeypatch
leaking between them):

- ``ours``: :class:`univg.modules.GRPOModule` ``score`` (shared-prefill rollout, rewards,
  advantages, reference log-probs) then ``loss_terms`` + backward + clip + AdamW, i.e. what
  ``GRPOModule.optimise`` runs for a one-micro-batch step.
- ``trl``: TRL 1.16 ``GRPOTrainer`` as shipped (on CPU it pushes every prompt position through the
  151,936-way head: its compact path needs Triton).
- ``trl-completion-only``: the same trainer with completion-only scoring forced
  (``trl.trainer.utils._use_triton`` patched to say yes, which selects its compact path).
- ``ours-unshared`` (ablation, on request): our step with ``engine="hf"`` and
  ``shared_prefix=False``, i.e. without the work shared across a group.

Aligned explicitly (docs/design.md section 10 lists TRL's defaults that differ): loss type grpo,
``scale_rewards`` group, fp32 (bf16 off), gradient checkpointing off, dropout off, beta 0.04 with a
frozen reference copy of the initial policy, num_iterations 1 (no old-policy pass), vision tower
frozen, lr 1e-6 constant, weight decay 0, grad-norm clip 1.0, AdamW, temperature 1 / top-p 1 /
top-k off, the image token suppressed, completions forced to exactly ``--completion-length`` tokens
(end tokens suppressed before that), the same prompts (chat template, 4 synthetic 112 x 112 images
each) and the same rewards (accuracy + format from :mod:`univg.rl.rewards`).

Usage::

    python benchmarks/grpo_step.py                  # 1 warm-up + 5 measured steps per variant
    python benchmarks/grpo_step.py --quick          # 1 + 1 steps, short completions (smoke test)
    python benchmarks/grpo_step.py --threads 2 --steps 3 --variants ours,trl-completion-only

Prints the settings, then per variant: seconds per step (median of the measured steps, with min
and max), completions/s, tokens/s (prompt tokens x G + completion tokens), the share of the step in
generation / log-prob passes / backward / other (rewards, advantages, optimiser, data), peak RSS,
and the ratios ours / TRL. This file is the command and its report; the variants' runners are in
``benchmarks/grpo_step_variants.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("ours", "trl", "trl-completion-only")
#: Ablation, not run by default: our step without the shared work (HF ``generate`` with the prompt
#: repeated G times, log-prob passes over repeated prompts with the full [rows, C, V] logits).
ABLATIONS = ("ours-unshared",)


# ------------------------------------------------------------------------------------------ report
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "preset": args.preset,
        "tied_head": args.tied,
        "prompts_per_step": args.prompts,
        "group_size": args.group_size,
        "completions_per_step": args.prompts * args.group_size,
        "completion_length": args.completion_length,
        "images_per_prompt": args.images,
        "image_size": args.image_size,
        "beta": args.beta,
        "loss_type": "grpo",
        "dtype": "float32",
        "gradient_checkpointing": False,
        "threads": args.threads,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
    }


def summarise(name: str, result: dict[str, Any], warmup: int) -> dict[str, Any]:
    measured = result["steps"][warmup:] or result["steps"]
    secs = [s["seconds"] for s in measured]
    med = statistics.median(secs)
    parts: dict[str, float] = {}
    for s in measured:
        for k, v in s["parts"].items():
            parts[k] = parts.get(k, 0.0) + v / len(measured)
    mean_step = statistics.mean(secs)
    parts["other"] = max(0.0, mean_step - sum(parts.values()))
    comp = statistics.mean(s["completions"] for s in measured)
    toks = statistics.mean(s["completion_tokens"] + s["prompt_tokens"] for s in measured)
    return {
        "variant": name,
        "seconds_per_step": med,
        "seconds_min": min(secs),
        "seconds_max": max(secs),
        # CPU seconds of the process: with T threads and no contention about T x wall; far less
        # sensitive than wall time to other jobs on a shared machine
        "cpu_seconds_per_step": statistics.median(s["cpu_seconds"] for s in measured),
        "completions_per_second": comp / med,
        "tokens_per_second": toks / med,
        "completion_tokens_per_step": statistics.mean(s["completion_tokens"] for s in measured),
        "shares": {k: v / mean_step for k, v in parts.items()},
        "peak_rss_gb": result["peak_rss_gb"],
        "rss_before_gb": result["rss_before_gb"],
        "shared_prefix": result.get("shared_prefix"),  # None for TRL's variants
    }


def print_report(settings: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, torch threads {settings['threads']}"
    )
    head = (
        f"{'variant':<22}{'s/step':>8}{'(min-max)':>14}{'cpu s':>7}{'compl/s':>9}{'tok/s':>8}"
        f"{'gen':>6}{'logp':>6}{'bwd':>6}{'other':>6}{'peak RSS':>10}"
    )
    print(head)
    for r in rows:
        sh = r["shares"]
        spread = "({:.2f}-{:.2f})".format(r["seconds_min"], r["seconds_max"])
        print(
            f"{r['variant']:<22}{r['seconds_per_step']:>8.2f}{spread:>14}{r['cpu_seconds_per_step']:>7.2f}"
            f"{r['completions_per_second']:>9.2f}{r['tokens_per_second']:>8.0f}"
            f"{sh.get('generation', 0):>6.0%}{sh.get('logprob_passes', 0):>6.0%}"
            f"{sh.get('backward', 0):>6.0%}{sh.get('other', 0):>6.0%}{r['peak_rss_gb']:>8.2f} GB"
        )
    by = {r["variant"]: r for r in rows}
    if "ours" in by:
        for other in ("trl", "trl-completion-only", "ours-unshared"):
            if other in by:
                speed = by[other]["seconds_per_step"] / by["ours"]["seconds_per_step"]
                mem = by["ours"]["peak_rss_gb"] / by[other]["peak_rss_gb"]
                cpu = by[other]["cpu_seconds_per_step"] / by["ours"]["cpu_seconds_per_step"]
                print(
                    f"ours vs {other}: {speed:.2f}x faster per step (wall; {cpu:.2f}x in CPU seconds), "
                    f"peak RSS ours/{other} = {mem:.2f}"
                )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps first (lazy init, allocator)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--prompts", type=int, default=2, help="prompts per optimiser step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--completion-length", type=int, default=64, help="forced completion length (tokens)")
    p.add_argument("--images", type=int, default=4, help="images per prompt")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tied", action="store_true", help="tie head and embedding (default: untied, 19.6M tiny)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS + ABLATIONS}"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 warm-up + 1 step, 8-token completions")
    p.add_argument("--json", type=Path, help="also write the summaries here")
    p.add_argument("--worker", choices=VARIANTS + ABLATIONS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.completion_length = 1, 1, 8
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        from grpo_step_variants import run_ours, run_trl  # the script's own folder

        if args.worker in ("ours", "ours-unshared"):
            result = run_ours(args, shared=args.worker == "ours")
        else:
            result = run_trl(args, completion_only=args.worker == "trl-completion-only")
        print("RESULT " + json.dumps(result))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS + ABLATIONS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS + ABLATIONS}")
    settings = _settings(args)
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    extra = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    extra += ["--completion-length", str(args.completion_length)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for v in variants:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, *base, *extra, "--worker", v],
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"variant {v} failed (exit {proc.returncode})")
        rows.append(summarise(v, json.loads(lines[-1][len("RESULT ") :]), args.warmup))
        print(f"[{v}: {time.perf_counter() - t0:.0f} s wall]", file=sys.stderr)
    print_report(settings, rows)
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
