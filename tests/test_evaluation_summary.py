"""An evaluation ends with a few lines (AVG, Acc@0.5 per task, where the full table is) instead of
Lightning's 43-line metric table; the full numbers are in ``results_test.md``/``.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from univg.data.readers.mig_bench import MIG_COLUMNS
from univg.data.synthetic import TASKS

ROOT = Path(__file__).resolve().parents[1]


def test_a_test_run_ends_with_the_summary_and_writes_the_full_table(tmp_path):
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "univg",
            "test",
            "--config",
            "configs/eval/synthetic.yaml",
            "--config",
            "experiments/debug/eval.yaml",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--data.init_args.num_test=4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "synthetic" / "version_0"
    metrics = json.loads((run / "results_test.json").read_text())["metrics"]
    table = run / "results_test.md"
    assert "| Metric | Value |" in table.read_text()  # the full numbers are kept in the file
    lines = proc.stdout.strip().splitlines()
    assert "Test metric" not in proc.stdout and "test/acc@0.5/single" not in proc.stdout
    head = next(i for i, line in enumerate(lines) if line.startswith("univg: test of synthetic"))
    summary = lines[head:]
    assert len(summary) == 3, summary  # the last thing printed, three lines
    assert f"AVG {100 * metrics['avg']:.2f}, Acc@0.5 {100 * metrics['acc@0.5']:.2f} (%)" in summary[0]
    scored = [t for t in TASKS if f"acc@0.5/{t}" in metrics]  # the tasks of the 4 samples
    assert summary[1].startswith("  Acc@0.5 by task: ") and len(summary[1].split(" · ")) == len(scored)
    titles = dict(MIG_COLUMNS)
    for task in scored:
        assert f"{titles.get(task, task)} {100 * metrics[f'acc@0.5/{task}']:.2f}" in summary[1]
    assert summary[2] == f"  full table: {table} (and .json, .csv)"
