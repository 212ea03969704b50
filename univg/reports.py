"""Tables in the paper's layouts, with the paper's numbers beside ours.

    python -m univg.reports merge --runs DIR... --layout L [--seeds] [--out FILE]
    python -m univg.reports show runs/x/test/results_test.json
    python -m univg.reports paper --table N

The tables are built by :mod:`univg.evaluation.tables` (layouts, the paper's rows, results files).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from univg.core.help_text import with_examples
from univg.evaluation.tables import (
    LAYOUTS,
    PAPER_TABLE_LAYOUTS,
    layout_of_table,
    load_reference,
    merge_tables,
    paper_table,
    read_results,
    render_run,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m univg.reports merge --runs DIR... --layout L --out FILE`` | ``show RESULTS.json`` |
    ``paper --table N`` (or ``--layout L``)."""
    parser = argparse.ArgumentParser(
        prog="python -m univg.reports",
        description=__doc__.splitlines()[0],
        **with_examples(
            "python -m univg.reports merge --runs runs/a runs/b --layout mig --out table.md",
            "python -m univg.reports show runs/eval/synthetic/results_test.json",
            "python -m univg.reports paper --table 5",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge runs' results into one paper-style table")
    merge.add_argument("--runs", nargs="+", required=True, help="run directories or results_*.json files")
    merge.add_argument("--layout", required=True, choices=LAYOUTS)
    merge.add_argument("--stage", default=None, help="only results of this stage (test or val)")
    merge.add_argument(
        "--seeds",
        action="store_true",
        help="runs of one name are seeds of one row: mean ± standard deviation",
    )
    merge.add_argument("--out", default=None, help="Markdown file to write (CSV beside it); default stdout")
    merge.add_argument(
        "--reference", default=None, help="JSON of other models' published rows (see load_reference)"
    )
    show = sub.add_parser("show", help="print one run's table")
    show.add_argument("results", help="a results_<stage>.json file")
    paper = sub.add_parser(
        "paper", help="print one of the paper's Tables 1-6 alone (no results of yours needed)"
    )
    which = paper.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--table", type=int, choices=sorted(PAPER_TABLE_LAYOUTS), help="the paper's table number"
    )
    which.add_argument("--layout", choices=LAYOUTS, help="the table by layout name")
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
        md, table = merge_tables(args.runs, args.layout, args.stage, reference, seeds=args.seeds)
        if args.out is None:
            sys.stdout.write(md)
        else:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(md)
            out.with_suffix(".csv").write_text(table)
            print(f"wrote {out} and {out.with_suffix('.csv')}")
        return 0
    if args.command == "paper":
        sys.stdout.write(paper_table(args.layout or layout_of_table(args.table)))
        return 0
    md, _ = render_run(read_results(args.results))
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
