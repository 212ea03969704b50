"""Helpers for the reader tests: write records as a JSON list or JSONL, check that a reader names
the one malformed record (and skips it under ``skip_invalid``), and write a blank image."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from univg.core.sample_types import SampleError


def write(path, records, jsonl=False):
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def check_malformed(reader, path, index, field, **kw):
    """Default: an error naming file, record index and field; skip_invalid: skipped and reported."""
    with pytest.raises(SampleError) as err:
        reader(path, **kw)
    msg = str(err.value)
    assert msg.startswith(f"{path}:record {index} "), msg
    assert f"field '{field}'" in msg and "expected" in msg, msg
    out = reader(path, skip_invalid=True, **kw)
    assert len(out.report.skipped) == 1 and out.report.skipped[0][0] == index
    assert out.report.records == len(out) + 1 and out.report.samples == len(out)
    assert "skipped 1" in out.report.summary()
    return out


def make_image(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path
