"""The miniature demo produces every artefact, its table agrees with its predictions files, and its
numbers do not depend on the CPU capability level ATen would pick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from univg.data.synthetic import generate_samples
from univg.demo import (
    DemoSettings,
    apply_overrides,
    constant_box_metrics,
    held_out_set,
    smoke_settings,
    validation_set,
    write_table,
)
from univg.demo.numerics import PINNED_ENV, pin_environment, pinned_torch
from univg.demo.seeds import run_seed, seed_table

ROOT = Path(__file__).resolve().parents[1]


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


def test_outputs_without_a_grpo_run_have_no_figure(tmp_path):
    from univg.demo.report import write_outputs

    rows = {"continued CoT-SFT": {"acc@0.5/single": 0.5, "acc@0.5": 0.5, "miou": 0.4, "avg": 0.5}}
    summary = write_outputs(DemoSettings(grpo_phis=()), tmp_path, rows, {}, {}, {"cont_sft": 1.0}, {})
    assert summary["rows"] == rows and (tmp_path / "table.md").is_file()
    assert not (tmp_path / "figure3.png").exists()


def test_validation_split_is_another_draw_of_the_same_generator():
    cfg = smoke_settings(3)
    val, test = validation_set(cfg), held_out_set(cfg)
    assert len(val) == len(test) == cfg.eval_n
    assert {s.task for s in val} == {s.task for s in test} == set(cfg.eval_tasks)
    assert not {s.id for s in val} & {s.id for s in test}
    assert [s.box for s in val] != [s.box for s in test]


def demo(out: Path, *args: str, **env: str) -> dict:
    """``python -m univg.demo --smoke --out OUT ARGS`` (seed 0; it pins its numerics first thing, in
    its own process); the summary it writes."""
    cmd = [sys.executable, "-m", "univg.demo", "--smoke", "--out", str(out), *args]
    proc = subprocess.run(
        cmd, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory):
    """The smoke demo run once, as on an AVX2 CPU: its folder and summary. The artefact test below
    reruns into that folder; the numerics test compares against the summary read here."""
    out = tmp_path_factory.mktemp("demo")
    return out, demo(out, ATEN_CPU_CAPABILITY="avx2")


@pytest.mark.slow
def test_smoke_demo_writes_every_artefact(smoke_demo):
    tmp_path, summary = smoke_demo
    for name in ("table.md", "table.csv", "figure3.png", "predictions.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list(tmp_path.glob("*/version_0/events.out.tfevents.*"))
    rows = summary["rows"]
    assert list(rows) == [
        "constant box",
        "base (untrained)",
        "CoT-SFT",
        "continued CoT-SFT",
        "GRPO",
        "GRPO-Difficulty",
    ]
    # each evaluated row equals what its predictions file says
    for row, stage in [
        ("base (untrained)", "base"),
        ("CoT-SFT", "cot_sft_eval"),
        ("continued CoT-SFT", "cont_sft_eval"),
        ("GRPO", "grpo_none_eval"),
        ("GRPO-Difficulty", "grpo_exp_eval"),
    ]:
        lines = (tmp_path / stage / "version_0" / "predictions_test.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert len(recs) == 8
        assert rows[row]["acc@0.5"] == pytest.approx(sum(r["iou"] >= 0.5 for r in recs) / len(recs))
        assert rows[row]["miou"] == pytest.approx(sum(r["iou"] for r in recs) / len(recs), abs=1e-6)
    assert len(summary["grpo_curves"]["GRPO"]) == 2 and len(summary["grpo_curves"]["GRPO-Difficulty"]) == 2
    # a loss per optimiser step: 4 + 2 curriculum steps; continued CoT-SFT 2 passes x 2 steps
    assert len(summary["sft_losses"]["CoT-SFT"]) == 6
    assert len(summary["sft_losses"]["continued CoT-SFT"]) == 4
    # the reward probe: fixed prompts at steps 0, 1, 2; both runs start from the same stage-1
    # weights and probe with the same random stream, so their step-0 points are identical
    probes = summary["reward_probe"]
    assert [p["step"] for p in probes["GRPO"]] == [0.0, 1.0, 2.0]
    assert probes["GRPO"][0] == probes["GRPO-Difficulty"][0]
    for p in probes["GRPO"]:
        assert p["total"] == pytest.approx(p["accuracy"] + p["format"], abs=1e-6)
    # python -m univg.predict on the demo's stage-1 checkpoint builds the demo's model from the
    # config.yaml beside it (not the default 7B preset, whose sizes would not match)
    from PIL import Image

    from univg.predict.__main__ import main as predict

    Image.new("RGB", (112, 112), (40, 40, 40)).save(tmp_path / "user.png")
    ckpt = tmp_path / "cot_sft" / "version_0" / "stage1.ckpt"
    predicted = predict(
        ["--images", str(tmp_path / "user.png"), "--instruction", "the box", "--init-checkpoint", str(ckpt),
         "--max-new-tokens", "4", "--out", str(tmp_path / "predict")]
    )  # fmt: skip
    assert len(predicted) == 1 and predicted[0]["target_index"] == 0
    table = (tmp_path / "table.md").read_text()
    assert "GRPO-Difficulty" in table and "constant box" in table and "continued CoT-SFT" in table

    # stage 2 alone from the saved stage-1 checkpoint reproduces the demo's stage-2 runs exactly,
    # and its evaluation of the checkpoint (a fresh module loading the file) the CoT-SFT row
    ckpt = tmp_path / "cot_sft" / "version_0" / "stage1.ckpt"
    again = demo(tmp_path / "again", "--stage1", str(ckpt), "--set", 'grpo_phis=["none"]')
    assert list(again["rows"]) == ["CoT-SFT", "continued CoT-SFT", "GRPO"]
    for row in again["rows"]:
        assert again["rows"][row] == rows[row], row
    assert again["reward_probe"]["GRPO"] == probes["GRPO"]
    assert again["sft_losses"]["continued CoT-SFT"] == summary["sft_losses"]["continued CoT-SFT"]

    # the demo rerun into the same folder with other stage-2 settings reuses stage 1 (same stage-1
    # settings and numerics: the checkpoint file is not rewritten) and scores every stage afresh
    stamp = ckpt.stat().st_mtime_ns
    rerun = demo(tmp_path, "--set", 'grpo_phis=["none"]', "--set", "cont_sft_epochs=1")
    assert ckpt.stat().st_mtime_ns == stamp
    assert list(rerun["rows"]) == ["constant box", "base (untrained)", "CoT-SFT", "continued CoT-SFT", "GRPO"]
    for row in ("constant box", "base (untrained)", "CoT-SFT", "GRPO"):
        assert rerun["rows"][row] == rows[row], row
    assert rerun["sft_losses"]["CoT-SFT"] == summary["sft_losses"]["CoT-SFT"]
    assert rerun["sft_losses"]["continued CoT-SFT"] == summary["sft_losses"]["continued CoT-SFT"][:2]


def _numbers(summary: dict) -> dict:
    """Everything in a summary that the numerics could change (not seconds, not timings)."""
    curves = {
        k: [{m: v for m, v in step.items() if not m.startswith("perf/")} for step in steps]
        for k, steps in summary["grpo_curves"].items()
    }
    return {
        "rows": summary["rows"],
        "curves": curves,
        "probe": summary["reward_probe"],
        "losses": summary["sft_losses"],
    }


@pytest.mark.slow
def test_smoke_numbers_do_not_depend_on_the_capability_level_aten_would_pick(tmp_path, smoke_demo):
    """``python -m univg.demo`` pins the numerics itself: started as if on a CPU whose ATen level is
    ``default`` (and whose oneDNN stops at SSE4.1) or ``avx2``, it runs the same kernels and writes
    the same numbers, down to every SFT loss. The ``default`` run trains the GRPO row only (phi
    none); every number it writes equals the ``avx2`` run's (the shared smoke demo, both rows)."""
    base = demo(tmp_path / "default", "--set", 'grpo_phis=["none"]', ATEN_CPU_CAPABILITY="default",
                ONEDNN_MAX_CPU_ISA="SSE41")  # fmt: skip
    summaries = {"default": base, "avx2": smoke_demo[1]}
    for numerics in (s["numerics"] for s in summaries.values()):
        assert numerics["pinned"] and numerics["aten_cpu_capability"] == "AVX2", numerics
        assert numerics["threads"] == 2 and numerics["MKL_CBWR"] == "AVX2"
    a, b = (_numbers(s) for s in summaries.values())
    assert a["losses"]["CoT-SFT"] and a["losses"]["continued CoT-SFT"]
    assert "GRPO-Difficulty" in b["rows"] and "GRPO-Difficulty" not in a["rows"]
    b = {part: {k: v for k, v in b[part].items() if k != "GRPO-Difficulty"} for part in b}
    assert a == b


