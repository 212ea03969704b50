"""Dataset readers: each maps one file format to a list of :class:`GroundingSample`.

``read_X(path, image_root=None, skip_invalid=False, ...)`` returns a :class:`SampleList` (a list
with a ``report``: what was read, skipped, clamped, flagged). :func:`read_samples` dispatches on
the format name, which is what YAML configs use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from univg.data.readers.common import CLAMP_TOLERANCE, load_records
from univg.data.readers.cot_sft import cot_record, read_cot_sft, write_cot_sft
from univg.data.readers.lisa import read_lisa, read_llmseg
from univg.data.readers.mgrounding import read_mgrounding
from univg.data.readers.mig_bench import MIG_TASKS, PAPER_COLUMNS, mig_target_index, read_mig_bench
from univg.data.readers.questions import image_mentions, target_from_question
from univg.data.readers.refcoco import read_refcoco
from univg.data.readers.stage2_rl import read_stage2_rl, stage2_record, write_stage2_rl
from univg.data.readers.vos import read_vos
from univg.data.schema import SampleList

#: Format name -> reader.
READERS: dict[str, Callable[..., SampleList]] = {
    "mig_bench": read_mig_bench,
    "mgrounding": read_mgrounding,
    "cot_sft": read_cot_sft,
    "stage2_rl": read_stage2_rl,
    "refcoco": read_refcoco,
    "lisa": read_lisa,
    "llmseg": read_llmseg,
    "vos": read_vos,
}


def read_samples(path: str | os.PathLike, format: str, **kw: Any) -> SampleList:
    """Read ``path`` with the reader registered as ``format`` (keyword arguments pass through)."""
    try:
        reader = READERS[format]
    except KeyError:
        raise ValueError(f"unknown data format {format!r}; choose one of {sorted(READERS)}") from None
    return reader(path, **kw)


__all__ = [
    "CLAMP_TOLERANCE",
    "MIG_TASKS",
    "PAPER_COLUMNS",
    "READERS",
    "cot_record",
    "image_mentions",
    "load_records",
    "mig_target_index",
    "read_cot_sft",
    "read_lisa",
    "read_llmseg",
    "read_mgrounding",
    "read_mig_bench",
    "read_refcoco",
    "read_samples",
    "read_stage2_rl",
    "read_vos",
    "stage2_record",
    "target_from_question",
    "write_cot_sft",
    "write_stage2_rl",
]
