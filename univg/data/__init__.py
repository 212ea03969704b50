"""Data layer: one sample type, one reader per dataset, prompts, collation and data modules.

Readers and the schema import light; the collator and the Lightning data modules (torch,
transformers, lightning) load on first access, so ``import univg.data`` stays cheap for tools
such as the CoT builder.
"""

from __future__ import annotations

import importlib
from typing import Any

from univg.data.images import ImageNotFoundError, image_size, load_image, resolve_image_path
from univg.data.readers import (
    MIG_TASKS,
    PAPER_COLUMNS,
    READERS,
    cot_record,
    mig_target_index,
    read_cot_sft,
    read_lisa,
    read_llmseg,
    read_mgrounding,
    read_mig_bench,
    read_refcoco,
    read_samples,
    read_stage2_rl,
    read_vos,
    write_cot_sft,
    write_stage2_rl,
)
from univg.data.schema import ReadReport, SampleList, validate_sample

_LAZY = {
    "GroundingCollator": "univg.data.collate",
    "BaseDataModule": "univg.data.datamodules",
    "GroundingDataModule": "univg.data.datamodules",
    "MIGBenchDataModule": "univg.data.datasets",
    "MGroundingDataModule": "univg.data.datasets",
    "CoTSFTDataModule": "univg.data.datasets",
    "Stage2RLDataModule": "univg.data.datasets",
    "RefCOCODataModule": "univg.data.datasets",
    "LISADataModule": "univg.data.datasets",
    "LLMSegDataModule": "univg.data.datasets",
    "VOSDataModule": "univg.data.datasets",
    "SyntheticDataModule": "univg.data.datasets",
    "MixtureDataModule": "univg.data.mixture",
    "draw_mixture": "univg.data.mixture",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'univg.data' has no attribute {name!r}")


__all__ = [
    "ImageNotFoundError",
    "MIG_TASKS",
    "PAPER_COLUMNS",
    "READERS",
    "ReadReport",
    "SampleList",
    "cot_record",
    "image_size",
    "load_image",
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
    "resolve_image_path",
    "validate_sample",
    "write_cot_sft",
    "write_stage2_rl",
    *_LAZY,
]