def test_pin_environment_sets_each_mode_and_refuses_too_late(monkeypatch):
    env: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "1"}
    assert pin_environment("avx2", env) == {
        **PINNED_ENV["avx2"],
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    assert (
        env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2" and env["OMP_NUM_THREADS"] == "2"
    )
    native: dict[str, str] = {"OMP_NUM_THREADS": "1"}
    assert pin_environment("native", native) == {} and native == {"OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="numerics must be one of"):
        pin_environment("avx512", {})  # type: ignore[arg-type]
    import torch  # noqa: F401  (already loaded by the imports above)

    monkeypatch.setenv("MKL_CBWR", "AUTO")
    with pytest.raises(RuntimeError, match="torch is already imported"):
        pin_environment("avx2")


def test_pinned_torch_sets_then_restores_torch_state(monkeypatch):
    import torch

    monkeypatch.delenv("MKL_CBWR", raising=False)  # the environment pins are not in effect here

    def state() -> tuple:
        return (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.mkldnn.enabled,
        )

    before = state()
    with pytest.warns(UserWarning, match="not in effect"), pinned_torch("avx2") as report:
        assert state() == (2, True, False)
    assert report["mode"] == "avx2" and report["pinned"] is False and report["MKL_CBWR"] is None
    assert state() == before
    with pinned_torch("native") as report:
        assert state() == before
    assert report["pinned"] is False and report["threads"] == before[0]


def test_overrides_parse_field_types_and_reject_unknown_fields():
    cfg = apply_overrides(smoke_settings(0), ["grpo_lr=7e-4", "beta=0", 'grpo_phis=["exp"]', "untie=false"])
    assert (cfg.grpo_lr, cfg.beta, cfg.grpo_phis, cfg.untie) == (7e-4, 0.0, ("exp",), False)
    assert smoke_settings(0).grpo_lr != 7e-4  # a copy: the original is untouched
    with pytest.raises(SystemExit, match="grpo_learning_rate"):
        apply_overrides(smoke_settings(0), ["grpo_learning_rate=1"])
    with pytest.raises(SystemExit, match="expected field=value"):
        apply_overrides(smoke_settings(0), ["grpo_lr"])
    # Literal-typed fields fail at parse time, naming the field
    with pytest.raises(SystemExit, match="eval_split: 'valid' is not one of"):
        apply_overrides(smoke_settings(0), ["eval_split=valid"])
    with pytest.raises(ValueError, match="DemoSettings.scale_rewards"):
        DemoSettings(scale_rewards="groups")  # type: ignore[arg-type]
    # phases given as JSON become Phase objects
    cfg = apply_overrides(DemoSettings(), ['phases=[{"tasks": ["single"], "steps": 5}]'])
    assert cfg.phases[0].steps == 5 and cfg.phases[0].tasks == ["single"]


def _summary(rows: dict[str, tuple[float, float]]) -> dict:
    return {"rows": {k: {"acc@0.5": a, "miou": m} for k, (a, m) in rows.items()}}


def test_seed_table_means_spread_and_ordering(tmp_path):
    s0 = _summary(
        {
            "CoT-SFT": (0.30, 0.40),
            "continued CoT-SFT": (0.32, 0.41),
            "GRPO": (0.36, 0.44),
            "GRPO-Difficulty": (0.40, 0.45),
        }
    )
    s1 = _summary(
        {
            "CoT-SFT": (0.70, 0.60),
            "continued CoT-SFT": (0.66, 0.58),
            "GRPO": (0.60, 0.55),
            "GRPO-Difficulty": (0.64, 0.56),
        }
    )
    text = seed_table({0: s0, 1: s1})
    assert "| seed | CoT-SFT | continued CoT-SFT | GRPO | GRPO-Difficulty |" in text
    assert "| 0 | 30.0 / 40.0 | 32.0 / 41.0 | 36.0 / 44.0 | 40.0 / 45.0 |" in text
    # means by hand: (30+70)/2 = 50, (40+60)/2 = 50; (32+66)/2 = 49; (36+60)/2 = 48; (40+64)/2 = 52
    assert (
        "| mean (min-max) | 50.0 (30-70) / 50.0 | 49.0 (32-66) / 49.5 | 48.0 (36-60) / 49.5 | 52.0 (40-64) / 50.5 |"
        in text
    )
    # sample sd of two values a, b: |a - b| / sqrt(2): 40 / 1.4142 = 28.3, 34 -> 24.0, 24 -> 17.0
    assert "| sd of Acc@0.5 | 28.3 | 24.0 | 17.0 | 17.0 |" in text
    assert "49.0 / 48.0 / 52.0 -> the paper's ordering does not hold over seeds 0,1" in text
    assert "holds over seeds 0" in seed_table({0: s0})


def test_run_seed_reads_a_finished_seed_with_the_same_command(tmp_path, capsys):
    out = tmp_path / "seed_4"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(_summary({"GRPO": (0.5, 0.5)})))
    (out / "command.json").write_text(json.dumps(["univg.demo", "--seed", "4", "--out", str(out), "--smoke"]))
    assert run_seed(4, out, ["--smoke"])["rows"]["GRPO"]["acc@0.5"] == 0.5
    assert "exists (same command), read" in capsys.readouterr().out
