"""``python -m univg fit --config configs/grpo_diff.yaml`` (LightningCLI: fit/validate/test/predict),
``python -m univg export CKPT --out DIR`` and ``python -m univg data list|prepare ...``;
``python -m univg --help`` lists every command of the suite."""

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


#: Every command of the suite, as ``python -m univg --help`` lists them before LightningCLI's help.
COMMANDS = """\
univg: every command (each takes --help)

  python -m univg fit|validate|test|predict --config FILE.yaml
                                       train and evaluate (LightningCLI; its options follow below)
  python -m univg export CKPT --out DIR
                                       a run as a Hugging Face model folder (or Hub repository)
  python -m univg data list|prepare NAME
                                       the paper's datasets: what is where, and getting them ready
  python -m univg.predict --images ... --instruction ...
                                       ground one instruction in your own images
  python -m univg.reports merge|show|paper
                                       tables in the paper's layouts, the paper's numbers beside
  python -m univg.cot build|import-review
                                       cold-start CoT data: a teacher writes chains, a judge keeps one
  python -m univg.demo                 the whole method in miniature on a CPU (make demo)
  python -m univg.demo.seeds --seeds 0,1,2
                                       the demo once per seed, and the table over seeds
  python -m univg.rehearsal            the paper-scale configs on a tiny model, invariants checked
  python -m univg.hparams_view RUNS    TensorBoard's HParams view as a table
  python -m univg.sharded_checkpoint consolidate|weights
                                       an FSDP2 sharded checkpoint as one file
"""


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m univg`` and the ``univg`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(COMMANDS)
    if args and args[0] in SUBCOMMANDS:
        raise SystemExit(SUBCOMMANDS[args[0]](args[1:]))
    from univg.cli import main as cli_main

    # None lets LightningCLI read sys.argv itself (given both, it warns that they might differ)
    cli_main(None if argv is None else args)


if __name__ == "__main__":
    main()
