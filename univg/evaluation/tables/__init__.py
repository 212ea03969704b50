"""Results files and tables in the paper's layouts, with the paper's numbers beside ours.

- :mod:`~univg.evaluation.tables.build`: a run's results files (``results_<stage>.json`` / ``.md`` /
  ``.csv``, written by every validate/test run) and several runs merged into one table;
- :mod:`~univg.evaluation.tables.cells`: cells, columns and layouts, and an evaluation's summary lines;
- :mod:`~univg.evaluation.tables.paper`: the paper's published numbers (``paper_results.json``);
- :mod:`~univg.evaluation.tables.results_files`: results files found in run folders and read.

``python -m univg.reports`` is the command over them.
"""

from univg.evaluation.tables.build import (
    SYNTHETIC_MARK,
    build_table,
    footer,
    merge_results,
    merge_tables,
    metrics_table,
    paper_table,
    render_run,
    write_run_results,
)
from univg.evaluation.tables.cells import (
    ABLATIONS,
    BENCHMARKS,
    LAYOUTS,
    MIG_BENCHMARKS,
    csv_table,
    evaluation_summary,
    layout_of,
    markdown_table,
    mean,
    paper_cell,
    pct,
    results_table_path,
    run_cells,
    task_columns,
)
from univg.evaluation.tables.paper import (
    PAPER_ABLATION_ROWS,
    PAPER_ABLATIONS,
    PAPER_RESULTS,
    PAPER_TABLE_LAYOUTS,
    PAPER_TABLE_TITLES,
    PAPER_TABLES_FILE,
    REFCOCO_SPLITS,
    REFERENCE_LAYOUTS,
    ZEROSHOT,
    layout_of_table,
    load_paper_tables,
    load_reference,
    paper_ablation,
    paper_notes,
    reference_columns,
    reference_rows,
)
from univg.evaluation.tables.results_files import find_results, read_results

__all__ = [
    "ABLATIONS",
    "BENCHMARKS",
    "LAYOUTS",
    "MIG_BENCHMARKS",
    "PAPER_ABLATIONS",
    "PAPER_ABLATION_ROWS",
    "PAPER_RESULTS",
    "PAPER_TABLES_FILE",
    "PAPER_TABLE_LAYOUTS",
    "PAPER_TABLE_TITLES",
    "REFCOCO_SPLITS",
    "REFERENCE_LAYOUTS",
    "SYNTHETIC_MARK",
    "ZEROSHOT",
    "build_table",
    "csv_table",
    "evaluation_summary",
    "find_results",
    "footer",
    "layout_of",
    "layout_of_table",
    "load_paper_tables",
    "load_reference",
    "markdown_table",
    "mean",
    "merge_results",
    "merge_tables",
    "metrics_table",
    "paper_ablation",
    "paper_cell",
    "paper_notes",
    "paper_table",
    "pct",
    "read_results",
    "reference_columns",
    "reference_rows",
    "render_run",
    "results_table_path",
    "run_cells",
    "task_columns",
    "write_run_results",
]
