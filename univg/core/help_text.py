"""Every entry point's ``--help`` ends with commands one can copy: :func:`with_examples`.

>>> import argparse
>>> p = argparse.ArgumentParser(prog="demo", **with_examples("demo --fast", "demo --out runs/x"))
>>> print(p.format_help().split("examples:")[1])
<BLANKLINE>
  demo --fast
  demo --out runs/x
<BLANKLINE>
"""

from __future__ import annotations

import argparse
from typing import Any


def examples_epilog(*commands: str) -> str:
    """The text that ends a ``--help``: ``examples:`` and one indented command per line."""
    if not commands:
        raise ValueError("at least one example command is needed")
    return "examples:\n" + "\n".join(f"  {c}" for c in commands)


def with_examples(*commands: str) -> dict[str, Any]:
    """Keyword arguments of ``argparse.ArgumentParser`` (or ``add_parser``) that end its ``--help``
    with ``commands``, line breaks kept."""
    return {"epilog": examples_epilog(*commands), "formatter_class": argparse.RawDescriptionHelpFormatter}
