"""One box, two frames: Qwen2-VL's [0, 1000) and Qwen2.5-VL's pixels of the resized image.

The frame comes from the backbone preset; the collator writes targets and ground truth in it, the
batch carries each resized target size, and the rewards read both. The same prediction, expressed
in each frame, must score the same IoU.
"""

from __future__ import annotations

import pytest

from univg.core.boxes import Box, box_iou, format_answer, get_frame
from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.model.backbone import BackboneSpec
from univg.rl.rewards import iou_reward


def answer(coords) -> str:
    return f"<think>there</think><answer>{format_answer(coords)}</answer>"


def moved(box: Box) -> Box:
    """The prediction: the truth moved right by a tenth of the image (normalised)."""
    return Box(min(box.x1 + 0.1, 0.9), box.y1, min(box.x2 + 0.1, 1.0), box.y2)


@pytest.mark.parametrize("image_size", [112, 200])
def test_same_prediction_same_iou_in_both_frames(processor, image_size) -> None:
    samples = generate_samples(3, tasks=["single"], image_size=image_size, seed=4)
    exact = [box_iou(moved(s.box), s.box) for s in samples]
    ious: dict[str, list[float]] = {}
    for preset in ("tiny", "tiny-qwen2.5-vl"):
        frame = BackboneSpec(preset=preset).frame
        batch = GroundingCollator(processor, mode="generate", frame=frame.name)(samples)
        # the resized target size is the patch grid x 14, for every sample (one image each here)
        sizes = batch["frame_sizes"]
        assert sizes == [(int(g[2]) * 14, int(g[1]) * 14) for g in batch["image_grid_thw"]]
        completions = [answer(frame.to_model(moved(s.box), w, h)) for s, (w, h) in zip(samples, sizes)]
        gt = batch["boxes"].tolist()
        if frame.name == "pixels":  # ground truth in pixels of the resized image, not [0, 1000)
            assert all(x2 <= w and y2 <= h for (_, _, x2, y2), (w, h) in zip(gt, sizes))
            assert max(max(b) for b in gt) < 1000 * 0.5
        ious[frame.name] = list(iou_reward(completions, gt, frame=frame, sizes=sizes))
        # each frame rounds to its own grid: a pixel (or a thousandth) away from the exact IoU
        assert ious[frame.name] == pytest.approx(exact, abs=0.05)
    assert ious["qwen2-vl"] == pytest.approx(ious["pixels"], abs=0.05)
    assert 0.2 < min(exact) and max(exact) < 0.95  # partial overlaps, not a degenerate 0 or 1


def test_pixel_frame_needs_the_size() -> None:
    frame = get_frame("pixels")
    with pytest.raises(ValueError, match="resized image size"):
        iou_reward([answer((1, 2, 30, 40))], [(1, 2, 30, 40)], frame=frame)
