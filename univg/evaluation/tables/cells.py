"""Cells, columns and layouts of the paper-style tables (:mod:`univg.evaluation.tables`), and the few lines an
evaluation ends with (:func:`evaluation_summary`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from univg.data.readers.mig_bench import MIG_COLUMNS
from univg.evaluation.metrics import PARSES
from univg.evaluation.tables.paper import REFCOCO_SPLITS, ZEROSHOT

MIG_BENCHMARKS = ("mig_bench", "mig_bench_revised", "synthetic")

#: Benchmark key -> title; the keys are what ``GroundingModule(benchmark=...)`` and results use.
BENCHMARKS: dict[str, str] = {
    "mig_bench": "MIG-Bench",
    "mig_bench_revised": "MIG-Bench (revised)",
    "synthetic": "Synthetic MIG-style benchmark",
    **dict(REFCOCO_SPLITS),
    **dict(ZEROSHOT),
}

ABLATIONS = ("table4", "table5", "table6")
LAYOUTS = ("mig", "refcoco", "zeroshot", *ABLATIONS)


def pct(value: float | None) -> str:
    """A fraction as the paper prints it (percent, two decimals); ``None`` -> "–".

    >>> pct(0.72641), pct(None), pct(1.0)
    ('72.64', '–', '100.00')
    """
    return "–" if value is None else f"{100.0 * value:.2f}"


def paper_cell(value: float | None) -> str:
    """A paper number (already in percent) as printed; ``None`` -> "–"."""
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


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def csv_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as CSV ("–" cells empty)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(["" if c == "–" else c for c in r])
    return buf.getvalue()


def results_table_path(result: dict[str, Any]) -> Path | None:
    """Where :func:`~univg.evaluation.tables.build.write_run_results` put the run's full table (``results_<stage>.md``,
    beside the predictions); None when nothing was written."""
    predictions = result.get("predictions")
    if not predictions:
        return None
    return Path(predictions).parent / f"results_{result.get('stage', 'test')}.md"


def evaluation_summary(result: dict[str, Any]) -> str:
    """The lines an evaluation ends with: AVG and Acc@0.5, Acc@0.5 per task, where the full table is.

    >>> r = {"run": "debug", "benchmark": "synthetic", "stage": "test", "step": 12,
    ...      "predictions": "runs/x/predictions_test.jsonl",
    ...      "metrics": {"count": 8.0, "avg": 0.25, "acc@0.5": 0.375, "acc@0.5/single": 0.5, "acc@0.5/diff": 0.0}}
    >>> print(evaluation_summary(r))
    univg: test of debug on Synthetic MIG-style benchmark (8 samples, step 12): AVG 25.00, Acc@0.5 37.50 (%)
      Acc@0.5 by task: Static 0.00 · single 50.00
      full table: runs/x/results_test.md (and .json, .csv)
    """
    m = result.get("metrics", {})
    stage = result.get("stage", "test")
    title = BENCHMARKS.get(result.get("benchmark", ""), result.get("benchmark", "?"))
    head = f"univg: {stage} of {result.get('run', '?')} on {title} ({int(m.get('count', 0))} samples"
    head += f", step {result.get('step', 0)}): "
    numbers = [f"AVG {pct(m['avg'])}"] if "avg" in m else []
    head += ", ".join([*numbers, f"Acc@0.5 {pct(m.get('acc@0.5'))}"]) + " (%)"
    lines = [head]
    tasks = [(title, m[f"acc@0.5/{t}"]) for t, title in task_columns(m) if f"acc@0.5/{t}" in m]
    if tasks:
        lines.append("  Acc@0.5 by task: " + " · ".join(f"{name} {pct(v)}" for name, v in tasks))
    path = results_table_path(result)
    where = f"{path} (and .json, .csv)" if path is not None else "not written (the run has no log folder)"
    lines.append(f"  full table: {where}")
    return "\n".join(lines)


__all__ = [
    "ABLATIONS",
    "BENCHMARKS",
    "LAYOUTS",
    "MIG_BENCHMARKS",
    "csv_table",
    "evaluation_summary",
    "layout_of",
    "markdown_table",
    "mean",
    "paper_cell",
    "pct",
    "results_table_path",
    "run_cells",
    "task_columns",
]
