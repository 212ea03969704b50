"""Evaluation on 2 CPU processes (DDP, gloo) through the CLI: gathered once, no duplicates, nothing dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_evaluation_gathers_each_sample_once(tmp_path):
    from univg.data.synthetic import generate_samples

    n = 5  # odd: DistributedSampler pads rank 1 with a repeat of sample 0
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "univg",
        "test",
        "--config",
        str(ROOT / "configs" / "eval" / "synthetic.yaml"),
        "--data.init_args.num_test",
        str(n),
        "--data.init_args.image_size",
        "56",
        "--data.init_args.eval_batch_size",
        "1",
        "--model.init_args.max_new_tokens",
        "4",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.enable_progress_bar",
        "false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = list((tmp_path / "runs" / "eval" / "synthetic").glob("version_*"))
    assert len(runs) == 1  # both processes wrote into one run directory
    out = runs[0]
    preds = [json.loads(line) for line in (out / "predictions_test.jsonl").open()]
    expected = [s.id for s in generate_samples(n, image_size=56, seed=2)]  # the test split's seed
    assert sorted(p["id"] for p in preds) == sorted(expected)  # each sample exactly once
    result = json.loads((out / "results_test.json").read_text())
    assert result["metrics"]["count"] == n
    assert result["notes"]["duplicates_removed"] == 1  # the padded repeat, removed by id
    assert not list(out.glob("*.part.jsonl"))  # both ranks' shards merged and removed
