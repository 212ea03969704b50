"""GRPO learning curves, ours against TRL's ``GRPOTrainer``, from the demo's stage-1 checkpoint.

Both frameworks start from the same CoT-SFT checkpoint (``python -m univg.demo`` writes it to
``runs/demo/cot_sft/version_0/stage1.ckpt``) and train on the demo's stage-2 prompts with the demo's
stage-2 settings (:class:`univg.demo.DemoSettings`: G, temperature, lr, prompts per step, KL beta,
max completion length), plain GRPO (phi none: TRL has no difficulty weight):

- ``ours``: :class:`univg.modules.GRPOModule` through a Lightning fit, as the demo's stage 2 runs it
  (:func:`univg.demo.stages.run_grpo`, with phi none and the training seed apart from the data's).
- ``trl``: TRL 1.16 ``GRPOTrainer`` with completion-only scoring forced and the defaults that differ
  aligned as in ``benchmarks/grpo_step.py`` (loss type grpo, group scaling, fp32, beta, dropout
  off, constant lr, no weight decay, grad-norm clip 1.0, AdamW (0.9, 0.999)), the same end tokens
  (``<|im_end|>``, ``<|endoftext|>``) and suppressed tokens (image, video), the same frozen
  parameters (vision tower and embeddings), the same prompt tokens (univg's processor through
  ``grpo_step``'s adapter) and the same rewards (univg's accuracy + format as TRL reward functions).

What is measured, for both with the same code (TRL's weights are copied into a univg module):

- the reward probe (:class:`univg.demo.probe.RewardProbe`): G sampled completions for the demo's 16
  fixed probe prompts with a fixed random stream, every ``--probe-every`` optimiser steps; the
  curve is its mean IoU (the accuracy reward);
- at the end, the held-out Acc@0.5 and mIoU (greedy; the demo's evaluation set and evaluation);
- wall time of the training (probes excluded) and of the evaluation.

The data (prompts, probe prompts, held-out set) are the demo's for ``--data-seed`` (0: the
checkpoint's); ``--seeds`` are training seeds (the sampling stream of the rollouts), the same
for both frameworks. Each run is a process of its own (numerics pinned as ``python -m univg.demo``
pins them, 2 threads); after each run the JSON is rewritten, and runs already in it with the same
settings are not run again (so a longer job can be resumed or extended by seeds).

Usage::

    python benchmarks/grpo_learning.py                        # 60 steps, seeds 0,1,2 (the full run)
    python benchmarks/grpo_learning.py --steps 20 --seeds 0   # smaller
    python benchmarks/grpo_learning.py --lr 2e-3              # another lr (both frameworks)
    python benchmarks/grpo_learning.py --quick                # smoke: 2 steps of each, tiny sets
    # what fitted the time on a shared 2-core machine: 10 steps, 3 seeds, ours and TRL side by
    # side on one thread each
    python benchmarks/grpo_learning.py --steps 10 --seeds 0,1,2 --threads 1 --jobs 2 \
        --out benchmarks/results/grpo_learning_lr2e-4_10steps.json

Writes ``--out`` (JSON: settings, every run's probe points, per-step logs, metrics and seconds)
and a PNG of the curves beside it (when matplotlib is installed), and prints the table. This file is
the command; the runs are in ``benchmarks/grpo_learning_runs.py``, the table, verdict and figure in
``benchmarks/grpo_learning_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grpo_learning_report import FRAMEWORKS, TAILS, figure, table, verdict  # the script's own folder
from grpo_learning_runs import demo_settings, run_ours, run_trl, settings_record

STAGE1 = "runs/demo/cot_sft/version_0/stage1.ckpt"


# ------------------------------------------------------------------------------------------ main
def provenance() -> dict[str, Any]:
    """The code that ran: the commit and the files changed beside it (a shared checkout)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip("\n")

    return {"git_commit": git("rev-parse", "HEAD"), "git_changed": git("status", "--short").splitlines()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--lr", type=float, default=None, help="learning rate of both (default: the demo's)")
    p.add_argument("--probe-every", type=int, default=5, help="reward probe every N optimiser steps")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, from ours,trl")
    p.add_argument("--stage1", default=STAGE1, help="the demo's stage-1 checkpoint")
    p.add_argument("--data-seed", type=int, default=0, help="the demo seed whose prompts and sets are used")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON (default benchmarks/results/grpo_learning_lr<lr>.json)"
    )
    p.add_argument(
        "--logdir", type=Path, default=Path("runs/grpo_learning"), help="Lightning logs, predictions"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads per run (2: the demo's pinned numerics; 1 splits reductions otherwise)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at once (2: ours and TRL of a seed side by side)"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 2 steps of each, tiny sets, seed 0")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p


def worker(args: argparse.Namespace) -> int:
    from univg.demo.numerics import THREAD_ENV, pin_environment

    pin_environment("avx2")  # before torch loads (as python -m univg.demo): AVX2 kernels, 2 threads
    os.environ.update({k: str(args.threads) for k in THREAD_ENV})  # unless --threads says otherwise
    import torch

    from univg.demo.numerics import pinned_torch

    logdir = args.logdir / ("quick" if args.quick else f"lr{demo_settings(args).grpo_lr:g}")
    with pinned_torch("avx2") as numerics:
        torch.set_num_threads(args.threads)
        numerics["threads"] = torch.get_num_threads()
        run = (run_ours if args.worker == "ours" else run_trl)(args, args.seed, logdir)
    import lightning
    import transformers
    import trl

    versions = {m.__name__: m.__version__ for m in (torch, lightning, transformers, trl)}
    print("RESULT " + json.dumps({**run, "numerics": numerics, "versions": versions}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.steps, args.probe_every, args.seeds = 2, 2, "0"
    if args.worker:
        return worker(args)
    if not Path(args.stage1).exists():
        raise SystemExit(f"{args.stage1} not found: run `python -m univg.demo --seed 0` first (its stage 1)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    frameworks = [f for f in args.frameworks.split(",") if f]
    if set(frameworks) - set(FRAMEWORKS):
        raise SystemExit(f"--frameworks: choose from {FRAMEWORKS}")
    settings = settings_record(args)
    if args.out is None:  # the smoke test's numbers are meaningless: not beside the results
        lr = f"grpo_learning_lr{settings['grpo_lr']:g}.json"
        args.out = args.logdir / "quick.json" if args.quick else Path("benchmarks/results") / lr
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs: dict[str, Any] = stored.get("runs", {}) if stored.get("settings") == settings else {}
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    if args.quick:
        base.append("--quick")
    # OMP_WAIT_POLICY passive: threads sleep at a barrier instead of spinning (a shared machine);
    # it changes no result (the thread count decides how reductions split)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    todo = [(f, s) for s in seeds for f in frameworks if f"{f}/{s}" not in runs]
    for key in sorted(set(runs) & {f"{f}/{s}" for s in seeds for f in frameworks}):
        print(f"[{key}: in {args.out}, same settings: not run again]", file=sys.stderr)
    lock = threading.Lock()
    prov = provenance()  # at launch

    def launch(f: str, seed: int) -> None:
        key, t0 = f"{f}/{seed}", time.perf_counter()
        cmd = [sys.executable, __file__, *base, "--worker", f, "--seed", str(seed)]
        log = args.logdir / f"{args.out.stem}_{f}_seed{seed}.log"  # the run's progress (stderr)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as err:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout[-4000:] + log.read_text()[-8000:])
            raise RuntimeError(f"run {key} failed (exit {proc.returncode}); its log: {log}")
        run = json.loads(lines[-1][len("RESULT ") :])
        with lock:
            runs[key] = {**run, "wall_seconds": time.perf_counter() - t0, "concurrent_runs": args.jobs}
            print(f"[{key}: {time.perf_counter() - t0:.0f} s wall]", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps({"settings": settings, "provenance": prov, "runs": runs}, indent=1)
            )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # in order: ours and TRL of a seed together
        for fut in [pool.submit(launch, f, s) for f, s in todo]:
            fut.result()
    done = sorted({int(k.split("/")[1]) for k in runs})
    print(
        "settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f"; seeds run: {','.join(map(str, done))}"
    )
    print(table(runs, done), end="")
    for tail in TAILS:
        print(f"\nverdict, gain to the mean of the last {tail} probe point(s):\n{verdict(runs, done, tail)}")
    title = (
        f"GRPO from the demo's CoT-SFT checkpoint (thin: one seed, thick: mean): lr {settings['grpo_lr']:g}, "
        f"G {settings['group_size']}, {settings['grpo_prompts']} prompts/step, beta {settings['beta']}, "
        f"{settings['threads']} thread(s), seeds {','.join(map(str, done))}"
    )
    png = figure(runs, done, args.out.with_suffix(".png"), title)
    print(f"raw: {args.out}" + (f"; figure: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
