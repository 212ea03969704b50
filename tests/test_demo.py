"""The miniature demo produces every artefact, and its table agrees with its predictions files."""

from __future__ import annotations

import json

import pytest

from univg.data.synthetic import generate_samples
from univg.demo import constant_box_metrics, run_demo, smoke_settings, write_table


def test_constant_box_and_table_arithmetic(tmp_path):
    train = generate_samples(20, tasks=["single"], image_size=56, seed=0)
    test = generate_samples(10, tasks=["single", "diff"], image_size=56, seed=1)
    m = constant_box_metrics(train, test)
    assert m["count"] == 10 and 0.0 <= m["miou"] < 0.5
    text = write_table(
        {"a": {"acc@0.5/single": 0.5, "acc@0.5": 0.25, "miou": 0.3, "avg": 0.4}}, ["single"], tmp_path
    )
    assert "| a | 50.0 | 25.0 | 30.0 | 40.0 |" in text
    assert (tmp_path / "table.csv").read_text().splitlines()[1] == "a,50.0,25.0,30.0,40.0"


@pytest.mark.slow
def test_smoke_demo_writes_every_artefact(tmp_path):
    summary = run_demo(smoke_settings(0), tmp_path)
    for name in ("table.md", "table.csv", "figure3.png", "predictions.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list(tmp_path.glob("*/version_0/events.out.tfevents.*"))
    rows = summary["rows"]
    assert list(rows) == ["constant box", "base (untrained)", "CoT-SFT", "GRPO", "GRPO-Difficulty"]
    # each evaluated row equals what its predictions file says
    for row, stage in [
        ("base (untrained)", "base"),
        ("CoT-SFT", "cot_sft_eval"),
        ("GRPO", "grpo_none_eval"),
        ("GRPO-Difficulty", "grpo_exp_eval"),
    ]:
        lines = (tmp_path / stage / "version_0" / "predictions_test.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == 8
        assert rows[row]["acc@0.5"] == pytest.approx(sum(r["iou"] >= 0.5 for r in recs) / len(recs))
        assert rows[row]["miou"] == pytest.approx(sum(r["iou"] for r in recs) / len(recs), abs=1e-6)
    assert len(summary["grpo_curves"]["GRPO"]) == 2 and len(summary["grpo_curves"]["GRPO-Difficulty"]) == 2
    table = (tmp_path / "table.md").read_text()
    assert "GRPO-Difficulty" in table and "constant box" in table
