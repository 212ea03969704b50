"""``python -m univg fit --config configs/grpo_diff.yaml`` (LightningCLI: fit/validate/test/predict),
``python -m univg export CKPT --out DIR`` and ``python -m univg data list|prepare ...``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _export(argv: Sequence[str]) -> int:
    from univg.export import main as export_main

    return export_main(argv)


def _data(argv: Sequence[str]) -> int:
    from univg.data.__main__ import main as data_main

    return data_main(argv)


#: Subcommands that are not LightningCLI's; everything else goes to the CLI unchanged.
SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"export": _export, "data": _data}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m univg`` and the ``univg`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        raise SystemExit(SUBCOMMANDS[args[0]](args[1:]))
    from univg.cli import main as cli_main

    # None lets LightningCLI read sys.argv itself (given both, it warns that they might differ)
    cli_main(None if argv is None else args)


if __name__ == "__main__":
    main()
