"""The benchmark a data module evaluates, named as in ``univg.evaluation.tables.BENCHMARKS``."""

from __future__ import annotations

import os
import re
from typing import Any

_REFCOCO_RE = re.compile(r"(refcoco(?:\+|p|plus|g)?)[_\-/]?(val|testa|testb|test)", re.IGNORECASE)


def infer_benchmark(datamodule: Any, stage: str) -> str:
    """The benchmark key of a data module (``reports.BENCHMARKS``), from its class and file name.

    >>> class RefCOCODataModule:
    ...     files = {"test": "data/rec/refcocop_testA.json"}
    >>> infer_benchmark(RefCOCODataModule(), "test")
    'refcoco+/testA'
    """
    if datamodule is None:
        return "unknown"
    cls = type(datamodule).__name__
    files = getattr(datamodule, "files", {}) or {}
    name = os.path.basename(str(files.get("val" if stage == "val" else "test") or "")).lower()
    if cls == "MIGBenchDataModule":
        return "mig_bench_revised" if "revised" in name else "mig_bench"
    if cls == "RefCOCODataModule":
        m = _REFCOCO_RE.search(name)
        if m:
            ds = m.group(1).lower().replace("plus", "+").replace("refcocop", "refcoco+")
            split = {"testa": "testA", "testb": "testB"}.get(m.group(2).lower(), m.group(2).lower())
            return f"{ds}/{split}"
        return "refcoco"
    if cls == "LISADataModule":
        for split in ("val", "test"):
            if split in name:
                return f"lisa/{split}"
        return "lisa"
    if cls == "LLMSegDataModule":
        return "llmseg"
    if cls == "VOSDataModule":
        if "revos" in name:
            return "revos"
        return "reasonvos" if "reason" in name else "vos"
    if cls == "SyntheticDataModule":
        return "synthetic"
    return cls.removesuffix("DataModule").lower() or "unknown"
