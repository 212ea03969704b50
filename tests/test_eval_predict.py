"""``python -m univg.predict`` on user images: reasoning and pixel box printed, picture saved."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from univg.modules.base import GroundingModule
from univg.predict import main, target_index_for, user_sample
from univg.visualize import PRED_COLOR


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
