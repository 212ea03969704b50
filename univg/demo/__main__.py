"""``python -m univg.demo``: the numerics are pinned before anything imports torch
(:mod:`univg.demo.numerics`), then :func:`univg.demo.run.main` runs."""

import argparse
import sys

from univg.demo.numerics import DEFAULT, NUMERICS, pin_environment


def _numerics(argv: list[str]) -> str:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--numerics", choices=NUMERICS, default=DEFAULT)
    return p.parse_known_args(argv)[0].numerics


if __name__ == "__main__":
    pin_environment(_numerics(sys.argv[1:]))  # type: ignore[arg-type]
    from univg.demo.run import main

    raise SystemExit(main())
