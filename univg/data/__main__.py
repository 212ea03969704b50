"""``python -m univg.data list [--root DIR]`` | ``prepare NAME... [--root DIR] [--check-only]``
(also ``python -m univg data ...``): every dataset of the paper, fetched and checked."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from univg.core.errors import entry_point
from univg.core.help_text import with_examples
from univg.data.prepare import DATASETS, list_datasets, prepare


@entry_point("univg.data")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 every dataset ready, 1 some not, 2 bad input (one ``univg.data: error:`` line)."""
    parser = argparse.ArgumentParser(
        prog="python -m univg.data",
        description=__doc__.splitlines()[0],
        **with_examples(
            "python -m univg.data list",
            "python -m univg.data prepare mig_bench",
            "python -m univg.data prepare lisa --check-only",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every dataset with its source, expected record count and status")
    ls.add_argument("--root", default="data", help="the data folder the configs read (default: data)")
    prep = sub.add_parser("prepare", help="download (where on the Hub), lay out and check datasets")
    prep.add_argument("names", nargs="+", metavar="NAME", help=f"'all' or any of: {', '.join(DATASETS)}")
    prep.add_argument("--root", default="data", help="the data folder the configs read (default: data)")
    prep.add_argument("--check-only", action="store_true", help="do not download; check what is in place")
    args = parser.parse_args(argv)
    if args.command == "list":
        list_datasets(args.root)
        return 0
    names = list(DATASETS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)} or 'all'")
    ready = [prepare(n, args.root, fetch_files=not args.check_only) for n in names]
    return 0 if all(ready) else 1


if __name__ == "__main__":
    sys.exit(main())
