"""Paper-layout tables: merging runs (ablation grid, RefCOCO splits), AVG arithmetic, footers, CLI."""

from __future__ import annotations

import csv
import json

import pytest

from univg.metrics import MIG_TASKS
from univg.reports import (
    build_table,
    load_reference,
    main,
    merge_results,
    merge_tables,
    paper_ablation,
    write_run_results,
)


def mig_result(run: str, accs: dict[str, float], skipped: dict | None = None) -> dict:
    metrics = {f"acc@0.5/{t}": a for t, a in accs.items()}
    metrics.update(count=100.0, **{"acc@0.5": 0.5, "avg": sum(accs.values()) / len(accs)})
    return {
        "run": run,
        "benchmark": "mig_bench",
        "stage": "test",
        "metrics": metrics,
        "skipped": skipped or {},
    }


def split_result(run: str, benchmark: str, acc: float) -> dict:
    return {"run": run, "benchmark": benchmark, "stage": "test", "metrics": {"acc@0.5": acc, "count": 10.0}}


def test_merge_ablation_runs_into_table4(tmp_path):
    # two runs of the grid, each in its own directory as an evaluation leaves them
    a = {t: 0.1 * (i + 1) for i, t in enumerate(MIG_TASKS)}  # 0.1 .. 1.0 -> AVG 0.55
    b = dict.fromkeys(MIG_TASKS, 0.7)
    write_run_results(mig_result("s2grpo", a), tmp_path / "s2grpo" / "version_0")
    write_run_results(
        mig_result("s2diff", b, skipped={"missing image": 3}), tmp_path / "s2diff" / "version_0"
    )
    md, table = merge_tables([tmp_path], "table4")
    rows = {r["Model"]: r for r in csv.DictReader(table.splitlines())}
    assert rows["s2grpo"]["Static"] == "10.00" and rows["s2grpo"]["Co-Re"] == "100.00"
    assert rows["s2grpo"]["AVG"] == "55.00"  # (10 + 20 + ... + 100) / 10
    assert rows["s2grpo"]["Paper AVG"] == "70.65" and rows["s2grpo"]["Δ"] == "-15.65"
    assert rows["s2diff"]["AVG"] == "70.00" and rows["s2diff"]["Paper AVG"] == "72.64"
    assert rows["s2diff"]["Δ"] == "-2.64"
    assert "| s2diff | 70.00 |" in md
    assert (
        "s2diff (mig_bench, test): 100 samples evaluated; not evaluated 3 of 103 records (missing image 3)"
        in md
    )
    assert merge_results([tmp_path], "table4") == md


def test_refcoco_splits_of_one_run_fill_one_row_and_average_unweighted():
    results = [
        split_result("univg", "refcoco/val", 0.9),
        split_result("univg", "refcoco+/testA", 0.8),
        split_result("univg", "refcocog/test", 0.4),
        split_result("base", "refcoco/val", 0.3),
    ]
    header, rows, notes = build_table(results, "refcoco")
    assert header[1:4] == ["RefCOCO val", "RefCOCO testA", "RefCOCO testB"] and header[-1] == "AVG"
    univg = next(r for r in rows if r[0] == "univg")
    assert univg[1] == "90.00" and univg[5] == "80.00" and univg[8] == "40.00"
    assert univg[-1] == "70.00*"  # (90 + 80 + 40) / 3 over 3 of 8 splits
    assert "* univg: AVG over 3 of 8 columns." in notes
    assert [r[0] for r in rows][-3:] == ["UniVG-R1 (paper)", "Migician (paper)", "Qwen2-VL-7B (paper)"]


def test_zeroshot_layout_and_complete_row_has_no_star():
    keys = ["lisa/val", "lisa/test", "llmseg", "reasonvos", "revos"]
    results = [split_result("r", k, v) for k, v in zip(keys, [0.1, 0.2, 0.3, 0.4, 0.5])]
    header, rows, _ = build_table(results, "zeroshot", paper=False)
    assert header == [
        "Model",
        "LISA-Grounding val",
        "LISA-Grounding test",
        "LLMSeg-Grounding",
        "ReasonVOS",
        "ReVOS",
        "AVG",
    ]
    assert rows == [["r", "10.00", "20.00", "30.00", "40.00", "50.00", "30.00"]]


def test_paper_rows_and_ablation_matching():
    header, rows, _ = build_table([mig_result("x", dict.fromkeys(MIG_TASKS, 0.5))], "mig")
    paper = {r[0]: r for r in rows}
    assert paper["UniVG-R1 (paper)"][-1] == "72.64" and paper["Qwen2-VL-7B (paper)"][-1] == "30.20"
    assert paper_ablation("table5", "phi_square") == 71.56 and paper_ablation("table6", "cotsft") == 41.09
    assert paper_ablation("table4", "my-run") is None
    # the run names of the ablation grid (make/grid.mk) find their paper rows
    grid = {
        "table4_base": 30.20,
        "table4_rl21k": 57.43,
        "table4_s2diff": 72.64,
        "table5_phi_none": 70.65,
        "table5_phi_neglog": 71.57,
        "table6_2b_base": 18.58,
        "table6_2b_cot": 41.09,
        "table6_2b_diff": 57.96,
    }
    for name, value in grid.items():
        assert paper_ablation(name.split("_")[0], name) == value, name


