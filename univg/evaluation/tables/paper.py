"""The UniVG-R1 paper's published numbers (arXiv 2505.14231, Tables 1-6) and other models' rows.

``paper_results.json`` beside this module holds every per-column value of the paper's Tables 1-6
(Acc@0.5 in %, as printed); :func:`load_reference` reads more published rows from a user's JSON.
:mod:`univg.evaluation.tables.build` puts them beside our runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from univg.data.readers.mig_bench import MIG_COLUMNS

REFCOCO_SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco/val", "RefCOCO val"),
    ("refcoco/testA", "RefCOCO testA"),
    ("refcoco/testB", "RefCOCO testB"),
    ("refcoco+/val", "RefCOCO+ val"),
    ("refcoco+/testA", "RefCOCO+ testA"),
    ("refcoco+/testB", "RefCOCO+ testB"),
    ("refcocog/val", "RefCOCOg val"),
    ("refcocog/test", "RefCOCOg test"),
)
ZEROSHOT: tuple[tuple[str, str], ...] = (
    ("lisa/val", "LISA-Grounding val"),
    ("lisa/test", "LISA-Grounding test"),
    ("llmseg", "LLMSeg-Grounding"),
    ("reasonvos", "ReasonVOS"),
    ("revos", "ReVOS"),
)
#: Where the paper's numbers live: every per-column value of the UniVG-R1 paper's Tables 1-6
#: (arXiv 2505.14231), Acc@0.5 in %, as printed, keyed by layout and by this module's column keys.
PAPER_TABLES_FILE = Path(__file__).with_name("paper_results.json")

#: Layout -> the paper's table number and what it shows.
PAPER_TABLE_TITLES: dict[str, str] = {
    "mig": "Table 1: MIG-Bench, Acc@0.5 (%)",
    "zeroshot": "Table 2: zero-shot reasoning grounding, Acc@0.5 (%)",
    "refcoco": "Table 3: RefCOCO/+/g, Acc@0.5 (%)",
    "table4": "Table 4: training stages and data (MIG-Bench, Acc@0.5 %)",
    "table5": "Table 5: difficulty weighting phi (MIG-Bench, Acc@0.5 %)",
    "table6": "Table 6: 2B model (MIG-Bench, Acc@0.5 %)",
}

#: The paper's table number -> its layout (``python -m univg.reports paper --table N``).
PAPER_TABLE_LAYOUTS: dict[int, str] = {
    int(title.split(":")[0].removeprefix("Table ")): layout for layout, title in PAPER_TABLE_TITLES.items()
}


def layout_of_table(number: int) -> str:
    """The layout of the paper's Table ``number`` (1-6); a ``ValueError`` names the tables there are.

    >>> [layout_of_table(n) for n in range(1, 7)]
    ['mig', 'zeroshot', 'refcoco', 'table4', 'table5', 'table6']
    """
    if number not in PAPER_TABLE_LAYOUTS:
        raise ValueError(
            f"the paper has Tables {min(PAPER_TABLE_LAYOUTS)}-{max(PAPER_TABLE_LAYOUTS)}, not {number}"
        )
    return PAPER_TABLE_LAYOUTS[number]


def load_paper_tables(path: str | os.PathLike = PAPER_TABLES_FILE) -> dict[str, dict[str, dict[str, float]]]:
    """The paper's rows by layout (``mig``, ``zeroshot``, ``refcoco``, ``table4``-``table6``).

    >>> tables = load_paper_tables()
    >>> tables["mig"]["UniVG-R1"]["common_object"], tables["refcoco"]["Shikra"]["avg"], len(tables["mig"])
    (93.13, 82.97, 9)
    """
    data = json.loads(Path(path).read_text())
    return {layout: rows for layout, rows in data.items() if not layout.startswith("_")}


_PAPER = load_paper_tables()

# The paper's rows of the tables that compare models (Tables 1-3), named "<model> (paper)" so a run
# called "UniVG-R1" stays apart from the published row; in the paper's order.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    layout: {f"{model} (paper)": values for model, values in _PAPER[layout].items()}
    for layout in ("mig", "refcoco", "zeroshot")
}

REFERENCE_LAYOUTS = tuple(PAPER_RESULTS)  # the layouts with rows of other models: mig, refcoco, zeroshot


def reference_columns(layout: str) -> tuple[str, ...]:
    """The keys a reference row of ``layout`` may fill: the table's column keys and ``avg``.

    >>> reference_columns("zeroshot")
    ('lisa/val', 'lisa/test', 'llmseg', 'reasonvos', 'revos', 'avg')
    """
    cols = {"mig": MIG_COLUMNS, "refcoco": REFCOCO_SPLITS, "zeroshot": ZEROSHOT}[layout]
    return tuple(k for k, _ in cols) + ("avg",)


def load_reference(path: str | os.PathLike) -> dict[str, dict[str, dict[str, float]]]:
    """Reference rows (other models' published numbers, Acc@0.5 in %) from a JSON file.

    The file maps a layout (``mig``, ``refcoco``, ``zeroshot``) to rows: ``{"mig": {"UniVG-R1
    (paper)": {"common": 80.0, ..., "avg": 72.64}}}``. Keys are the table's column keys (see
    :func:`reference_columns`); a column left out shows "–". Everything is checked, and an error
    names the file, the layout, the row and the key.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping layouts to rows, got {type(data).__name__}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for layout, rows in data.items():
        if layout not in REFERENCE_LAYOUTS:
            raise ValueError(f"{path}: unknown layout {layout!r}; choose from {REFERENCE_LAYOUTS}")
        if not isinstance(rows, dict):
            raise ValueError(f"{path}: {layout}: expected an object of rows, got {type(rows).__name__}")
        allowed = reference_columns(layout)
        for name, values in rows.items():
            if not isinstance(values, dict):
                raise ValueError(f"{path}: {layout} / {name!r}: expected an object of column values")
            for key, value in values.items():
                if key not in allowed:
                    raise ValueError(
                        f"{path}: {layout} / {name!r}: unknown column {key!r}; use one of {allowed}"
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise ValueError(
                        f"{path}: {layout} / {name!r} / {key!r}: {value!r} is not a percentage in [0, 100]"
                    )
            out.setdefault(layout, {})[str(name)] = {k: float(v) for k, v in values.items()}
    return out


def reference_rows(
    layout: str, reference: dict[str, dict[str, dict[str, float]]] | None = None
) -> dict[str, dict[str, float]]:
    """The paper rows of ``layout``: the built-in :data:`PAPER_RESULTS`, a row of ``reference``
    with the same name filling (and overriding) its cells, new names appended.

    >>> row = reference_rows("mig", {"mig": {"Qwen2-VL-7B (paper)": {"region": 50.0}}})["Qwen2-VL-7B (paper)"]
    >>> row["region"], row["diff"], row["avg"]
    (50.0, 29.92, 30.2)
    """
    rows = {name: dict(values) for name, values in PAPER_RESULTS.get(layout, {}).items()}
    for name, values in (reference or {}).get(layout, {}).items():
        rows.setdefault(name, {}).update(values)
    return rows


#: The paper's ablation rows by run id (docs/design.md section 5 maps ids to stages): every column.
PAPER_ABLATION_ROWS: dict[str, dict[str, dict[str, float]]] = {
    layout: _PAPER[layout] for layout in ("table4", "table5", "table6")
}
#: The paper's printed MIG-Bench AVG of each ablation row, by run id ("none" in Table 5 is plain
#: GRPO, the same run as Table 4's s2grpo).
PAPER_ABLATIONS: dict[str, dict[str, float]] = {
    layout: {row: values["avg"] for row, values in rows.items()}
    for layout, rows in PAPER_ABLATION_ROWS.items()
}
_ALIASES = {
    "table5": {"grpo": "none", "s2grpo": "none", "s2diff": "exp", "phi_exp": "exp"},
    "table6": {"cotsft": "cot", "s2cot": "cot", "s2grpo": "grpo", "s2diff": "diff", "grpo_diff": "diff"},
}


# ----------------------------------------------------------------------------- notes and ids
def paper_notes(layout: str, paper_rows: dict[str, dict[str, float]]) -> list[str]:
    """Footnotes of the paper rows: their source, and each row whose printed AVG is not the mean
    of its printed columns (by more than rounding to two decimals explains).

    >>> row = {"lisa/val": 60.0, "lisa/test": 50.0, "llmseg": 50.0, "reasonvos": 50.0, "revos": 40.0}
    >>> paper_notes("zeroshot", {"x (paper)": row | {"avg": 50.1}, "y (paper)": row | {"avg": 50.01}})
    ['Paper rows: UniVG-R1 paper (arXiv 2505.14231), Table 2, as printed.', 'x (paper): printed AVG 50.10; its columns average to 50.00 (AVG shows the printed value).']
    """
    source = PAPER_TABLE_TITLES[layout].split(":")[0]
    on = " (revised MIG-Bench)" if layout == "mig" else ""
    notes = [f"Paper rows: UniVG-R1 paper (arXiv 2505.14231), {source}{on}, as printed."]
    n_cols = len(reference_columns(layout if layout in REFERENCE_LAYOUTS else "mig")) - 1
    for name, values in paper_rows.items():
        cells = [v for k, v in values.items() if k != "avg"]
        if "avg" not in values or len(cells) < n_cols:
            continue
        col_mean = sum(cells) / len(cells)
        if round(abs(values["avg"] - col_mean), 4) > 0.015:
            notes.append(
                f"{name}: printed AVG {values['avg']:.2f}; its columns average to {col_mean:.2f} "
                "(AVG shows the printed value)."
            )
    return notes


def paper_ablation(layout: str, run: str, phi: str | None = None) -> float | None:
    """The paper's AVG for the ablation row a run stands for.

    Table 5's rows are its phi functions: ``phi`` (read from the run's saved config, see
    :mod:`univg.model.run_config`) picks the row whatever the run is called; a run whose config says it
    has no phi (an SFT run) has no Table 5 row. Tables 4 and 6 (and results saved without a config)
    go by the row id, an alias or a token of the run name.

    >>> paper_ablation("table4", "runs/table4/s2diff"), paper_ablation("table6", "2b_grpo"), paper_ablation("table5", "x")
    (72.64, 56.57, None)
    >>> paper_ablation("table5", "my_run", phi="square"), paper_ablation("table5", "phi_exp", phi="n/a")
    (71.56, None)
    """
    table = PAPER_ABLATIONS.get(layout, {})
    if layout == "table5" and phi is not None:
        return table.get(phi)
    aliases = _ALIASES.get(layout, {})
    name = run.lower().rstrip("/").split("/")[-1]
    for candidate in [name, *re.split(r"[-_.\s]+", name)]:
        candidate = aliases.get(candidate, candidate)
        if candidate in table:
            return table[candidate]
    return None
