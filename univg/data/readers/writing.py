"""Writing samples back in the readers' formats: image paths (in-memory images saved as PNG) and
JSON/JSONL record files written atomically."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from univg.core.sample_types import GroundingSample, sample_error


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def image_paths(sample: GroundingSample, image_dir: str | os.PathLike | None) -> list[str]:
    """The sample's image paths; in-memory images are saved as PNG under ``image_dir`` first."""
    paths = []
    for i, img in enumerate(sample.images):
        if isinstance(img, str):
            paths.append(img)
            continue
        if image_dir is None:
            raise sample_error(
                sample.where(), f"images[{i}]", "a path (pass image_dir to save in-memory images)"
            )
        out = Path(image_dir) / f"{_safe(sample.id)}_{i}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out)
        paths.append(str(out))
    return paths


def write_records(records: Sequence[Any], path: str | os.PathLike) -> int:
    """Write ``records`` as a JSON list (JSONL if ``path`` ends in ``.jsonl``); returns the count.

    Written to a temporary file first, so a half-written file never replaces a good one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            json.dump(list(records), f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
    return len(records)
