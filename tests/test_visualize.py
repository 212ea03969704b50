"""Pictures of predictions: box colours on the box edges, text panel, TensorBoard logging."""

from __future__ import annotations

import numpy as np
from PIL import Image

from univg.core.boxes import Box, get_frame
from univg.evaluation.visualize import (
    COMPAT_COLOR,
    GT_COLOR,
    PRED_COLOR,
    box_pixels,
    draw_prediction,
    log_pictures,
    save_prediction_picture,
)


def test_png_has_the_box_colours_on_the_box_edges(tmp_path):
    image = Image.new("RGB", (400, 300), (128, 128, 128))
    record = {
        "id": "s/1",
        "task": "diff",
        "gt": [100, 100, 500, 600],  # Qwen2-VL frame (0-1000)
        "pred": [550, 200, 900, 900],
        "pred_compatible": [550, 200, 900, 900],
        "iou": 0.0,
        "iou_compatible": 0.0,
        "reasoning": "the red square moved",
        "target_index": 1,
        "pred_box_px": [220, 60, 360, 270],
    }
    path = tmp_path / "pics" / "s_1.png"
    save_prediction_picture(path, image, record, get_frame("qwen2-vl"))
    assert path.exists()
    pic = np.asarray(Image.open(path).convert("RGB"))
    assert pic.shape[1] == 400 and pic.shape[0] > 300  # no enlargement at 400 px; text panel below
    gx1, gy1, gx2, gy2 = box_pixels(Box(0.1, 0.1, 0.5, 0.6), 400, 300)  # (40, 30, 200, 180)
    px1, py1, px2, py2 = box_pixels(Box(0.55, 0.2, 0.9, 0.9), 400, 300)
    mid_gy, mid_py = (gy1 + gy2) // 2, (py1 + py2) // 2
    for x, y in [(gx1, mid_gy), (gx2, mid_gy), ((gx1 + gx2) // 2, gy1), ((gx1 + gx2) // 2, gy2)]:
        assert tuple(pic[y, x]) == GT_COLOR, (x, y)
    for x, y in [(px1, mid_py), (px2, mid_py), ((px1 + px2) // 2, py1), ((px1 + px2) // 2, py2)]:
        assert tuple(pic[y, x]) == PRED_COLOR, (x, y)
    assert tuple(pic[(gy1 + gy2) // 2, (gx1 + gx2) // 2]) == (128, 128, 128)  # inside: untouched
    panel = pic[300:]
    assert (panel < 100).all(axis=2).any()  # dark text was written in the panel


def test_small_images_are_enlarged_and_compatible_only_prediction_is_orange():
    image = Image.new("RGB", (56, 56), (10, 10, 10))
    pic = draw_prediction(image, None, Box(0.25, 0.25, 0.75, 0.75), pred_color=COMPAT_COLOR)
    assert pic.size == (392, 392)  # x7: the smallest integer factor reaching 384 px
    x1, y1, _, _ = box_pixels(Box(0.25, 0.25, 0.75, 0.75), 392, 392)
    assert tuple(np.asarray(pic)[y1 + 20, x1]) == COMPAT_COLOR


class _Writer:
    def __init__(self):
        self.calls = []

    def add_image(self, tag, array, step, dataformats):
        self.calls.append((tag, array.shape, step, dataformats))


class _Logger:
    def __init__(self):
        self.experiment = _Writer()


def test_pictures_are_logged_to_tensorboard_as_hwc():
    logger = _Logger()
    pics = [Image.new("RGB", (8, 6)), Image.new("RGB", (4, 4))]
    assert log_pictures(logger, "test/pictures", pics, step=3) == 2
    assert logger.experiment.calls == [
        ("test/pictures/0", (6, 8, 3), 3, "HWC"),
        ("test/pictures/1", (4, 4, 3), 3, "HWC"),
    ]
    assert log_pictures(None, "x", pics) == 0
