"""Time the demo's CoT-SFT step (full-size demo model, batch 8) under each numerics mode.

Each mode runs in a fresh process with its environment set before torch loads
(:func:`univg.demo.numerics.pin_environment`), as ``python -m univg.demo`` does; the modes are
interleaved ``--repeats`` times so that a busy machine slows them alike. Prints seconds per step
(median over repeats, after 2 warm-up steps) and the ratio to ``native``, the cost of the pin.

    python benchmarks/demo_numerics.py [--steps 12] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, steps: int) -> None:
    import tempfile
    import time

    import lightning as L

    from univg.demo import DemoSettings, ListDataModule, Phase, sft_train_set
    from univg.demo.numerics import pinned_torch
    from univg.modules import SFTModule

    cfg = DemoSettings(phases=[Phase(["single"], steps)])
    train = sft_train_set(cfg)
    data = ListDataModule(train, [], batch_size=cfg.sft_batch, target_format="cot", seed=0)
    L.seed_everything(0, verbose=False)
    module = SFTModule(backbone=cfg.backbone(freeze_vision=False), lr=cfg.sft_lr, num_pictures=0)
    stamps: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp, pinned_torch(mode) as report:  # type: ignore[arg-type]
        L.Trainer(
            accelerator="cpu",
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Clock()],
            default_root_dir=tmp,
        ).fit(module, datamodule=data)
    per_step = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
    print(json.dumps({"mode": mode, "s_per_step": per_step, "capability": report["aten_cpu_capability"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.steps)
        return
    from univg.demo.numerics import NUMERICS, pin_environment

    times: dict[str, list[float]] = {m: [] for m in NUMERICS}
    caps: dict[str, str] = {}
    for _ in range(a.repeats):
        for mode in NUMERICS:
            env = {"MALLOC_MMAP_MAX_": "0", **os.environ, "PYTHONPATH": str(ROOT)}  # as the Makefile
            pin_environment(mode, env)  # type: ignore[arg-type]
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(a.steps)]
            res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            times[mode].append(row["s_per_step"])
            caps[mode] = row["capability"]
    native = statistics.median(times["native"])
    print(f"demo CoT-SFT step (batch 8), median of {a.repeats}, {a.steps - 2} timed steps each:")
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"  {mode:9s} ATen {caps[mode]:8s} {med:.3f} s/step  x{med / native:.2f} of native")


if __name__ == "__main__":
    main()
