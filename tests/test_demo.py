"""The miniature demo produces every artefact, and its table agrees with its predictions files."""

from __future__ import annotations

import json

import pytest

from univg.data.synthetic import generate_samples
from univg.demo import (
    apply_overrides,
    constant_box_metrics,
    run_demo,
    run_stage2,
    smoke_settings,
    write_table,
)


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
    # the reward probe: fixed prompts at steps 0, 1, 2; both runs start from the same stage-1
    # weights and probe with the same random stream, so their step-0 points are identical
    probes = summary["reward_probe"]
    assert [p["step"] for p in probes["GRPO"]] == [0.0, 1.0, 2.0]
    assert probes["GRPO"][0] == probes["GRPO-Difficulty"][0]
    for p in probes["GRPO"]:
        assert p["total"] == pytest.approx(p["accuracy"] + p["format"], abs=1e-6)
    table = (tmp_path / "table.md").read_text()
    assert "GRPO-Difficulty" in table and "constant box" in table

    # stage 2 alone from the saved stage-1 checkpoint reproduces the demo's GRPO run exactly
    cfg = apply_overrides(smoke_settings(0), ['grpo_phis=["none"]'])
    again = run_stage2(cfg, tmp_path / "cot_sft" / "version_0" / "stage1.ckpt", tmp_path / "again")
    assert list(again["rows"]) == ["GRPO"]
    assert again["rows"]["GRPO"] == rows["GRPO"]
    assert again["reward_probe"]["GRPO"] == probes["GRPO"]


def test_overrides_parse_field_types_and_reject_unknown_fields():
    cfg = apply_overrides(smoke_settings(0), ["grpo_lr=2e-4", "beta=0", 'grpo_phis=["exp"]', "untie=false"])
    assert (cfg.grpo_lr, cfg.beta, cfg.grpo_phis, cfg.untie) == (2e-4, 0.0, ("exp",), False)
    assert smoke_settings(0).grpo_lr != 2e-4  # a copy: the original is untouched
    with pytest.raises(SystemExit, match="grpo_learning_rate"):
        apply_overrides(smoke_settings(0), ["grpo_learning_rate=1"])
    with pytest.raises(SystemExit, match="expected field=value"):
        apply_overrides(smoke_settings(0), ["grpo_lr"])
