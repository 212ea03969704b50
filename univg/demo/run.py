"""``python -m univg.demo``: every stage (:func:`run_demo`) or stage 2 alone (:func:`run_stage2`)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from univg.core.help_text import with_examples
from univg.demo.numerics import DEFAULT, NUMERICS, Numerics, pinned_torch
from univg.demo.report import collect_pictures, write_outputs
from univg.demo.sets import eval_set, sft_train_set
from univg.demo.settings import DemoSettings, apply_overrides, smoke_settings
from univg.demo.stages import constant_box_metrics, evaluate_checkpoint, run_grpo_stage, run_stage1


def run_demo(
    cfg: DemoSettings, out: str | os.PathLike = "runs/demo", numerics: Numerics = DEFAULT
) -> dict[str, Any]:
    """Run every stage; return (and write) the summary. ``numerics``: :mod:`univg.demo.numerics`
    (its environment pins only hold when set before torch was imported, as ``__main__`` does)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with pinned_torch(numerics) as report:
        t_all = time.perf_counter()
        L.seed_everything(cfg.seed, verbose=False)
        test = eval_set(cfg)
        train = sft_train_set(cfg)
        rows = {"constant box": constant_box_metrics(train, test)}
        ckpt, stage1_rows, times, stage1_losses = run_stage1(cfg, train, test, out, numerics)
        rows.update(stage1_rows)
        curves, probes, stage2_rows, stage2_times, losses = run_grpo_stage(cfg, ckpt, test, out)
    rows.update(stage2_rows)
    times.update(stage2_times)
    times["total"] = time.perf_counter() - t_all
    losses = {"CoT-SFT": stage1_losses, **losses}
    summary = write_outputs(cfg, out, rows, curves, probes, times, losses, numerics=report)
    collect_pictures(out, out / "predictions.png")
    return summary


def run_stage2(
    cfg: DemoSettings, ckpt: str | os.PathLike, out: str | os.PathLike, numerics: Numerics = DEFAULT
) -> dict[str, Any]:
    """Stage 2 only, from an existing stage-1 checkpoint (to choose stage-2 settings without
    re-running SFT): the checkpoint's own row, then every stage-2 run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with pinned_torch(numerics) as report:
        t_all = time.perf_counter()
        test = eval_set(cfg)
        rows = {"CoT-SFT": evaluate_checkpoint(cfg, ckpt, test, out)}
        times = {"cot_sft_eval": time.perf_counter() - t_all}
        curves, probes, stage2_rows, stage2_times, losses = run_grpo_stage(cfg, ckpt, test, out)
    rows.update(stage2_rows)
    times.update(stage2_times)
    times["total"] = time.perf_counter() - t_all
    return write_outputs(
        cfg, out, rows, curves, probes, times, losses, numerics=report, stage1_checkpoint=str(ckpt)
    )


def parser() -> argparse.ArgumentParser:
    from univg.demo import __doc__ as doc

    p = argparse.ArgumentParser(
        prog="python -m univg.demo",
        description=(doc or "").split("\n\n")[0],
        **with_examples(
            "python -m univg.demo --out runs/demo", "python -m univg.demo --smoke --out runs/demo_smoke"
        ),
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny budgets: every artefact in about a minute")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a DemoSettings field"
    )
    p.add_argument(
        "--stage1", metavar="CKPT", help="skip base eval and CoT-SFT: run stage 2 from this stage1.ckpt"
    )
    p.add_argument(
        "--numerics",
        choices=NUMERICS,
        default=DEFAULT,
        help="floating-point kernels: avx2 (default) or baseline give the same numbers on every x86-64 "
        "CPU that has those instructions; native: this CPU's fastest (see univg.demo.numerics)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    cfg = smoke_settings(a.seed) if a.smoke else DemoSettings(seed=a.seed)
    cfg = apply_overrides(cfg, a.set)
    if a.stage1:
        summary = run_stage2(cfg, a.stage1, a.out, a.numerics)
    else:
        summary = run_demo(cfg, a.out, a.numerics)
    print((Path(a.out) / "table.md").read_text())
    print(f"univg demo: {summary['seconds']['total']:.0f} s; artefacts in {a.out}/")
    return 0
