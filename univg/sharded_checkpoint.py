"""Sharded (FSDP2) checkpoints as single files, from the command line (:mod:`univg.model.consolidate`).

``FSDP2Strategy(save_distributed_checkpoint=True)`` writes one shard per rank into a ``.ckpt``
folder (``*.distcp`` files and ``meta.pt``). Both commands run in one process, no process group
needed::

    python -m univg.sharded_checkpoint consolidate runs/x/checkpoints/last.ckpt weights.ckpt
    python -m univg.sharded_checkpoint weights runs/x/checkpoints/last.ckpt weights.ckpt
"""

from __future__ import annotations

import sys

from univg.core.help_text import with_examples
from univg.model.consolidate import consolidate_checkpoint, weights_file


def main(argv: list[str] | None = None) -> int:
    """``python -m univg.sharded_checkpoint consolidate SRC_DIR [DST]`` | ``weights SRC DST``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m univg.sharded_checkpoint",
        description=main.__doc__,
        **with_examples(
            "python -m univg.sharded_checkpoint consolidate runs/fsdp/version_0/checkpoints/last.ckpt weights.ckpt",
            "python -m univg.sharded_checkpoint weights runs/fsdp/version_0/checkpoints/last.ckpt weights.ckpt",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="sharded checkpoint folder -> single .ckpt file")
    c.add_argument("src")
    c.add_argument("dst", nargs="?")
    c.add_argument("--with-optimizer", action="store_true")
    w = sub.add_parser("weights", help="a run's last checkpoint as one file (consolidated or linked)")
    w.add_argument("src")
    w.add_argument("dst")
    args = parser.parse_args(argv)
    if args.command == "weights":
        print(weights_file(args.src, args.dst))
    else:
        print(consolidate_checkpoint(args.src, args.dst, args.with_optimizer))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
