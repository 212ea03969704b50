"""Every command ``python -m univg --help`` lists ends its own ``--help`` with examples one can copy:
each example starts with that command, and every file of the repository it names exists."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from univg.__main__ import COMMANDS
from univg.__main__ import main as univg_main

ROOT = Path(__file__).resolve().parents[1]
#: (module, its subcommand or None) for every command the front door lists.
LISTED = sorted(
    {
        (m, sub)
        for m, subs in re.findall(r"python -m (univg[\w.]*) ([\w|-]+)?", COMMANDS)
        for sub in (subs.split("|") if m == "univg" else [None])
    }
)


def _help(module: str, sub: str | None, capsys: pytest.CaptureFixture[str], monkeypatch) -> str:
    args = [*([sub] if sub else []), "--help"]
    if module == "univg.demo":  # pins its numerics before torch loads: a process of its own
        run = [sys.executable, "-m", module, *args]
        return subprocess.run(run, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit) as stop:
        if module == "univg":
            univg_main(args)
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert stop.value.code in (0, None)
    return capsys.readouterr().out


def examples(help_text: str) -> list[str]:
    """The commands under ``examples:`` at the end of a help text.

    >>> examples("usage: x\\n\\nexamples:\\n  python -m univg.data list\\n  python -m univg.data prepare a\\n")
    ['python -m univg.data list', 'python -m univg.data prepare a']
    """
    _, sep, tail = help_text.rpartition("\nexamples:\n")
    return [line.strip() for line in tail.splitlines() if line.startswith("  ")] if sep else []


def test_the_front_door_lists_every_command() -> None:
    modules = {m for m, _ in LISTED}
    assert {
        "univg",
        "univg.predict",
        "univg.reports",
        "univg.cot",
        "univg.demo",
        "univg.rehearsal",
    } <= modules
    assert {s for m, s in LISTED if m == "univg"} >= {"fit", "validate", "test", "predict", "export", "data"}


@pytest.mark.parametrize(("module", "sub"), LISTED, ids=[f"{m} {s or ''}".strip() for m, s in LISTED])
def test_each_help_ends_with_examples_of_itself(module, sub, capsys, monkeypatch) -> None:
    found = examples(_help(module, sub, capsys, monkeypatch))
    assert found, f"python -m {module} {sub or ''} --help has no examples"
    # `python -m univg data` is `python -m univg.data` (and export likewise)
    own = (f"python -m {module} {sub} ", f"python -m {module}.{sub} ") if sub else (f"python -m {module} ",)
    for command in found:
        assert command.startswith(own), command
        for path in re.findall(r"\b(?:configs|experiments)/[\w/.-]+\.yaml\b", command):
            assert (ROOT / path).is_file(), f"{command}: {path} does not exist"


def test_the_examples_reach_the_console() -> None:
    """The real entry point, as a user types it: the examples are the last lines, one per line."""
    out = subprocess.run(
        [sys.executable, "-m", "univg", "fit", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert examples(out)[0] == "python -m univg fit --config configs/debug.yaml"
