"""``python -m univg.predict`` on user images: reasoning and pixel box printed, picture saved."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from univg.evaluation.visualize import PRED_COLOR
from univg.modules.base import GroundingModule
from univg.predict import target_index_for, user_sample
from univg.predict.__main__ import main


def test_prints_reasoning_and_pixel_box_of_the_target_image_and_saves_the_picture(
    tmp_path, monkeypatch, capsys
):
    Image.new("RGB", (120, 80), (50, 50, 50)).save(tmp_path / "a.png")
    Image.new("RGB", (200, 100), (90, 90, 90)).save(tmp_path / "b.png")
    answer = "<think>the grey box is on the right</think><answer>(250, 500), (750, 990)</answer>"
    monkeypatch.setattr(GroundingModule, "generate_completions", lambda self, batch: ([answer], [False]))
    rows = main(
        [
            "--images", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
            "--instruction", "Find the object of the first image in the second image.",
            "--preset", "tiny",
            "--random-weights",
            "--max-new-tokens", "4",
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    # (250, 500), (750, 990) in the 0-1000 frame of the 200 x 100 second image
    assert "reasoning: the grey box is on the right" in out
    assert "answer (model frame): (250, 500), (750, 990)" in out
    assert "box (pixels of image 1, 200 x 100): [50, 50, 150, 99]" in out
    assert rows[0]["pred_box_px"] == [50, 50, 150, 99] and rows[0]["target_index"] == 1
    assert rows[0]["gt"] is None and rows[0]["iou"] is None
    picture = tmp_path / "out" / "pictures_predict" / "user-0.png"
    assert picture.exists() and f"picture: {picture}" in out
    pic = np.asarray(Image.open(picture).convert("RGB"))  # enlarged x2 to 400 x 200 (+ text panel)
    assert tuple(pic[150, 100]) == PRED_COLOR  # left edge of the box, x = 0.25 * 400
    assert tuple(pic[150, 200]) == (90, 90, 90)  # inside the box


def test_target_image_choice_and_errors(tmp_path):
    assert target_index_for("in image-1", 2) == 0 and target_index_for("where is it", 1) == 0
    with pytest.raises(ValueError, match="out of range"):
        target_index_for("x", 2, 5)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        user_sample([str(tmp_path / "nope.png")], "where?")


def _run_folder(tmp_path, backbone: dict) -> tuple:
    """A univg run folder as LightningCLI leaves it: config.yaml and checkpoints/last.ckpt (the
    weights of a model of ``backbone``, with a known value planted in one tensor)."""
    import torch
    import yaml

    from univg.model.backbone import BackboneSpec

    run = tmp_path / "run" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    config = {"model": {"class_path": "univg.modules.SFTModule", "init_args": {"backbone": backbone}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    model = BackboneSpec(**backbone).build()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["model.lm_head.weight"] = torch.full_like(state["model.lm_head.weight"], 0.125)
    torch.save({"state_dict": state, "global_step": 1}, run / "checkpoints" / "last.ckpt")
    return run, run / "checkpoints" / "last.ckpt"


def test_a_run_checkpoint_is_built_from_its_saved_config(tmp_path, monkeypatch, capsys):
    """--init-checkpoint builds the backbone the run saved in its config, not the default 7B preset
    (which would be killed for memory, or fail with size mismatches for the demo's tiny model)."""
    from univg.predict import predict_backbone

    run, ckpt = _run_folder(tmp_path, {"preset": "tiny", "overrides": {"hidden_size": 32}})
    spec = predict_backbone(str(ckpt), None, None, None, "float32")
    assert spec.preset == "tiny" and spec.overrides == {"hidden_size": 32}
    Image.new("RGB", (56, 56), (50, 50, 50)).save(tmp_path / "a.png")
    seen = {}

    def fake_generate(self, batch):
        seen["head"] = float(self.model.lm_head.weight.flatten()[0])
        return ["<think>t</think><answer>(0, 0), (500, 500)</answer>"], [False]

    monkeypatch.setattr(GroundingModule, "generate_completions", fake_generate)
    args = ["--images", str(tmp_path / "a.png"), "--instruction", "where?", "--out", str(tmp_path / "o")]
    rows = main([*args, "--init-checkpoint", str(ckpt)])
    assert rows[0]["pred_box_px"] == [0, 0, 28, 28] and seen["head"] == 0.125  # the run's weights
    # moved checkpoint: --config names the run's config; no config at all: one line, exit 2
    moved = tmp_path / "moved.ckpt"
    moved.write_bytes(ckpt.read_bytes())
    assert main([*args, "--init-checkpoint", str(moved), "--config", str(run / "config.yaml")])
    capsys.readouterr()
    for extra, message in (
        (["--init-checkpoint", str(moved)], "no config.yaml beside or above"),
        (["--init-checkpoint", str(ckpt), "--preset", "qwen2-vl-2b"], "the run's config"),
    ):
        with pytest.raises(SystemExit) as stop:
            main([*args, *extra])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("univg.predict: error:") and message in err[0]
