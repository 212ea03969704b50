"""The command line in-process, as the tests call it: the resolved config of ``--print_config``, a
failure as the user sees it (exit status 2 and one ``univg: error:`` line, the last on stderr, with
no traceback), and the debug configs those tests start from."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from univg.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs/debug.yaml")
GRPO = str(ROOT / "configs/grpo_debug.yaml")


def one_error_line(capsys, run: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one ``univg: error:`` line, last on stderr; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(run)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("univg: error:")]
    assert len(lines) == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == lines[0]
    assert "Traceback" not in err
    return lines[0]


def print_config(args: list[str]) -> dict:
    """Parse ``python -m univg ARGS --print_config`` in-process; the resolved config, or fail with the CLI's error."""
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "--print_config"])  # exits after printing: nothing is built or run
        except SystemExit as e:
            code = e.code
    assert code in (0, None), f"univg {' '.join(args)} rejected:\n{err.getvalue()[-3000:]}"
    return yaml.safe_load(out.getvalue())
