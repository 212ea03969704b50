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
  the paper's AVG for the run whose name matches a row id of docs/design.md section 5.

Each table also shows the paper's rows in full (all models of Tables 1-3, every ablation row of
Tables 4-6), from ``paper_results.json`` beside this module (the UniVG-R1 paper, arXiv 2505.14231).

All numbers are percentages with two decimals, as in the paper. A cell we have no number for is "–".
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from univg.metrics import MIG_COLUMNS, PARSES

REFCOCO_SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco/val", "RefCOCO val"),
    ("refcoco/testA", "RefCOCO testA"),
    ("refcoco/testB", "RefCOCO testB"),
    ("refcoco+/val", "RefCOCO+ val"),
    ("refcoco+/testA", "RefCOCO+ testA"),
    ("refcoco+/testB", "RefCOCO+ testB"),
    ("refcocog/val", "RefCOCOg val"),
    ("refcocog/test", "RefCOCOg test"),
)
ZEROSHOT: tuple[tuple[str, str], ...] = (
    ("lisa/val", "LISA-Grounding val"),
    ("lisa/test", "LISA-Grounding test"),
    ("llmseg", "LLMSeg-Grounding"),
    ("reasonvos", "ReasonVOS"),
    ("revos", "ReVOS"),
)
MIG_BENCHMARKS = ("mig_bench", "mig_bench_revised", "synthetic")

#: Benchmark key -> title; the keys are what ``GroundingModule(benchmark=...)`` and results use.
BENCHMARKS: dict[str, str] = {
    "mig_bench": "MIG-Bench",
    "mig_bench_revised": "MIG-Bench (revised)",
    "synthetic": "Synthetic MIG-style benchmark",
    **dict(REFCOCO_SPLITS),
    **dict(ZEROSHOT),
}

LAYOUTS = ("mig", "refcoco", "zeroshot", "table4", "table5", "table6")

#: Where the paper's numbers live: every per-column value of the UniVG-R1 paper's Tables 1-6
#: (arXiv 2505.14231), Acc@0.5 in %, as printed, keyed by layout and by this module's column keys.
PAPER_TABLES_FILE = Path(__file__).with_name("paper_results.json")

#: Layout -> the paper's table number and what it shows.
PAPER_TABLE_TITLES: dict[str, str] = {
    "mig": "Table 1: MIG-Bench, Acc@0.5 (%)",
    "zeroshot": "Table 2: zero-shot reasoning grounding, Acc@0.5 (%)",
    "refcoco": "Table 3: RefCOCO/+/g, Acc@0.5 (%)",
    "table4": "Table 4: training stages and data (MIG-Bench, Acc@0.5 %)",
    "table5": "Table 5: difficulty weighting phi (MIG-Bench, Acc@0.5 %)",
    "table6": "Table 6: 2B model (MIG-Bench, Acc@0.5 %)",
}


def load_paper_tables(path: str | os.PathLike = PAPER_TABLES_FILE) -> dict[str, dict[str, dict[str, float]]]:
    """The paper's rows by layout (``mig``, ``zeroshot``, ``refcoco``, ``table4``-``table6``).

    >>> tables = load_paper_tables()
    >>> tables["mig"]["UniVG-R1"]["common_object"], tables["refcoco"]["Shikra"]["avg"], len(tables["mig"])
    (93.13, 82.97, 9)
    """
    data = json.loads(Path(path).read_text())
    return {layout: rows for layout, rows in data.items() if not layout.startswith("_")}


_PAPER = load_paper_tables()

# The paper's rows of the tables that compare models (Tables 1-3), named "<model> (paper)" so a run
# called "UniVG-R1" stays apart from the published row; in the paper's order.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    layout: {f"{model} (paper)": values for model, values in _PAPER[layout].items()}
    for layout in ("mig", "refcoco", "zeroshot")
}

REFERENCE_LAYOUTS = tuple(PAPER_RESULTS)  # the layouts with rows of other models: mig, refcoco, zeroshot


