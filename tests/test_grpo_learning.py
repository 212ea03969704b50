"""benchmarks/grpo_learning.py's report (the runs themselves are a benchmark, not a test): the table
of probe curves and final numbers, on two made-up runs per framework."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from grpo_learning import table, verdict  # noqa: E402


def _run(framework: str, ious: list[float], kl: float) -> dict:
    key = {"ours": "train/kl", "trl": "kl"}[framework]
    return {
        "probe": [
            {"step": 5.0 * i, "accuracy": v, "format": 1.0, "total": v + 1} for i, v in enumerate(ious)
        ],
        "steps": [{"step": s, key: kl * s / 10} for s in range(1, 11)],
        "metrics": {"acc@0.5": 0.5, "miou": 0.45},
        "optimiser_steps": 10,
        "seconds": {"train": 100.0, "train_cpu": 80.0, "probes": 10.0, "eval": 5.0},
    }


def test_table_means_every_seed_and_final_rows():
    runs = {
        "ours/0": _run("ours", [0.40, 0.42, 0.44], 0.02),
        "ours/1": _run("ours", [0.40, 0.40, 0.40], 0.04),
        "trl/0": _run("trl", [0.40, 0.41, 0.42], 0.02),
        "trl/1": _run("trl", [0.40, 0.43, 0.46], 0.02),
    }
    text = table(runs, [0, 1])
    lines = text.splitlines()
    assert (
        lines[0] == "| step | ours mean | TRL mean | ours s0 | ours s1 | TRL s0 | TRL s1 | KL ours | KL TRL |"
    )
    # step 10: ours (0.44 + 0.40) / 2, TRL (0.42 + 0.46) / 2; KL at step 10: (0.02 + 0.04) / 2 and 0.02
    assert lines[4] == "| 10 | 0.420 | 0.440 | 0.440 | 0.400 | 0.420 | 0.460 | 0.030 | 0.020 |"
    assert lines[2].startswith("| 0 | 0.400 | 0.400 |") and lines[2].endswith(
        "| - | - |"
    )  # no KL before a step
    assert "| ours seed 1 | 0.400 -> 0.400 (+0.000) | 0.040 | 50.0 | 45.0 | 100 (80) | 10.0 | 5 |" in lines
    assert "| trl seed 1 | 0.400 -> 0.460 (+0.060) | 0.020 |" in text


def test_table_leaves_out_runs_not_done():
    text = table({"ours/0": _run("ours", [0.4, 0.5], 0.01)}, [0])
    assert "| 5 | 0.500 | - | 0.500 | - | 0.005 | - |" in text
    assert "trl seed 0" not in text


def test_verdict_learns_and_within_the_spread_worked_by_hand():
    """Gains (last probe - first): ours 0.04, 0.00 -> mean 0.02, sd 0.028; TRL 0.02, 0.06 -> mean 0.04,
    sd 0.028. Ours does not learn on seed 1; the difference 0.02 is within the spread 0.028."""
    runs = {
        "ours/0": _run("ours", [0.40, 0.42, 0.44], 0.02),
        "ours/1": _run("ours", [0.40, 0.40, 0.40], 0.04),
        "trl/0": _run("trl", [0.40, 0.41, 0.42], 0.02),
        "trl/1": _run("trl", [0.40, 0.43, 0.46], 0.02),
    }
    lines = verdict(runs, [0, 1]).splitlines()
    assert lines[0] == "ours: gain +0.020 +- 0.028 (seeds 0, 1: +0.040, +0.000); does not learn on every seed"
    assert lines[1] == "trl: gain +0.040 +- 0.028 (seeds 0, 1: +0.020, +0.060); learns: every seed's gain > 0"
    assert lines[2].startswith("ours - TRL: -0.020, within the seed spread (sd 0.028)")
    runs["trl/1"] = _run("trl", [0.40, 0.50, 0.60], 0.02)  # TRL gains 0.02, 0.20: mean 0.11, sd 0.127
    runs["ours/1"] = _run("ours", [0.40, 0.40, 0.41], 0.04)  # ours 0.04, 0.01: mean 0.025, sd 0.021
    assert verdict(runs, [0, 1]).splitlines()[2] == (
        "ours - TRL: -0.085, within the seed spread (sd 0.127): as fast as TRL per optimiser step"
    )
    runs["trl/0"] = _run("trl", [0.40, 0.50, 0.58], 0.02)  # TRL 0.18, 0.20: mean 0.19, sd 0.014
    assert "outside the seed spread (sd 0.021): slower than TRL" in verdict(runs, [0, 1])
