"""Results files of evaluation runs: found in run folders, read with errors that name the file.

Every validate/test run writes ``results_<stage>.json`` (:func:`~univg.evaluation.tables.build.write_run_results`).
A file saved by the CLI has the run's ``config.yaml`` beside it; :func:`find_results` adds the
run's row keys from it (:mod:`univg.model.run_config`), so tables never guess them from run names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from univg.model.run_config import results_configs, row_keys


def find_results(
    paths_or_dirs: Sequence[Any], stage: str | None = None, seeds: bool = False
) -> list[dict[str, Any]]:
    """Results dicts from files, directories (searched recursively for ``results_*.json``) or dicts.

    A results file saved by the CLI gets ``_row``: its row keys (phi, stage, data size, preset)
    from the saved configs (:func:`univg.model.run_config.row_keys`). The same (run, benchmark) seen
    twice is labelled ``run (dir)`` the second time, not dropped, unless ``seeds`` (then they are
    seeds of one row).
    """
    out: list[dict[str, Any]] = []
    for item in paths_or_dirs:
        if isinstance(item, dict):
            out.append(dict(item))
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(p.rglob("results_*.json"))
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"no results file or run directory at {p}")
        for f in files:
            r = read_results(f)
            r.setdefault("_path", str(f))
            config, training = results_configs(f)
            if config is not None:
                r["_row"] = row_keys(config, training)
            out.append(r)
    if stage is not None:
        out = [r for r in out if r.get("stage", "test") == stage]
    seen: set[tuple[str, str]] = set()
    for r in out:
        key = (r["run"], r["benchmark"])
        if key in seen and not seeds:
            r["run"] = f"{r['run']} ({Path(r.get('_path', '?')).parent.name})"
        seen.add((r["run"], r["benchmark"]))
    return out


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """One ``results_<stage>.json``; a torn or foreign file is a ``ValueError`` naming the file and
    the position (a run killed while writing, a file copied half-way).

    >>> import tempfile
    >>> bad = Path(tempfile.mkdtemp()) / "results_test.json"
    >>> _ = bad.write_text('{"run": "a", "benchmark": ')
    >>> read_results(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: .../results_test.json: not valid JSON at line 1, column 27 (Expecting value)
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a results object, got a JSON {type(data).__name__}")
    missing = [key for key in ("run", "benchmark") if key not in data]
    if missing:
        raise ValueError(f"{path}: not a univg results file (no {' or '.join(map(repr, missing))} field)")
    return data
