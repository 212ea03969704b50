"""Tables in the paper's layouts, with the paper's numbers beside ours.

Every validate/test run writes ``results_<stage>.json`` (see :func:`write_run_results`)::

    {"run": name, "benchmark": key, "stage": "test", "step": N,
     "metrics": {...GroundingMetrics.compute()...}, "skipped": {reason: count},
     "notes": {...}, "predictions": "path/predictions_test.jsonl", ...}

and beside it ``results_<stage>.md`` / ``.csv``: the run's row in its paper table. Several runs are
merged into one table by :func:`merge_results` (``python -m univg.reports merge``):

- ``mig``: paper Table 1, MIG-Bench Acc@0.5 in 10 task columns + AVG (unweighted mean of columns);
- ``zeroshot``: Table 2, LISA-Grounding val/test, LLMSeg, ReasonVOS, ReVOS + AVG;
- ``refcoco``: Table 3, RefCOCO/+/g in 8 splits + AVG (one run per split, same run name);
- ``table4`` / ``table5`` / ``table6``: the ablations (stages, phi, 2B): MIG-Bench columns, AVG and
  the paper's AVG for the row a run stands for: Table 5's by the phi in the run's saved config
  (:mod:`univg.model.run_config`), Tables 4 and 6 by the row id in the run name (docs/design.md section 5).

Each table also shows the paper's rows in full (all models of Tables 1-3, every ablation row of
Tables 4-6, every column whatever our runs cover), from :mod:`univg.evaluation.tables.paper`. In the ablation
tables, runs on the synthetic benchmark (the grid's ``debug`` and ``mini`` scales) get their own
task columns and the paper's AVG beside them, labelled as a different task and model size, instead
of the paper's rows; in Table 1 they stand beside the paper's rows. Either way the title, and a
synthetic row beside other rows, say "(synthetic data)". ``--seeds`` merges runs of the same name
from several seeds into one row of mean ± standard deviation. ``python -m univg.reports paper
--table N`` prints the paper's Table N alone.

All numbers are percentages with two decimals, as in the paper. A cell we have no number for is "–".
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from univg.data.readers.mig_bench import MIG_COLUMNS
from univg.evaluation.tables.cells import (
    ABLATIONS,
    BENCHMARKS,
    LAYOUTS,
    csv_table,
    layout_of,
    markdown_table,
    mean,
    paper_cell,
    pct,
    run_cells,
    task_columns,
)
from univg.evaluation.tables.paper import (
    PAPER_ABLATION_ROWS,
    PAPER_TABLE_TITLES,
    REFCOCO_SPLITS,
    REFERENCE_LAYOUTS,
    ZEROSHOT,
    paper_ablation,
    paper_notes,
    reference_rows,
)
from univg.evaluation.tables.results_files import find_results
from univg.model.checkpoint_io import atomic_write_text

#: What marks our rows (and a table's title) when their numbers come from the synthetic benchmark.
SYNTHETIC_MARK = "(synthetic data)"


def _columns(
    layout: str, results: Sequence[dict[str, Any]], present_only: bool = False
) -> list[tuple[str, str]]:
    """The table's columns: the layout's own (MIG-Bench's ten), then other tasks of the results;
    ``present_only``: only the tasks the results have (synthetic runs without the paper's rows)."""
    if layout == "refcoco":
        return list(REFCOCO_SPLITS)
    if layout == "zeroshot":
        return list(ZEROSHOT)
    cols: list[tuple[str, str]] = [] if present_only else list(MIG_COLUMNS)
    for r in results:
        m = r.get("metrics", {})
        present = [c for c in task_columns(m) if not present_only or f"acc@0.5/{c[0]}" in m]
        cols += [c for c in present if c not in cols]
    return cols


def _spread(values: Sequence[float | None]) -> str:
    """Mean ± sample standard deviation over seeds (percent); one value alone, "–" for none.

    >>> _spread([0.5, 0.7, 0.6]), _spread([0.5]), _spread([None, None])
    ('60.00 ± 10.00', '50.00', '–')
    """
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return pct(present[0] if present else None)
    return f"{pct(statistics.mean(present))} ± {100.0 * statistics.stdev(present):.2f}"


def build_table(
    results: Sequence[dict[str, Any]],
    layout: str,
    paper: bool = True,
    reference: dict[str, dict[str, dict[str, float]]] | None = None,
    seeds: bool = False,
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of ``layout`` over ``results`` (one row per run name).

    AVG is the unweighted mean of the row's filled columns; "*" marks an AVG over fewer columns
    than the table has, and a column a run has no number for shows "–" (the paper's rows keep all
    their columns). ``reference`` (see :func:`load_reference`) adds or completes the paper rows.
    ``seeds``: the results of one run name are seeds of it (one result each); every cell shows the
    mean ± standard deviation over them, AVG that of the per-seed AVGs. Runs on the synthetic
    benchmark beside other rows are marked :data:`SYNTHETIC_MARK`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    synthetic_runs = {r["run"] for r in results if r.get("benchmark") == "synthetic"}
    synthetic = bool(results) and all(r.get("benchmark") == "synthetic" for r in results)
    ablation = layout.startswith("table")
    paper_rows_shown = paper and not (synthetic and ablation)
    cols = _columns(layout, results, present_only=synthetic and not paper_rows_shown)
    by_run: dict[str, list[dict[str, float | None]]] = {}
    rows_of: dict[str, dict[str, Any]] = {}
    for r in results:
        cells = by_run.setdefault(r["run"], [])
        if seeds or not cells:
            cells.append({})
        cells[-1].update(run_cells(r, layout))
        rows_of.setdefault(r["run"], r.get("_row") or {})
    with_phi = layout == "table5"
    header = ["Model", *(["phi"] if with_phi else []), *[title for _, title in cols], "AVG"]
    header += ["seeds"] if seeds else []
    if ablation:
        header += ["Paper AVG (MIG-Bench)"] if synthetic else ["Paper AVG", "Δ"]
    rows, notes = [], []
    own_columns = layout not in ("mig", *ABLATIONS) or (synthetic and not paper_rows_shown)
    n_main = len(cols) if own_columns else len(MIG_COLUMNS)
    # beside the paper's rows or real runs, a synthetic run's row says so
    mark_synthetic = bool(synthetic_runs) and (paper_rows_shown or len(synthetic_runs) < len(by_run))
    for run, samples in by_run.items():
        phi = rows_of[run].get("phi")
        values = [[s.get(k) for k, _ in cols] for s in samples]
        avgs = [mean(v) for v in values]
        filled = max(sum(x is not None for x in v[:n_main]) for v in values)
        mark = "*" if avgs[0] is not None and filled < n_main else ""
        cells = [_spread([v[i] for v in values]) for i in range(len(cols))]
        label = f"{run} {SYNTHETIC_MARK}" if mark_synthetic and run in synthetic_runs else run
        row = [label, *([phi or "–"] if with_phi else []), *cells, _spread(avgs) + mark]
        row += [str(len(samples))] if seeds else []
        if mark:
            notes.append(f"* {run}: AVG over {filled} of {n_main} columns.")
        if ablation:
            paper_avg = paper_ablation(layout, run, phi=phi)
            avg = mean(avgs)
            delta = None if paper_avg is None or avg is None else 100.0 * avg - paper_avg
            row += [paper_cell(paper_avg)] + (
                [] if synthetic else ["–" if delta is None else f"{delta:+.2f}"]
            )
        rows.append(row)
    if synthetic and ablation:
        size = "Qwen2-VL-2B" if layout == "table6" else "Qwen2-VL-7B"
        notes.append(
            f"Paper AVG: {PAPER_TABLE_TITLES[layout].split(':')[0]} of the UniVG-R1 paper (arXiv 2505.14231), "
            f"{size} on MIG-Bench's 10 task types: a different task and model size from these runs (a small "
            "Qwen2-VL on synthetic images); compare the order of the rows, not the values."
        )
    elif paper:
        keys = [k for k, _ in cols]
        if layout in REFERENCE_LAYOUTS:
            paper_rows = reference_rows(layout, reference)
        else:
            paper_rows = {f"{row} (paper)": values for row, values in PAPER_ABLATION_ROWS[layout].items()}
        for name, values in paper_rows.items():
            row = [
                name,
                *([name.removesuffix(" (paper)")] if with_phi else []),
                *[paper_cell(values.get(k)) for k in keys],
            ]
            row += [paper_cell(values.get("avg"))] + (["–"] if seeds else [])
            rows.append(row + ["–", "–"] if ablation else row)
        notes += paper_notes(layout, paper_rows)
    return header, rows, notes


def footer(results: Sequence[dict[str, Any]]) -> list[str]:
    """Per run: samples evaluated, what was not evaluated and why (counts), what was kept flagged."""
    lines = []
    for r in results:
        m, notes, skipped = r.get("metrics", {}), r.get("notes", {}), r.get("skipped", {})
        n = int(m.get("count", 0))
        total_bad = sum(skipped.values())
        text = f"{r['run']} ({r['benchmark']}, {r.get('stage', 'test')}): {n} samples evaluated"
        if total_bad:
            reasons = ", ".join(f"{k} {v}" for k, v in skipped.items())
            text += f"; not evaluated {total_bad} of {n + total_bad} records ({reasons})"
        else:
            text += "; not evaluated 0"
        kept = []
        if notes.get("degenerate_gt_kept"):
            kept.append(f"degenerate ground truth {notes['degenerate_gt_kept']} (cannot reach IoU 0.5)")
        if notes.get("clamped_gt"):
            kept.append(f"clamped into [0, 1] {notes['clamped_gt']}")
        if kept:
            text += "; kept flagged: " + ", ".join(kept)
        if notes.get("resumed"):
            text += f"; resumed from an earlier predictions file {notes['resumed']}"
        if notes.get("duplicates_removed"):
            text += f"; duplicates removed (distributed padding) {notes['duplicates_removed']}"
        lines.append(text + ".")
    return lines


def metrics_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Parse rates, Acc@0.3/0.5/0.7 and mean IoU of one run (percent)."""
    m = result.get("metrics", {})
    rows = [
        ["samples evaluated", str(int(m.get("count", 0)))],
        ["Acc@0.3", pct(m.get("acc@0.3"))],
        ["Acc@0.5", pct(m.get("acc@0.5"))],
        ["Acc@0.7", pct(m.get("acc@0.7"))],
        ["mean IoU", pct(m.get("miou"))],
        ["AVG over tasks (unweighted)", pct(m.get("avg"))],
        ["parse rate, strict (last <answer> block)", pct(m.get("parse_rate/strict"))],
        ["parse rate, compatible (first box anywhere)", pct(m.get("parse_rate/compatible"))],
        ["Acc@0.5, compatible parser", pct(m.get("acc@0.5/compatible"))],
    ]
    if "acc@0.5/release" in m:  # the release's own scorer (univg.evaluation.release_parse)
        rows += [
            ["parse rate, release (the release's script)", pct(m.get("parse_rate/release"))],
            ["Acc@0.5, release scorer", pct(m.get("acc@0.5/release"))],
        ]
    return ["Metric", "Value"], rows


def render_run(result: dict[str, Any]) -> tuple[str, str]:
    """(Markdown, CSV) of one run: its row in the paper's table, the metrics and the footer."""
    layout = layout_of(result["benchmark"])
    # the paper's rows compare with real benchmarks only, not with the synthetic stand-in
    header, rows, notes = build_table([result], layout, paper=result["benchmark"] != "synthetic")
    title = BENCHMARKS.get(result["benchmark"], result["benchmark"])
    parser = result.get("headline_parse") or ("strict" if result.get("strict_parse", True) else "compatible")
    md = [
        f"## {title}: {result['run']} ({result.get('stage', 'test')}, step {result.get('step', 0)})",
        "",
        markdown_table(header, rows),
        "",
        f"Acc@0.5 (%), {parser} parser. AVG: unweighted mean of the columns.",
        *notes,
        "",
        markdown_table(*metrics_table(result)),
        "",
        *footer([result]),
    ]
    if result.get("predictions"):
        md.append(f"Predictions: {result['predictions']}")
    return "\n".join(md) + "\n", csv_table(header, rows)


def write_run_results(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``results_<stage>.json``, ``.md`` and ``.csv`` of one run into ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = result.get("stage", "test")
    path = out / f"results_{stage}.json"
    md, table = render_run(result)
    atomic_write_text(out / f"results_{stage}.md", md)
    atomic_write_text(out / f"results_{stage}.csv", table)
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")  # last: the run's record
    return path


# ----------------------------------------------------------------------------- merging
def merge_tables(
    paths_or_dirs: Sequence[Any],
    layout: str,
    stage: str | None = None,
    reference: dict[str, dict[str, dict[str, float]]] | None = None,
    seeds: bool = False,
) -> tuple[str, str]:
    """(Markdown, CSV) of several runs in one table of ``layout`` (see the module docstring);
    ``seeds``: runs of one name are seeds of one row (mean ± standard deviation)."""
    results = find_results(paths_or_dirs, stage, seeds=seeds)
    if layout in ("refcoco", "zeroshot"):
        results = [r for r in results if layout_of(r["benchmark"]) == layout]
    else:
        results = [r for r in results if layout_of(r["benchmark"]) == "mig"]
    if not results:
        raise ValueError(f"no results for layout {layout!r} in {list(map(str, paths_or_dirs))}")
    header, rows, notes = build_table(results, layout, reference=reference, seeds=seeds)
    title = PAPER_TABLE_TITLES[layout]
    if any(r.get("benchmark") == "synthetic" for r in results):
        title += f"; our rows {SYNTHETIC_MARK}"
    md = [
        f"## {title}",
        "",
        markdown_table(header, rows),
        "",
        "AVG: unweighted mean of the columns.",
    ]
    md += notes + ["", *footer(results)]
    return "\n".join(md) + "\n", csv_table(header, rows)


def paper_table(layout: str) -> str:
    """The paper's rows of ``layout`` alone, as Markdown (what ``merge`` shows beside one's runs)."""
    header, rows, notes = build_table([], layout)
    md = [f"## {PAPER_TABLE_TITLES[layout]} (the paper's numbers)", "", markdown_table(header, rows), ""]
    return "\n".join(md + notes) + "\n"


def merge_results(paths_or_dirs: Sequence[Any], layout: str, stage: str | None = None) -> str:
    """Markdown table of several runs' results in ``layout`` (mig, refcoco, zeroshot, table4-6)."""
    return merge_tables(paths_or_dirs, layout, stage)[0]
