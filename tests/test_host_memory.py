"""The fixed mmap threshold for large single-process models (``return_freed_memory_if_large``):
which models get it, counted by hand, and that ``configure_model`` asks for it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import univg.distributed.sharded_build as sb
from univg.model.backbone import BackboneSpec
from univg.modules import SFTModule


@pytest.fixture
def calls(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(
        sb, "return_freed_memory_to_os", lambda threshold=1 << 20: seen.append(threshold) or True
    )
    return seen


def _tied() -> nn.Module:
    """A 10 x 4 fp32 weight (160 bytes) used twice, a 4-element bf16 norm weight (8 bytes), a meta weight."""
    lin = nn.Linear(4, 10, bias=False)
    model = nn.ModuleDict({"a": lin, "b": lin, "norm": nn.LayerNorm(4, bias=False, dtype=torch.bfloat16)})
    model.meta = nn.Linear(1000, 1000, bias=False, device="meta")  # not on the host: not counted
    return model


@pytest.mark.parametrize(("limit", "expected"), [(168, True), (169, False)])
def test_host_bytes_count_each_tensor_once_and_skip_other_devices(monkeypatch, calls, limit, expected):
    monkeypatch.setattr(sb, "LARGE_HOST_MODEL_BYTES", limit)  # 160 + 8 bytes on the host
    assert sb.return_freed_memory_if_large(_tied()) is expected
    assert calls == ([1 << 20] if expected else [])


@pytest.mark.parametrize("limit", [0, None])
def test_configure_model_sets_the_threshold_only_for_large_models(monkeypatch, calls, limit):
    if limit is not None:
        monkeypatch.setattr(sb, "LARGE_HOST_MODEL_BYTES", limit)
    module = SFTModule(backbone=BackboneSpec(preset="tiny"))
    module.configure_model()
    assert module.model is not None
    assert len(calls) == (1 if limit == 0 else 0)  # the tiny preset's 40 MB stay under 1 GB
