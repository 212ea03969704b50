"""The paper's tables alone (``paper --table N``) and beside one's own runs: the paper's rows keep
every column whatever one's runs cover, a column a run lacks shows "–", synthetic results say so."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from univg.data.readers.mig_bench import MIG_COLUMNS, MIG_TASKS
from univg.evaluation.tables import merge_tables, write_run_results
from univg.reports import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = json.loads((ROOT / "univg" / "evaluation" / "tables" / "paper_results.json").read_text())
TITLES = [title for _, title in MIG_COLUMNS]


def _result(run: str, benchmark: str, tasks: list[str], acc: float = 0.5) -> dict:
    metrics = {f"acc@0.5/{t}": acc for t in tasks}
    metrics.update(count=40.0, avg=acc)
    return {"run": run, "benchmark": benchmark, "stage": "test", "metrics": metrics}


def _rows(table: str) -> dict[str, dict[str, str]]:
    return {r["Model"]: r for r in csv.DictReader(table.splitlines())}


def test_paper_table_n_prints_that_table_alone_through_the_console():
    proc = subprocess.run(
        [sys.executable, "-m", "univg.reports", "paper", "--table", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## Table 5: difficulty weighting phi")
    exp = [line for line in proc.stdout.splitlines() if line.startswith("| exp (paper) |")]
    assert len(exp) == 1 and f"| {PAPER['table5']['exp']['avg']:.2f} |" in exp[0]


@pytest.mark.parametrize(
    ("number", "title", "model"),
    [
        (1, "## Table 1: MIG-Bench", "UniVG-R1 (paper)"),
        (2, "## Table 2: zero-shot", "UniVG-R1 (paper)"),
        (3, "## Table 3: RefCOCO", "Shikra (paper)"),
        (4, "## Table 4: training stages", "sft90k (paper)"),
        (6, "## Table 6: 2B model", "diff (paper)"),
    ],
)
def test_every_table_number_names_its_own_table(number, title, model, capsys):
    assert main(["paper", "--table", str(number)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(title) and f"| {model} |" in out
    assert sum(line.startswith("## ") for line in out.splitlines()) == 1  # that table alone


def test_a_table_the_paper_does_not_have_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["paper", "--table", "7"])
    assert e.value.code == 2 and "invalid choice: 7" in capsys.readouterr().err


def test_synthetic_run_on_8_of_10_tasks_keeps_the_papers_full_rows_and_says_synthetic(tmp_path):
    write_run_results(_result("mine", "synthetic", list(MIG_TASKS[:8])), tmp_path / "mine")
    md, table = merge_tables([tmp_path], "mig")
    header = next(csv.reader(table.splitlines()))
    assert header == ["Model", *TITLES, "AVG"]  # the two tasks the run lacks are kept as columns
    rows = _rows(table)
    univg = rows["UniVG-R1 (paper)"]
    assert [float(univg[t]) for t in TITLES] == [PAPER["mig"]["UniVG-R1"][k] for k in MIG_TASKS]
    mine = rows["mine (synthetic data)"]
    assert [mine[t] for t in TITLES] == ["50.00"] * 8 + ["", ""]  # "–" is an empty CSV cell
    assert mine["AVG"] == "50.00*" and "* mine: AVG over 8 of 10 columns." in md
    assert md.startswith("## Table 1: MIG-Bench, Acc@0.5 (%); our rows (synthetic data)")


def test_a_real_run_beside_a_synthetic_one_is_not_marked(tmp_path):
    write_run_results(_result("real", "mig_bench", list(MIG_TASKS)), tmp_path / "real")
    write_run_results(_result("toy", "synthetic", ["single", *MIG_TASKS[:2]]), tmp_path / "toy")
    md, table = merge_tables([tmp_path], "mig")
    rows = _rows(table)
    assert "real" in rows and "toy (synthetic data)" in rows and "real (synthetic data)" not in rows
    assert rows["toy (synthetic data)"]["single"] == "50.00" and rows["real"]["single"] == ""
    assert all(rows["Migician (paper)"][t] for t in TITLES)


def test_synthetic_ablation_rows_show_their_own_tasks_and_a_marked_title(tmp_path):
    write_run_results(_result("table5_phi_exp", "synthetic", ["single", "diff"]), tmp_path / "r")
    md, table = merge_tables([tmp_path], "table5")
    header = next(csv.reader(table.splitlines()))
    assert header == ["Model", "phi", "Static", "single", "AVG", "Paper AVG (MIG-Bench)"]
    assert list(_rows(table)) == ["table5_phi_exp"]  # no paper rows beside a synthetic stand-in
    assert "our rows (synthetic data)" in md.splitlines()[0]
