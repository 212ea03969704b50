"""TensorBoard's HParams view of a runs folder, as a table in the terminal.

Reads what the HParams dashboard reads, with TensorBoard's own event reader: each run folder's
session (the hyper-parameters :class:`univg.callbacks.HParamsLogger` registered) and the last
value of each registered metric in that folder. A grid row's training run shows its test numbers
because the evaluation writes them there too::

    python -m univg.hparams_view runs/mini/seed0                  # phi, stage, data size, preset, test AVG
    python -m univg.hparams_view runs/mini/seed0 --columns "1 phi" test/avg test/acc@0.5/single
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from univg.core.help_text import with_examples

#: The columns shown by default: the row keys, then the test metrics.
DEFAULT_COLUMNS = ("1 phi", "2 stage", "3 data size", "4 preset", "test/avg", "test/acc@0.5", "test/miou")


def read_sessions(
    root: str | Path, skipped: list[str] | None = None, merged: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every HParams session under ``root``: run folder (relative) -> its hyper-parameters and the
    last value of each of its registered metrics (None where the run has none: a run without
    validation has no ``val/*``; a NaN placeholder of older runs counts as none). Folders of
    events without a session are appended to ``merged`` when they are evaluations of a trained run
    (their numbers are in that run's session), to ``skipped`` otherwise."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    root = Path(root)
    sessions: dict[str, dict[str, Any]] = {}
    for folder in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        try:
            content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        except KeyError:  # no HParams data at all in this folder
            content = {}
        if metadata.SESSION_START_INFO_TAG not in content:
            into = merged if _evaluates_a_trained_run(folder) else skipped
            if into is not None:
                into.append(str(folder.relative_to(root)))
            continue
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        row: dict[str, Any] = {}
        for name, value in start.hparams.items():
            kind = value.WhichOneof("kind")
            row[name] = getattr(value, kind) if kind else None
        experiment = content.get(metadata.EXPERIMENT_TAG)
        tags = acc.Tags()["scalars"]
        if experiment is not None:
            registered = [m.name.tag for m in metadata.parse_experiment_plugin_data(experiment).metric_infos]
        else:
            registered = list(tags)
        for tag in registered:
            value = acc.Scalars(tag)[-1].value if tag in tags else None
            row[tag] = None if value is None or math.isnan(value) else value
        sessions[str(folder.relative_to(root))] = row
    return sessions


def _evaluates_a_trained_run(folder: Path) -> bool:
    """Whether ``folder`` is an evaluation whose metrics went into its training run's session
    (:class:`univg.callbacks.HParamsLogger` writes the training run's config as ``train.*``)."""
    path = folder / "hparams.yaml"
    if not path.is_file():
        return False
    params = yaml.safe_load(path.read_text()) or {}
    return isinstance(params, dict) and any(str(k).startswith("train.") for k in params)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    return "–" if value is None else str(value)


def render(sessions: dict[str, dict[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A Markdown table: one line per session, the given columns (metrics as fractions)."""
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in sessions.items():
        lines.append("| " + " | ".join([name, *(_cell(row.get(c)) for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m univg.hparams_view",
        description=__doc__.split("\n\n")[0],
        **with_examples(
            "python -m univg.hparams_view runs/mini/seed0",
            "python -m univg.hparams_view runs --columns '1 phi' test/avg test/miou",
        ),
    )
    p.add_argument("root", help="a runs folder (tensorboard --logdir of it shows the same sessions)")
    p.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS))
    a = p.parse_args(argv)
    if not Path(a.root).is_dir():
        print(f"univg hparams_view: error: {a.root} is not a folder", file=sys.stderr)
        return 2
    skipped: list[str] = []
    merged: list[str] = []
    sessions = read_sessions(a.root, skipped, merged)
    if merged:
        print(
            f"univg hparams_view: {len(merged)} evaluation(s) shown in their training run's row: "
            f"{', '.join(merged)}",
            file=sys.stderr,
        )
    if skipped:
        print(
            f"univg hparams_view: {len(skipped)} run folder(s) without HParams skipped "
            f"(runs log them with univg.callbacks.HParamsLogger): {', '.join(skipped)}",
            file=sys.stderr,
        )
    if not sessions:
        print(f"univg hparams_view: error: no HParams session under {a.root}", file=sys.stderr)
        return 1
    print(render(sessions, a.columns), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