def reference_columns(layout: str) -> tuple[str, ...]:
    """The keys a reference row of ``layout`` may fill: the table's column keys and ``avg``.

    >>> reference_columns("zeroshot")
    ('lisa/val', 'lisa/test', 'llmseg', 'reasonvos', 'revos', 'avg')
    """
    cols = {"mig": MIG_COLUMNS, "refcoco": REFCOCO_SPLITS, "zeroshot": ZEROSHOT}[layout]
    return tuple(k for k, _ in cols) + ("avg",)


def load_reference(path: str | os.PathLike) -> dict[str, dict[str, dict[str, float]]]:
    """Reference rows (other models' published numbers, Acc@0.5 in %) from a JSON file.

    The file maps a layout (``mig``, ``refcoco``, ``zeroshot``) to rows: ``{"mig": {"UniVG-R1
    (paper)": {"common": 80.0, ..., "avg": 72.64}}}``. Keys are the table's column keys (see
    :func:`reference_columns`); a column left out shows "–". Everything is checked, and an error
    names the file, the layout, the row and the key.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping layouts to rows, got {type(data).__name__}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for layout, rows in data.items():
        if layout not in REFERENCE_LAYOUTS:
            raise ValueError(f"{path}: unknown layout {layout!r}; choose from {REFERENCE_LAYOUTS}")
        if not isinstance(rows, dict):
            raise ValueError(f"{path}: {layout}: expected an object of rows, got {type(rows).__name__}")
        allowed = reference_columns(layout)
        for name, values in rows.items():
            if not isinstance(values, dict):
                raise ValueError(f"{path}: {layout} / {name!r}: expected an object of column values")
            for key, value in values.items():
                if key not in allowed:
                    raise ValueError(
                        f"{path}: {layout} / {name!r}: unknown column {key!r}; use one of {allowed}"
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise ValueError(
                        f"{path}: {layout} / {name!r} / {key!r}: {value!r} is not a percentage in [0, 100]"
                    )
            out.setdefault(layout, {})[str(name)] = {k: float(v) for k, v in values.items()}
    return out


def reference_rows(
    layout: str, reference: dict[str, dict[str, dict[str, float]]] | None = None
) -> dict[str, dict[str, float]]:
    """The paper rows of ``layout``: the built-in :data:`PAPER_RESULTS`, a row of ``reference``
    with the same name filling (and overriding) its cells, new names appended.

    >>> row = reference_rows("mig", {"mig": {"Qwen2-VL-7B (paper)": {"region": 50.0}}})["Qwen2-VL-7B (paper)"]
    >>> row["region"], row["diff"], row["avg"]
    (50.0, 29.92, 30.2)
    """
    rows = {name: dict(values) for name, values in PAPER_RESULTS.get(layout, {}).items()}
    for name, values in (reference or {}).get(layout, {}).items():
        rows.setdefault(name, {}).update(values)
    return rows


#: The paper's ablation rows by run id (docs/design.md section 5 maps ids to stages): every column.
PAPER_ABLATION_ROWS: dict[str, dict[str, dict[str, float]]] = {
    layout: _PAPER[layout] for layout in ("table4", "table5", "table6")
}
#: The paper's printed MIG-Bench AVG of each ablation row, by run id ("none" in Table 5 is plain
#: GRPO, the same run as Table 4's s2grpo).
PAPER_ABLATIONS: dict[str, dict[str, float]] = {
    layout: {row: values["avg"] for row, values in rows.items()}
    for layout, rows in PAPER_ABLATION_ROWS.items()
}
_ALIASES = {
    "table5": {"grpo": "none", "s2grpo": "none", "s2diff": "exp", "phi_exp": "exp"},
    "table6": {"cotsft": "cot", "s2cot": "cot", "s2grpo": "grpo", "s2diff": "diff", "grpo_diff": "diff"},
}


# ----------------------------------------------------------------------------- cells
def pct(value: float | None) -> str:
    """A fraction as the paper prints it (percent, two decimals); ``None`` -> "–".

    >>> pct(0.72641), pct(None), pct(1.0)
    ('72.64', '–', '100.00')
    """
    return "–" if value is None else f"{100.0 * value:.2f}"


def _paper(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def mean(values: Sequence[float | None]) -> float | None:
    """Unweighted mean of the cells that have a value (``None`` if none do).

    >>> mean([0.5, None, 1.0]), mean([None])
    (0.75, None)
    """
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def layout_of(benchmark: str) -> str:
    """The paper table a benchmark belongs to.

    >>> layout_of("mig_bench_revised"), layout_of("refcoco+/testA"), layout_of("lisa/val")
    ('mig', 'refcoco', 'zeroshot')
    """
    if benchmark in MIG_BENCHMARKS:
        return "mig"
    if benchmark.startswith("refcoco"):
        return "refcoco"
    return "zeroshot"


def task_columns(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """MIG-Bench's 10 columns, then any other task of ``metrics`` (a synthetic ``single`` task)."""
    known = {t for t, _ in MIG_COLUMNS}
    parses = {f"acc@0.5/{p}" for p in PARSES}  # each parse's overall Acc@0.5, not a task
    extra = sorted(k.split("/", 1)[1] for k in metrics if k.startswith("acc@0.5/") and k not in parses)
    return list(MIG_COLUMNS) + [(t, t) for t in extra if t not in known]


