"""Paper-layout tables: merging runs (ablation grid, RefCOCO splits), AVG arithmetic, footers, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from univg.data.readers.mig_bench import MIG_TASKS
from univg.evaluation.tables import (
    build_table,
    find_results,
    load_reference,
    merge_results,
    merge_tables,
    paper_ablation,
    write_run_results,
)
from univg.reports import main


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
    # the paper's Table 3 follows in its order: 9 models, ending with Migician and UniVG-R1
    assert [r[0] for r in rows][-2:] == ["Migician (paper)", "UniVG-R1 (paper)"] and len(rows) == 2 + 9


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
    # the file overrides the cells it names; the others keep the paper's printed values (Table 2)
    assert by_name["UniVG-R1 (paper)"] == [
        "UniVG-R1 (paper)",
        "60.50",
        "59.69",
        "50.60",
        "58.73",
        "40.00",
        "50.25",
    ]
    assert by_name["Migician (paper)"][1:] == ["36.00", "32.09", "34.68", "33.41", "39.70", "35.18"]
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


# ----------------------------------------------------------------------------- the paper's tables
SHARED_TABLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "paper" / "paper_tables.json"
# the transcription's table names -> our layouts (the paper numbers zero-shot Table 2, RefCOCO Table 3)
SHARED_KEYS = {
    "table1_mig_bench_revised": "mig",
    "table2_zeroshot": "zeroshot",
    "table3_refcoco": "refcoco",
    "table4_stages_7b": "table4",
    "table5_phi_7b": "table5",
    "table6_2b": "table6",
}


@pytest.mark.skipif(not SHARED_TABLES.is_file(), reason=f"no transcription of the paper at {SHARED_TABLES}")
def test_every_paper_number_matches_the_transcription():
    from univg.evaluation.tables import load_paper_tables

    shared = json.loads(SHARED_TABLES.read_text())
    ours = load_paper_tables()
    assert set(ours) == set(SHARED_KEYS.values())
    checked = 0
    for key, layout in SHARED_KEYS.items():
        assert list(ours[layout]) == list(shared[key]), layout  # every row, in the paper's order
        for row, values in shared[key].items():
            assert ours[layout][row] == values, (layout, row)
            checked += len(values)
    assert checked == 9 * 11 + 3 * 6 + 9 * 9 + (8 + 4 + 4) * 11


def test_hand_copied_paper_numbers():
    # copied by hand from the paper's Tables 1-6 (Acc@0.5 %), independently of the JSON file
    from univg.evaluation.tables import PAPER_ABLATION_ROWS, PAPER_RESULTS

    assert PAPER_RESULTS["mig"]["Migician (paper)"]["object_tracking"] == 67.82
    assert PAPER_RESULTS["mig"]["Qwen2-VL-72B (paper)"]["correspondence"] == 17.94
    assert PAPER_RESULTS["zeroshot"]["UniVG-R1 (paper)"]["reasonvos"] == 58.73
    assert PAPER_RESULTS["refcoco"]["GroundingDINO-L (paper)"]["refcoco+/testB"] == 75.9
    assert PAPER_ABLATION_ROWS["table4"]["sft90k"]["region"] == 86.62
    assert PAPER_ABLATION_ROWS["table5"]["neglog"]["refer_grounding"] == 83.84
    assert PAPER_ABLATION_ROWS["table6"]["diff"]["correspondence"] == 29.91
    assert paper_ablation("table5", "phi_exp") == 72.64  # the table's value; the text quotes 72.62


def test_merged_mig_table_shows_all_nine_models_of_table1_with_every_column(tmp_path):
    write_run_results(mig_result("ours", dict.fromkeys(MIG_TASKS, 0.5)), tmp_path / "ours")
    md, table = merge_tables([tmp_path], "mig")
    rows = {r["Model"]: r for r in csv.DictReader(table.splitlines())}
    models = ["Qwen2-VL-72B", "Mantis", "LLaVA-OV-7B", "MiniCPM2.6", "mPLUG-Owl3", "InternVL2-8B"]
    models += ["Qwen2-VL-7B", "Migician", "UniVG-R1"]
    assert list(rows) == ["ours"] + [f"{m} (paper)" for m in models]
    for name, row in rows.items():
        assert all(row[c] for c in row), name  # no empty cell anywhere (the CSV writes "–" as "")
    assert rows["Mantis (paper)"]["OT"] == "12.18" and rows["InternVL2-8B (paper)"]["Refer"] == "34.34"
    assert rows["UniVG-R1 (paper)"]["AVG"] == "72.64"
    assert "## Table 1: MIG-Bench" in md and "Table 1 (revised MIG-Bench)" in md
    # the printed AVG that is not the mean of its columns is said so, with the mean
    assert "UniVG-R1 (paper): printed AVG 72.64; its columns average to 72.62" in md
    assert "Migician (paper): printed AVG" not in md


def test_ablation_tables_show_every_paper_row_in_full(tmp_path):
    write_run_results(mig_result("table4_s2diff", dict.fromkeys(MIG_TASKS, 0.7)), tmp_path / "r")
    for layout, ids in [
        ("table4", ["base", "rl21k", "cot21k", "sft90k", "cot90k", "s2cot", "s2grpo", "s2diff"]),
        ("table5", ["none", "neglog", "square", "exp"]),
        ("table6", ["base", "cot", "grpo", "diff"]),
    ]:
        md, table = merge_tables([tmp_path], layout)
        rows = {r["Model"]: r for r in csv.DictReader(table.splitlines())}
        assert list(rows)[1:] == [f"{i} (paper)" for i in ids], layout
        assert f"Paper rows: UniVG-R1 paper (arXiv 2505.14231), Table {layout[-1]}, as printed." in md
    # the last merge was table6; table 4's sft90k row carries every column and its printed AVG
    _, table = merge_tables([tmp_path], "table4")
    rows = {r["Model"]: r for r in csv.DictReader(table.splitlines())}
    assert rows["sft90k (paper)"]["Region"] == "86.62" and rows["sft90k (paper)"]["AVG"] == "67.30"
    assert rows["table4_s2diff"]["Paper AVG"] == "72.64" and rows["table4_s2diff"]["Δ"] == "-2.64"


def _grid_row(root: Path, row: str, train: dict | None, single: float) -> Path:
    """A grid row as the CLI leaves it: <row>/fit/config.yaml (when trained) and <row>/test/ with
    its results and config.yaml naming the trained weights."""
    import yaml

    test_cfg: dict = {"model": {"class_path": "univg.modules.GroundingModule", "init_args": {}}}
    if train is not None:
        (root / row / "fit").mkdir(parents=True)
        (root / row / "fit" / "config.yaml").write_text(yaml.safe_dump(train))
        test_cfg["model"]["init_args"]["init_checkpoint"] = str(root / row / "fit" / "weights.ckpt")
    result = {
        "run": row,
        "benchmark": "synthetic",
        "stage": "test",
        "metrics": {"acc@0.5/single": single, "acc@0.5": single, "avg": single, "count": 100.0},
    }
    write_run_results(result, root / row / "test")
    (root / row / "test" / "config.yaml").write_text(yaml.safe_dump(test_cfg))
    return root / row / "test"


def _grpo(phi: str) -> dict:
    return {
        "model": {
            "class_path": "univg.modules.GRPOModule",
            "init_args": {
                "phi": phi,
                "init_checkpoint": "x/fit/weights.ckpt",
                "backbone": {"preset": "tiny"},
            },
        },
        "data": {"init_args": {"num_train": 160}},
    }


def test_table5_reads_phi_from_the_saved_config_not_the_run_name(tmp_path):
    # the run names say nothing (or the wrong thing) about phi; the saved configs decide
    runs = [
        _grid_row(tmp_path, "row_a", _grpo("square"), 0.6),
        _grid_row(tmp_path, "table5_phi_exp", _grpo("none"), 0.5),
        _grid_row(tmp_path, "start", {"model": {"class_path": "univg.modules.SFTModule"}}, 0.4),
    ]
    header, rows, notes = build_table(find_results(runs), "table5")
    assert header == ["Model", "phi", "single", "AVG", "Paper AVG (MIG-Bench)"]
    assert rows == [
        ["row_a", "square", "60.00", "60.00", "71.56"],  # Table 5's square row
        ["table5_phi_exp", "none", "50.00", "50.00", "70.65"],  # not exp (72.64): the config says none
        ["start", "n/a", "40.00", "40.00", "–"],  # an SFT run has no Table 5 row
    ]
    assert any("different task and model size" in n for n in notes)


def test_merge_seeds_reports_mean_and_spread(tmp_path):
    dirs = []
    for seed, (a, b) in enumerate([(0.5, 0.2), (0.7, 0.2), (0.6, 0.5)]):
        root = tmp_path / f"seed{seed}"
        dirs += [_grid_row(root, "table5_phi_none", _grpo("none"), a), _grid_row(root, "x", _grpo("exp"), b)]
    out = tmp_path / "ablation-phi-seeds.md"
    assert main(["merge", "--seeds", "--runs", *map(str, dirs), "--layout", "table5", "--out", str(out)]) == 0
    rows = list(csv.reader(out.with_suffix(".csv").read_text().splitlines()))
    assert rows[0] == ["Model", "phi", "single", "AVG", "seeds", "Paper AVG (MIG-Bench)"]
    # none: 50, 70, 60 -> mean 60, sample sd 10; exp: 20, 20, 50 -> mean 30, sd sqrt(300) = 17.32
    assert rows[1] == ["table5_phi_none", "none", "60.00 ± 10.00", "60.00 ± 10.00", "3", "70.65"]
    assert rows[2] == ["x", "exp", "30.00 ± 17.32", "30.00 ± 17.32", "3", "72.64"]


def test_paper_tables_print_without_results_of_ones_own(capsys):
    """``python -m univg.reports paper --layout L`` prints the paper's tables before one has run
    anything. Checked against the paper's numbers as the data file holds them."""
    import json

    from univg.reports import main

    paper = json.loads(
        (
            Path(__file__).resolve().parent.parent / "univg" / "evaluation" / "tables" / "paper_results.json"
        ).read_text()
    )
    for layout in ("mig", "refcoco", "zeroshot", "table4", "table5", "table6"):
        assert main(["paper", "--layout", layout]) == 0
        out = capsys.readouterr().out
        assert out.startswith("## ") and "(the paper's numbers)" in out
    assert main(["paper", "--layout", "table5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for phi, row in paper["table5"].items():
        (line,) = [x for x in lines if x.startswith(f"| {phi} (paper) |")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert [float(c) for c in cells[2:12]] == [row[k] for k in list(row)[:10]]
        assert float(cells[12]) == row["avg"]