def test_cli_merge_writes_markdown_and_csv(tmp_path, capsys):
    write_run_results(split_result("univg", "lisa/val", 0.5), tmp_path / "lisa_val")
    write_run_results(split_result("univg", "llmseg", 0.25), tmp_path / "llmseg")
    out = tmp_path / "tables" / "zeroshot.md"
    assert (
        main(
            [
                "merge",
                "--runs",
                str(tmp_path / "lisa_val"),
                str(tmp_path / "llmseg"),
                "--layout",
                "zeroshot",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "| univg | 50.00 | – | 25.00 | – | – | 37.50* |" in text
    assert out.with_suffix(".csv").exists()
    assert main(["show", str(tmp_path / "llmseg" / "results_test.json")]) == 0
    assert "LLMSeg-Grounding" in capsys.readouterr().out


def test_same_run_name_in_two_directories_is_kept_apart(tmp_path):
    write_run_results(mig_result("default", dict.fromkeys(MIG_TASKS, 0.1)), tmp_path / "a")
    write_run_results(mig_result("default", dict.fromkeys(MIG_TASKS, 0.2)), tmp_path / "b")
    _, table = merge_tables([tmp_path / "a", tmp_path / "b"], "mig")
    rows = [r for r in csv.DictReader(table.splitlines()) if "paper" not in r["Model"]]
    assert [(r["Model"], r["AVG"]) for r in rows] == [("default", "10.00"), ("default (b)", "20.00")]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown layout"):
        build_table([], "table9")
    with pytest.raises(FileNotFoundError, match="no results file"):
        merge_tables([tmp_path / "missing"], "mig")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results_test.json").write_text(json.dumps(split_result("x", "lisa/val", 0.1)))
    with pytest.raises(ValueError, match="no results for layout 'refcoco'"):
        merge_tables([tmp_path / "r"], "refcoco")


def test_reference_file_fills_paper_rows_and_adds_new_ones(tmp_path, capsys):
    ref = tmp_path / "ref.json"
    ref.write_text(
        json.dumps(
            {
                "zeroshot": {"UniVG-R1 (paper)": {"lisa/val": 60.5, "revos": 40.0, "avg": 50.25}},
                "mig": {"My baseline": {"common_object": 12.5}},
            }
        )
    )
    reference = load_reference(ref)
    results = [split_result("r", "lisa/val", 0.5)]
    _, rows, notes = build_table(results, "zeroshot", reference=reference)
    by_name = {r[0]: r for r in rows}
    assert by_name["UniVG-R1 (paper)"] == ["UniVG-R1 (paper)", "60.50", "–", "–", "–", "40.00", "50.25"]
    assert by_name["Migician (paper)"][1:] == ["–"] * 6  # a built-in row the file does not touch
    assert not any("not transcribed" in n for n in notes)
    # a new name is appended; the built-in AVG of a row the file does not name stays
    _, rows, _ = build_table([mig_result("x", dict.fromkeys(MIG_TASKS, 0.5))], "mig", reference=reference)
    by_name = {r[0]: r for r in rows}
    assert by_name["My baseline"][3] == "12.50" and by_name["UniVG-R1 (paper)"][-1] == "72.64"
    # the CLI takes the same file
    write_run_results(split_result("univg", "lisa/val", 0.5), tmp_path / "lisa_val")
    assert (
        main(["merge", "--runs", str(tmp_path / "lisa_val"), "--layout", "zeroshot", "--reference", str(ref)])
        == 0
    )
    assert "| UniVG-R1 (paper) | 60.50 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"table9": {}}', "unknown layout 'table9'"),
        ('{"mig": {"M": {"Common": 1}}}', "mig / 'M': unknown column 'Common'"),
        (
            '{"refcoco": {"M": {"refcoco/val": 120}}}',
            "refcoco / 'M' / 'refcoco/val': 120 is not a percentage",
        ),
        ('{"zeroshot": {"M": {"llmseg": "55"}}}', "'llmseg': '55' is not a percentage"),
        ('{"zeroshot": {"M": [1, 2]}}', "expected an object of column values"),
    ],
)
def test_reference_file_errors_name_file_layout_row_and_key(tmp_path, content, message):
    ref = tmp_path / "ref.json"
    ref.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_reference(ref)
    assert str(ref) in str(err.value)