def run_cells(result: dict[str, Any], layout: str) -> dict[str, float | None]:
    """The cells one result fills in ``layout`` (fractions): task accuracies or its split's Acc@0.5."""
    m = result.get("metrics", {})
    if layout in ("mig", "table4", "table5", "table6"):
        return {t: m.get(f"acc@0.5/{t}") for t, _ in task_columns(m)}
    return {result["benchmark"]: m.get("acc@0.5")}


# ----------------------------------------------------------------------------- tables
def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(["" if c == "–" else c for c in r])
    return buf.getvalue()


def _columns(layout: str, results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    if layout == "refcoco":
        return list(REFCOCO_SPLITS)
    if layout == "zeroshot":
        return list(ZEROSHOT)
    cols: list[tuple[str, str]] = list(MIG_COLUMNS)
    for r in results:
        cols += [c for c in task_columns(r.get("metrics", {})) if c not in cols]
    return cols


def build_table(
    results: Sequence[dict[str, Any]],
    layout: str,
    paper: bool = True,
    reference: dict[str, dict[str, dict[str, float]]] | None = None,
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of ``layout`` over ``results`` (one row per run name).

    AVG is the unweighted mean of the row's filled columns; "*" marks an AVG over fewer columns
    than the table has. ``reference`` (see :func:`load_reference`) adds or completes the paper rows.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    cols = _columns(layout, results)
    rows_by_run: dict[str, dict[str, float | None]] = {}
    for r in results:
        rows_by_run.setdefault(r["run"], {}).update(run_cells(r, layout))
    ablation = layout.startswith("table")
    header = ["Model"] + [title for _, title in cols] + ["AVG"]
    if ablation:
        header += ["Paper AVG", "Δ"]
    rows, notes = [], []
    n_main = len(MIG_COLUMNS) if layout in ("mig", "table4", "table5", "table6") else len(cols)
    for run, cells in rows_by_run.items():
        values = [cells.get(k) for k, _ in cols]
        avg = mean(values)
        filled = sum(v is not None for v in values)
        mark = "*" if avg is not None and filled < n_main else ""
        row = [run] + [pct(v) for v in values] + [pct(avg) + mark]
        if mark:
            notes.append(f"* {run}: AVG over {filled} of {n_main} columns.")
        if ablation:
            paper_avg = paper_ablation(layout, run)
            delta = None if paper_avg is None or avg is None else 100.0 * avg - paper_avg
            row += [_paper(paper_avg), "–" if delta is None else f"{delta:+.2f}"]
        rows.append(row)
    if paper:
        keys = [k for k, _ in cols]
        if layout in REFERENCE_LAYOUTS:
            paper_rows = reference_rows(layout, reference)
        else:
            paper_rows = {f"{row} (paper)": values for row, values in PAPER_ABLATION_ROWS[layout].items()}
        for name, values in paper_rows.items():
            row = [name] + [_paper(values.get(k)) for k in keys] + [_paper(values.get("avg"))]
            rows.append(row + ["–", "–"] if ablation else row)
        notes += paper_notes(layout, paper_rows)
    return header, rows, notes


def paper_notes(layout: str, paper_rows: dict[str, dict[str, float]]) -> list[str]:
    """Footnotes of the paper rows: their source, and each row whose printed AVG is not the mean
    of its printed columns (by more than rounding to two decimals explains).

    >>> row = {"lisa/val": 60.0, "lisa/test": 50.0, "llmseg": 50.0, "reasonvos": 50.0, "revos": 40.0}
    >>> paper_notes("zeroshot", {"x (paper)": row | {"avg": 50.1}, "y (paper)": row | {"avg": 50.01}})
    ['Paper rows: UniVG-R1 paper (arXiv 2505.14231), Table 2, as printed.', 'x (paper): printed AVG 50.10; its columns average to 50.00 (AVG shows the printed value).']
    """
    source = PAPER_TABLE_TITLES[layout].split(":")[0]
    on = " (revised MIG-Bench)" if layout == "mig" else ""
    notes = [f"Paper rows: UniVG-R1 paper (arXiv 2505.14231), {source}{on}, as printed."]
    n_cols = len(reference_columns(layout if layout in REFERENCE_LAYOUTS else "mig")) - 1
    for name, values in paper_rows.items():
        cells = [v for k, v in values.items() if k != "avg"]
        if "avg" not in values or len(cells) < n_cols:
            continue
        col_mean = sum(cells) / len(cells)
        if round(abs(values["avg"] - col_mean), 4) > 0.015:
            notes.append(
                f"{name}: printed AVG {values['avg']:.2f}; its columns average to {col_mean:.2f} "
                "(AVG shows the printed value)."
            )
    return notes


def paper_ablation(layout: str, run: str) -> float | None:
    """The paper's AVG for the ablation row a run name stands for (by id, alias or name token).

    >>> paper_ablation("table4", "runs/table4/s2diff"), paper_ablation("table6", "2b_grpo"), paper_ablation("table5", "x")
    (72.64, 56.57, None)
    """
    table = PAPER_ABLATIONS.get(layout, {})
    aliases = _ALIASES.get(layout, {})
    name = run.lower().rstrip("/").split("/")[-1]
    for candidate in [name, *re.split(r"[-_.\s]+", name)]:
        candidate = aliases.get(candidate, candidate)
        if candidate in table:
            return table[candidate]
    return None


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
    if "acc@0.5/release" in m:  # the release's own scorer (univg.release_parse)
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
        _markdown(header, rows),
        "",
        f"Acc@0.5 (%), {parser} parser. AVG: unweighted mean of the columns.",
        *notes,
        "",
        _markdown(*metrics_table(result)),
        "",
        *footer([result]),
    ]
    if result.get("predictions"):
        md.append(f"Predictions: {result['predictions']}")
    return "\n".join(md) + "\n", _csv(header, rows)


def write_run_results(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``results_<stage>.json``, ``.md`` and ``.csv`` of one run into ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = result.get("stage", "test")
    path = out / f"results_{stage}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md, table = render_run(result)
    (out / f"results_{stage}.md").write_text(md)
    (out / f"results_{stage}.csv").write_text(table)
    return path


# ----------------------------------------------------------------------------- merging
def find_results(paths_or_dirs: Sequence[Any], stage: str | None = None) -> list[dict[str, Any]]:
    """Results dicts from files, directories (searched recursively for ``results_*.json``) or dicts.

    The same (run, benchmark) seen twice is labelled ``run (dir)`` the second time, not dropped.
    """
    out: list[dict[str, Any]] = []
    for item in paths_or_dirs:
        if isinstance(item, dict):
            out.append(dict(item))
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(p.rglob("results_*.json"))
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"no results file or run directory at {p}")
        for f in files:
            r = read_results(f)
            r.setdefault("_path", str(f))
            out.append(r)
    if stage is not None:
        out = [r for r in out if r.get("stage", "test") == stage]
    seen: set[tuple[str, str]] = set()
    for r in out:
        key = (r["run"], r["benchmark"])
        if key in seen:
            r["run"] = f"{r['run']} ({Path(r.get('_path', '?')).parent.name})"
        seen.add((r["run"], r["benchmark"]))
    return out


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """One ``results_<stage>.json``; a torn or foreign file is a ``ValueError`` naming the file and
    the position (a run killed while writing, a file copied half-way).

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "results_test.json"
    >>> _ = bad.write_text('{"run": "a", "benchmark": ')
    >>> read_results(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: .../results_test.json: not valid JSON at line 1, column 27 (Expecting value)
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a results object, got a JSON {type(data).__name__}")
    missing = [key for key in ("run", "benchmark") if key not in data]
    if missing:
        raise ValueError(f"{path}: not a univg results file (no {' or '.join(map(repr, missing))} field)")
    return data


def merge_tables(
    paths_or_dirs: Sequence[Any],
    layout: str,
    stage: str | None = None,
    reference: dict[str, dict[str, dict[str, float]]] | None = None,
) -> tuple[str, str]:
    """(Markdown, CSV) of several runs in one table of ``layout`` (see the module docstring)."""
    results = find_results(paths_or_dirs, stage)
    if layout in ("refcoco", "zeroshot"):
        results = [r for r in results if layout_of(r["benchmark"]) == layout]
    else:
        results = [r for r in results if layout_of(r["benchmark"]) == "mig"]
    if not results:
        raise ValueError(f"no results for layout {layout!r} in {list(map(str, paths_or_dirs))}")
    header, rows, notes = build_table(results, layout, reference=reference)
    titles = PAPER_TABLE_TITLES
    md = [f"## {titles[layout]}", "", _markdown(header, rows), "", "AVG: unweighted mean of the columns."]
    md += notes + ["", *footer(results)]
    return "\n".join(md) + "\n", _csv(header, rows)


def merge_results(paths_or_dirs: Sequence[Any], layout: str, stage: str | None = None) -> str:
    """Markdown table of several runs' results in ``layout`` (mig, refcoco, zeroshot, table4-6)."""
    return merge_tables(paths_or_dirs, layout, stage)[0]


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m univg.reports merge --runs DIR... --layout L --out FILE`` | ``show RESULTS.json``."""
    parser = argparse.ArgumentParser(prog="python -m univg.reports", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge runs' results into one paper-style table")
    merge.add_argument("--runs", nargs="+", required=True, help="run directories or results_*.json files")
    merge.add_argument("--layout", required=True, choices=LAYOUTS)
    merge.add_argument("--stage", default=None, help="only results of this stage (test or val)")
    merge.add_argument("--out", default=None, help="Markdown file to write (CSV beside it); default stdout")
    merge.add_argument(
        "--reference", default=None, help="JSON of other models' published rows (see load_reference)"
    )
    show = sub.add_parser("show", help="print one run's table")
    show.add_argument("results", help="a results_<stage>.json file")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line naming the file, no traceback
        if os.environ.get("UNIVG_DEBUG"):
            raise
        print(f"univg.reports: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        reference = load_reference(args.reference) if args.reference else None
        md, table = merge_tables(args.runs, args.layout, args.stage, reference)
        if args.out is None:
            sys.stdout.write(md)
        else:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(md)
            out.with_suffix(".csv").write_text(table)
            print(f"wrote {out} and {out.with_suffix('.csv')}")
        return 0
    md, _ = render_run(read_results(args.results))
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
