"""Hyper-parameters of every run: saved by the modules themselves (``hparams.yaml`` of a debug run),
as plain data a checkpoint can hold; and in TensorBoard's HParams view one session per grid row
(fit, its test and its validation merged) with no NaN for metrics a run does not have."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch
import yaml
from scripted_engine import Scripted
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from univg.hparams_view import read_sessions, render
from univg.model.backbone import BackboneSpec
from univg.modules import GRPOModule, SFTModule
from univg.modules.grpo.dynamic_sampling import DynamicSampling

ROOT = Path(__file__).resolve().parents[1]


def _weights_only_roundtrip(value: dict) -> dict:
    buf = io.BytesIO()
    torch.save(value, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # what Lightning's resume uses by default


def test_modules_save_their_arguments_as_plain_data(tokenizer):
    grpo = GRPOModule(
        backbone=BackboneSpec(preset="tiny", freeze_embeddings=True),
        lr=3e-5,
        group_size=4,
        phi="square",
        adam_betas=(0.9, 0.95),
        dynamic_sampling=DynamicSampling(max_tries=3),
        engine=Scripted([["a", "b"]], tokenizer),
    )
    hp = dict(grpo.hparams)
    # the subclass's own arguments and the base's (passed on through **kwargs) are both there
    assert (hp["group_size"], hp["phi"], hp["lr"]) == (4, "square", 3e-5)
    assert hp["adam_betas"] == [0.9, 0.95]
    assert hp["backbone"]["preset"] == "tiny" and hp["backbone"]["freeze_embeddings"] is True
    assert hp["dynamic_sampling"]["max_tries"] == 3
    assert "engine" not in hp  # a model-holding object: config.yaml names its class
    assert _weights_only_roundtrip({"hyper_parameters": hp})["hyper_parameters"] == hp
    assert dict(SFTModule(lr=2e-4).hparams)["lr"] == 2e-4


def _cli(*args: str) -> None:
    from univg.cli import main

    main([*args, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])


def _debug_fit(root: Path, *extra: str) -> Path:
    _cli(
        "fit",
        "--config",
        str(ROOT / "configs/debug.yaml"),
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--data.init_args.num_train=4",
        *extra,
    )
    return root


def test_a_debug_run_without_the_callback_has_its_hyperparameters(tmp_path):
    run = _debug_fit(tmp_path) / "debug" / "version_0"
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hparams["lr"] == 1e-3 and hparams["max_new_tokens"] == 24  # configs/debug.yaml
    assert hparams["backbone"]["preset"] == "tiny"
    (ckpt,) = run.glob("checkpoints/*.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # resumable as Lightning loads it
    assert saved["hyper_parameters"]["lr"] == 1e-3
    sessions = read_sessions(tmp_path)  # the HParams view lists the run
    assert sessions["debug/version_0"]["lr"] == 1e-3


def test_a_grid_row_is_one_session_carrying_its_test_numbers_and_no_nan(tmp_path):
    # as the Make grid runs a row: fit into <row>/fit, evaluate its weights into <row>/test
    hp = "--trainer.callbacks+=univg.callbacks.HParamsLogger"
    row = ["--trainer.logger.init_args.name=row"]
    _debug_fit(tmp_path, hp, *row, "--trainer.logger.init_args.version=fit")
    (ckpt,) = (tmp_path / "row" / "fit").glob("checkpoints/*.ckpt")
    for stage, split in (
        ("test", "test"),
        ("validate", "val"),
    ):  # each evaluation of the trained weights, as a user runs it
        _cli(
            stage,
            "--config",
            str(ROOT / "configs/eval/synthetic.yaml"),
            "--config",
            str(ROOT / "experiments/debug/eval.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            *row,
            f"--trainer.logger.init_args.version={stage}",
            hp,
            f"--model.init_args.init_checkpoint={ckpt}",
            f"--data.init_args.num_{split}=4",
        )
    skipped: list[str] = []
    merged: list[str] = []
    sessions = read_sessions(tmp_path, skipped, merged)
    assert list(sessions) == ["row/fit"]  # not row/test nor row/validate beside it
    assert merged == ["row/test", "row/validate"] and skipped == []  # named as merged, not as missing
    session = sessions["row/fit"]
    results = json.loads((tmp_path / "row" / "test" / "results_test.json").read_text())["metrics"]
    assert session["test/avg"] == results["avg"] and session["test/miou"] == results["miou"]
    val = json.loads((tmp_path / "row" / "validate" / "results_val.json").read_text())["metrics"]
    assert session["val/avg"] == val["avg"] and session["val/miou"] == val["miou"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in session.values())
    events = EventAccumulator(str(tmp_path / "row" / "fit"), size_guidance={"scalars": 0})
    events.Reload()
    written = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert all(not math.isnan(v) for values in written.values() for v in values)
    assert "NaN" not in render(sessions, ["2 stage", "val/avg", "test/avg"])
    assert session["2 stage"] == "stage 1 CoT-SFT" and session["model.lr"] == 1e-3
    # the evaluation's own hparams.yaml is still written (its config, the training run's as train.*)
    test_hparams = yaml.safe_load((tmp_path / "row" / "test" / "hparams.yaml").read_text())
    assert test_hparams["stage"] == "test" and test_hparams["train.model.lr"] == 1e-3
