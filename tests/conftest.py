"""Shared fixtures: the exact tokenizer/processor (built once per session) and a tiny model."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def processor():
    from univg.model.tokenizer import load_processor

    return load_processor()


@pytest.fixture(scope="session")
def tokenizer(processor):
    return processor.tokenizer


@pytest.fixture()
def tiny_model():
    from univg.model.backbone import BackboneSpec

    torch.manual_seed(0)
    return BackboneSpec(preset="tiny").build()
