"""Every evaluation config parses and builds its module and data module with the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from univg.cli import main
from univg.modules.base import GroundingModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"

# benchmark config -> (data module class, prompt template, max_pixels, benchmark key or None = inferred)
EXPECTED = {
    "mig_bench": ("MIGBenchDataModule", "reasoning", 401408, "mig_bench"),
    "mig_bench_revised": ("MIGBenchDataModule", "reasoning", 401408, "mig_bench_revised"),
    "refcoco": ("RefCOCODataModule", "refcoco_single", 401408, None),
    "lisa": ("LISADataModule", "lisa", 640000, None),
    "llmseg": ("LLMSegDataModule", "llmseg", 640000, "llmseg"),
    "reasonvos": ("VOSDataModule", "vos", 640000, "reasonvos"),
    "revos": ("VOSDataModule", "vos", 640000, "revos"),
    "synthetic": ("SyntheticDataModule", "reasoning", 401408, "synthetic"),
}


def test_every_eval_config_is_covered():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED) | {"predict"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_eval_config_builds_with_paper_settings(name):
    cli = main(["--config", str(CONFIGS / f"{name}.yaml")], run=False)
    cls, template, max_pixels, benchmark = EXPECTED[name]
    assert type(cli.datamodule).__name__ == cls
    assert cli.datamodule.prompt_template == template and cli.datamodule.max_pixels == max_pixels
    assert isinstance(cli.model, GroundingModule) and cli.model.benchmark == benchmark
    assert cli.model.strict_parse


def test_checkpoint_is_overridable_from_the_command_line():
    cli = main(
        [
            "--config",
            str(CONFIGS / "mig_bench.yaml"),
            "--model.init_args.backbone.checkpoint",
            "/models/UniVG-R1",
            "--data.init_args.test_file",
            "x/revised_MIG_bench.json",
        ],
        run=False,
    )
    assert cli.model.backbone.checkpoint == "/models/UniVG-R1"
    assert cli.datamodule.files["test"] == "x/revised_MIG_bench.json"


def test_lightning_cli_predict_on_user_images(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (100, 50), (0, 0, 0)).save(tmp_path / "a.png")
    monkeypatch.setattr(
        GroundingModule,
        "generate_completions",
        lambda self, batch: (["<think>left</think><answer>(0, 0), (500, 1000)</answer>"], [False]),
    )
    tiny = tmp_path / "tiny.yaml"  # a second config on top, as a user would point at their own model
    tiny.write_text("model:\n  init_args:\n    backbone: {preset: tiny, checkpoint: null, dtype: float32}\n")
    main(
        [
            "predict",
            "--config",
            str(CONFIGS / "predict.yaml"),
            "--config",
            str(tiny),
            "--data.init_args.images",
            f"[{tmp_path / 'a.png'}]",
            "--data.init_args.instruction",
            "Where is the left half?",
        ]
    )
    out = capsys.readouterr().out
    assert "box (pixels of image 0, 100 x 50): [0, 0, 50, 50]" in out
    assert list((tmp_path / "runs" / "predict").rglob("pictures_predict/user-0.png"))
