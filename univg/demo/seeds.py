"""``make demo-seeds SEEDS=0,1,2``: the demo once per seed, then the per-seed and mean table.

Each seed runs as its own ``python -m univg.demo --seed S --out <out>/seed_S`` (so its numerics are
pinned before torch loads, :mod:`univg.demo.numerics`); a seed whose ``summary.json`` is already
there with the same settings is read, not run again. The table printed is also written to
``<out>/seeds.md``. This module imports no torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from univg.core.help_text import with_examples

#: Columns of the seed table, in the paper's order (Table 4 rows 6-8 last).
STAGES = ("constant box", "base (untrained)", "CoT-SFT", "continued CoT-SFT", "GRPO", "GRPO-Difficulty")
#: The ordering the paper reports (Table 4 rows 6-8), checked on the mean Acc@0.5.
ORDER = ("continued CoT-SFT", "GRPO", "GRPO-Difficulty")


def run_seed(seed: int, out: Path, extra: Sequence[str]) -> dict[str, Any]:
    """One seed's summary, running the demo unless ``out/summary.json`` has these settings."""
    path = out / "summary.json"
    cmd = [sys.executable, "-m", "univg.demo", "--seed", str(seed), "--out", str(out), *extra]
    stamp = out / "command.json"
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == cmd[2:]:
        print(f"seed {seed}: {path} exists (same command), read", flush=True)
        return json.loads(path.read_text())
    print(f"seed {seed}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    stamp.write_text(json.dumps(cmd[2:]))
    return json.loads(path.read_text())


def _cell(m: dict[str, float]) -> str:
    return f"{100 * m['acc@0.5']:.1f} / {100 * m['miou']:.1f}"


def seed_table(summaries: dict[int, dict[str, Any]]) -> str:
    """Markdown: a row per seed (Acc@0.5 / mean IoU in %), then mean (min-max) and the sample
    standard deviation of Acc@0.5 over seeds, then the paper's ordering checked on the means."""
    stages = [s for s in STAGES if all(s in v["rows"] for v in summaries.values())]
    lines = [
        "| seed | " + " | ".join(stages) + " |",
        "|---|" + "---|" * len(stages),
    ]
    for seed, summary in summaries.items():
        lines.append(f"| {seed} | " + " | ".join(_cell(summary["rows"][s]) for s in stages) + " |")
    acc = {s: [100 * v["rows"][s]["acc@0.5"] for v in summaries.values()] for s in stages}
    miou = {s: [100 * v["rows"][s]["miou"] for v in summaries.values()] for s in stages}
    mean_cells = [
        f"{statistics.fmean(acc[s]):.1f} ({min(acc[s]):.0f}-{max(acc[s]):.0f}) / {statistics.fmean(miou[s]):.1f}"
        for s in stages
    ]
    lines.append("| mean (min-max) | " + " | ".join(mean_cells) + " |")
    if len(summaries) > 1:
        lines.append(
            "| sd of Acc@0.5 | " + " | ".join(f"{statistics.stdev(acc[s]):.1f}" for s in stages) + " |"
        )
    text = "\n".join(lines) + "\n"
    if all(s in stages for s in ORDER):
        means = [statistics.fmean(acc[s]) for s in ORDER]
        holds = all(a <= b for a, b in zip(means, means[1:], strict=False))
        text += (
            f"\nmean Acc@0.5 {' <= '.join(ORDER)}: "
            + " / ".join(f"{m:.1f}" for m in means)
            + f" -> the paper's ordering {'holds' if holds else 'does not hold'} over seeds "
            + ",".join(str(s) for s in summaries)
            + "\n"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m univg.demo.seeds",
        description=__doc__.split("\n\n")[0],
        **with_examples("python -m univg.demo.seeds --seeds 0,1,2 --out runs/demo_seeds"),
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", default="runs/demo_seeds")
    p.add_argument("demo_args", nargs="*", help="passed to python -m univg.demo (after --)")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if not seeds:
        raise SystemExit(f"--seeds {a.seeds!r}: no seed given")
    out = Path(a.out)
    summaries = {s: run_seed(s, out / f"seed_{s}", a.demo_args) for s in seeds}
    text = seed_table(summaries)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
