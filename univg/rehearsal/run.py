"""Running the rehearsal: the three stage configs through ``python -m univg`` on 2 processes,
then the measurements and their checks (``python -m univg.rehearsal``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from univg.core.help_text import with_examples
from univg.rehearsal.checks import check_measurements, measure, report
from univg.rehearsal.inputs import (
    REPO,
    Plan,
    stand_in_model,
    warm_start,
    warm_start_prompts,
    write_checkpoint,
    write_data,
)


# --------------------------------------------------------------------------------- running
def _cli(stage_config: str, overrides: list[str], log: Path) -> float:
    cmd = [sys.executable, "-m", "univg", stage_config.split()[0], *stage_config.split()[1:], *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if rc != 0:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"univg rehearsal: {stage_config} failed (rc {rc}); see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def _common(ckpt: Path, out: Path, name: str, procs: int) -> list[str]:
    return [
        "--config",
        "configs/fsdp/7b_8gpu.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(procs),
        "--trainer.strategy.init_args.process_group_backend",
        "gloo",
        "--model.init_args.backbone.preset",
        "tiny",
        "--model.init_args.backbone.checkpoint",
        str(ckpt),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        "0",
    ]


def _fit_budget() -> list[str]:
    # the step budget: the configs validate every 100-500 steps; here once, at the end of the epoch
    return ["--trainer.val_check_interval", "1.0", "--trainer.num_sanity_val_steps", "0"]


def run(out: Path, plan: Plan, keep: bool = False) -> list[tuple[str, bool, str]]:
    """Write the inputs, run the three stages (``keep``: reuse a stage whose output exists), check."""
    out.mkdir(parents=True, exist_ok=True)
    data = write_data(out / "data", plan.stage1_records, plan.stage2_records, plan.eval_records)
    images = out / "data" / "images"
    model = stand_in_model()
    warm = warm_start(model, warm_start_prompts(data["stage2"], data["mig"], images), plan.warm)
    ckpt = write_checkpoint(out / "Qwen2-VL-tiny-Instruct", model)
    val = ["--data.init_args.val_file", str(data["mig"]), "--data.init_args.eval_image_root", str(images)]
    s1 = out / "stage1" / "version_0" / "checkpoints" / "last.ckpt"
    s2 = out / "stage2" / "version_0" / "checkpoints" / "last.ckpt"
    timings: dict[str, float] = {"warm start": warm["seconds"]}
    if not (keep and s1.exists()):
        timings["stage 1"] = _cli(
            "fit --config configs/cot_sft.yaml",
            _common(ckpt, out, "stage1", plan.procs)
            + _fit_budget()
            + ["--data.init_args.train_file", str(data["stage1"]), "--data.init_args.image_root", str(images)]
            + val,
            out / "stage1.log",
        )
    if not (keep and s2.exists()):
        for stale in ("invariants.jsonl", "probe.jsonl"):
            (out / "stage2" / "version_0" / stale).unlink(missing_ok=True)
        per_process = plan.stage2_prompts_per_step // plan.procs
        timings["stage 2"] = _cli(
            "fit --config configs/grpo_diff.yaml",
            _common(ckpt, out, "stage2", plan.procs)
            + _fit_budget()
            + ["--model.init_args.init_checkpoint", str(s1), "--model.init_args.check_invariants", "true"]
            + ["--trainer.callbacks+=univg.rehearsal.probe.Stage2Probe"]
            # step budget: 1 prompt (G = 8 completions) per process per optimiser step; validation
            # is left to stage 1 (the same evaluation code) and the evaluation run below
            + ["--model.init_args.prompts_per_step", str(plan.stage2_prompts_per_step)]
            + ["--data.init_args.batch_size", str(per_process), "--trainer.limit_val_batches", "0"]
            + ["--data.init_args.train_file", str(data["stage2"]), "--data.init_args.image_root", str(images)]
            + val,
            out / "stage2.log",
        )
    timings["evaluation"] = _cli(
        "test --config configs/eval/mig_bench.yaml",
        _common(ckpt, out, "eval", plan.procs)
        + ["--model.init_args.init_checkpoint", str(s2), "--model.init_args.backbone.dtype", "float32"]
        + ["--data.init_args.test_file", str(data["mig"]), "--data.init_args.image_root", str(images)],
        out / "eval.log",
    )
    m = measure(out, plan, ckpt, model)
    m["warm_start"] = warm
    print(report(m))
    checks = check_measurements(m)
    for name, ok, measured in checks:
        print(f"univg rehearsal: [{'ok' if ok else 'FAIL'}] {name}: {measured}")
    for stage, seconds in timings.items():
        print(f"univg rehearsal: {stage} took {seconds:.0f} s")
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m univg.rehearsal",
        description=__doc__.splitlines()[0],
        **with_examples("python -m univg.rehearsal --out runs/rehearsal"),
    )
    p.add_argument("--out", default="runs/rehearsal", help="output folder (inputs, runs, logs)")
    p.add_argument("--procs", type=int, default=2, help="CPU processes (gloo), standing in for GPUs")
    p.add_argument("--keep", action="store_true", help="reuse stages whose checkpoint exists in --out")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    checks = run(Path(args.out).resolve(), Plan(procs=args.procs), keep=args.keep)
    failed = [name for name, ok, _ in checks if not ok]
    print(
        f"univg rehearsal: {len(checks) - len(failed)} of {len(checks)} invariants hold ({time.perf_counter() - t0:.0f} s)"
    )
    return 1 if failed else 0
