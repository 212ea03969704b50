"""Shared fixtures: the exact tokenizer/processor (built once per session), a tiny model, a command-line
test's own folder, and the debug fits several test files check (each run once per session)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


#: Session fixtures that run one end-to-end job for tests in several files (below).
SHARED_RUNS = ("first_debug_fit", "uninterrupted_debug_fit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) a worker takes whole
    groups: a file's tests (its module fixtures are computed once) or, for a test that uses one of
    :data:`SHARED_RUNS`, every test of that job in any file, so each job still runs once."""
    for item in items:
        group = next((name for name in SHARED_RUNS if name in getattr(item, "fixturenames", ())), None)
        item.add_marker(pytest.mark.xdist_group(group or item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def processor():
    from univg.model.tokenizer import load_processor

    return load_processor()


@pytest.fixture(scope="session")
def tokenizer(processor):
    return processor.tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: decoding is many small ops, and on a shared 2-core
    machine one thread is faster and steadier (``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts(processor):
    """Two prompts of different lengths (left padded): 4 images and 1 image of 56 x 56 (4 tokens each)."""
    from univg.data import GroundingCollator
    from univg.data.synthetic import generate_samples
    from univg.rl.rollout import model_inputs

    samples = generate_samples(1, tasks=["common_object"], image_size=56, seed=0, num_images=4)
    samples += generate_samples(1, tasks=["single"], image_size=56, seed=1)
    batch = GroundingCollator(processor, mode="generate")(samples)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] > lengths[1]  # the second row is left padded
    return model_inputs(batch)


@pytest.fixture()
def tiny_model():
    from univg.model.backbone import BackboneSpec

    torch.manual_seed(0)
    return BackboneSpec(preset="tiny").build()


@pytest.fixture()
def cli_in_tmp(monkeypatch, tmp_path):
    """A command-line test's own folder: runs/ of each fit goes under it, and no UNIVG_DEBUG
    (errors are the one line a user sees, not a traceback)."""
    monkeypatch.delenv("UNIVG_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def uninterrupted_debug_fit(tmp_path_factory):
    """The final weights of the 20-step debug fit run once, never interrupted: what an interrupted
    and resumed run of the same command must end with, bit for bit (tests/test_cli.py,
    tests/test_slurm_requeue.py)."""
    from debug_fit import uninterrupted_weights

    return uninterrupted_weights(tmp_path_factory.mktemp("uninterrupted"))


@pytest.fixture(scope="session")
def first_debug_fit(tmp_path_factory):
    """``python -W default -m univg fit --config configs/debug.yaml``, 2 steps validated at the end,
    run once from a fresh folder (runs/ under it): its finished process (stdout, stderr) and that
    folder. tests/test_cli.py checks what it writes, tests/test_console.py what it prints."""
    from debug_fit import first_fit

    folder = tmp_path_factory.mktemp("first_fit")
    return first_fit(folder), folder
