"""MIG-Bench reader on the real annotation file: counts, target indices, flagged records."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from univg.core.boxes import Box, box_iou, normalise_coords
from univg.core.sample_types import SampleError
from univg.data import MIG_TASKS, read_mig_bench, read_samples

MIG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mig_bench" / "MIG_data.json"
if not MIG.is_file():  # the shared data folder sits beside the repository
    MIG = Path("/work/shared/data/mig_bench/MIG_data.json")


@pytest.fixture(scope="module")
def mig():
    return read_mig_bench(MIG)


def test_counts_per_task(mig):
    # Counts from the data README (checked independently of this reader).
    expected = {
        "region": 1203,
        "common_object": 816,
        "object_tracking": 550,
        "diff": 528,
        "group_grounding": 499,
        "multi_view": 288,
        "correspondence": 117,
        "reasoning": 101,
        "refer_grounding": 99,
        "view_diff": 94,
    }
    assert len(mig) == 4295
    assert dict(collections.Counter(s.task for s in mig)) == expected
    assert set(expected) == set(MIG_TASKS)
    assert collections.Counter(len(s.images) for s in mig) == {2: 1040, 3: 529, 4: 1637, 5: 534, 6: 555}


def test_target_index_per_task_and_rule(mig):
    got = collections.Counter((s.task, s.target_index, s.target_rule) for s in mig)
    # Derived from the question templates: "in the Nth image" counts per N, additional_info words.
    expected = {
        ("common_object", 0, "question:ordinal"): 201,
        ("common_object", 1, "question:ordinal"): 201,
        ("common_object", 2, "question:ordinal"): 201,
        ("common_object", 3, "question:ordinal"): 155,
        ("common_object", 4, "question:ordinal"): 58,
        ("correspondence", 1, "question:word"): 117,
        ("diff", 1, "task:diff"): 528,
        ("group_grounding", 0, "additional_info:word"): 127,
        ("group_grounding", 1, "additional_info:word"): 128,
        ("group_grounding", 2, "additional_info:word"): 127,
        ("group_grounding", 3, "additional_info:word"): 77,
        ("group_grounding", 4, "additional_info:word"): 40,
        ("multi_view", 1, "question:ordinal"): 101,
        ("multi_view", 2, "question:ordinal"): 100,
        ("multi_view", 3, "question:ordinal"): 74,
        ("multi_view", 4, "question:ordinal"): 12,
        ("multi_view", 5, "question:ordinal"): 1,
        ("object_tracking", 1, "question:ordinal"): 110,
        ("object_tracking", 2, "question:ordinal"): 110,
        ("object_tracking", 3, "question:ordinal"): 110,
        ("object_tracking", 4, "question:ordinal"): 110,
        ("object_tracking", 5, "question:ordinal"): 110,
        ("reasoning", 1, "question:word"): 101,
        ("refer_grounding", 1, "question:image-n"): 99,
        ("region", 0, "task:region"): 1203,
        ("view_diff", 1, "question:word"): 94,
    }
    assert dict(got) == expected
    assert all(0 <= s.target_index < len(s.images) for s in mig)


def test_spot_checks(mig):
    s = mig[2]  # "... locate this object in the 3th image."
    assert (s.id, s.task, s.target_index, s.target_rule) == (
        "MIG_data-2",
        "common_object",
        2,
        "question:ordinal",
    )
    assert s.box == Box(0.156, 0.294, 0.749, 0.801)
    gg = mig[1462]  # additional_info "It is in the fourth image."
    assert gg.task == "group_grounding" and gg.target_index == 3
    assert "fourth image" in gg.meta["additional_info"] and "fourth" not in gg.question
    mv = mig[1960]  # "in the first image(<box>) ... in the 2th image": the last mention wins
    assert mv.task == "multi_view" and mv.target_index == 1
    assert mv.ref_boxes == [Box(0.451, 0.265, 0.519, 0.388)]
    re_ = mig[4194]  # "people in image-1 ... Find it in Image-2. ... in the second image."
    assert re_.task == "reasoning" and re_.target_index == 1 and re_.target_rule == "question:word"
    ref = mig[3545]
    assert ref.task == "refer_grounding" and ref.target_index == 1
    region = mig[2249]  # "the 2th region picture in the source image" -> the source image
    assert region.task == "region" and region.target_index == 0
    assert mig[816].task == "correspondence" and mig[816].target_index == 1
    assert mig[933].task == "diff" and mig[933].target_index == 1
    assert mig[3644].task == "object_tracking" and mig[3644].ref_boxes == [Box(0.139, 0.305, 0.495, 0.743)]
    assert mig[0].source == str(MIG) and mig[0].index == 0
    assert mig[0].meta["paper_column"] == "Common"


def test_out_of_range_and_degenerate_reported(mig):
    report = mig.report
    assert (report.records, report.samples, report.skipped) == (4295, 4295, [])
    assert report.clamped == ["MIG_data-34", "MIG_data-703"]
    assert report.degenerate == ["MIG_data-7", "MIG_data-105", "MIG_data-126", "MIG_data-163", "MIG_data-512"]
    # Clamped into [0, 1], raw value kept.
    assert mig[34].box == Box(0.319, 0.186, 1.0, 0.535) and mig[34].meta["raw_box"] == [
        0.319,
        0.186,
        1.048,
        0.535,
    ]
    assert mig[703].box.y2 == 1.0 and mig[703].meta["clamped"]
    # The 5 flagged boxes are kept as written (keep is the readers' default) and flagged. They are
    # inverted corners, not empty boxes: each has an area once its corners are swapped.
    assert mig[105].box == Box(0.271, 0.382, 0.085, 0.225) and mig[105].meta["degenerate"]
    assert "clamped 2" in report.summary() and "degenerate kept 5" in report.summary()
    flagged = [mig[i].box for i in (7, 105, 126, 163, 512)]
    assert [(b.x2 < b.x1, b.y2 < b.y1) for b in flagged] == [
        (False, True),  # MIG_data-7: [0.027, 0.18, 0.143, 0.051]
        (True, True),
        (False, True),
        (False, True),
        (True, False),
    ]
    assert all(abs(b.x2 - b.x1) > 0.05 and abs(b.y2 - b.y1) > 0.05 for b in flagged)


def test_inverted_corners_swapped_can_be_hit():
    swapped = read_mig_bench(MIG, degenerate="swap")
    assert len(swapped) == 4295 and swapped.report.degenerate == [] and swapped.report.skipped == []
    assert swapped.report.swapped == [
        "MIG_data-7",
        "MIG_data-105",
        "MIG_data-126",
        "MIG_data-163",
        "MIG_data-512",
    ]
    # MIG_data-7 as written: [0.027, 0.18, 0.143, 0.051] -> y swapped; a prediction on that box scores IoU 1
    seven = swapped[7]
    assert seven.box == Box(0.027, 0.051, 0.143, 0.18) and seven.meta["raw_box"] == [
        0.027,
        0.18,
        0.143,
        0.051,
    ]
    # a model answer "(27, 51), (143, 180)" (0-1000 frame) hits it, and hits the box kept as written
    # too: IoU orders each box's corners, so these 5 are reachable ground truth, not unhittable
    predicted = normalise_coords((27, 51, 143, 180))
    assert box_iou(predicted, seven.box) > 0.95 and box_iou(predicted, read_mig_bench(MIG)[7].box) > 0.95


def test_degenerate_policies():
    skipped = read_mig_bench(MIG, degenerate="skip")
    assert len(skipped) == 4290
    assert [i for i, _, _ in skipped.report.skipped] == [7, 105, 126, 163, 512]
    with pytest.raises(SampleError, match=r"MIG_data.json:record 7 \(id MIG_data-7\): field 'answer'"):
        read_mig_bench(MIG, degenerate="error")


def test_image_root_and_dispatcher(tmp_path):
    samples = read_samples(MIG, "mig_bench", image_root="/data/mig")
    assert samples[0].images[0] == "/data/mig/MIG-Bench/images/common/Wild_Bird/objects365_v2_01803705.jpg"


def test_malformed_mig_records(tmp_path):
    good = json.loads(MIG.read_text())[:3]
    bad_target = dict(
        good[1], question="These images share one object in common. Locate it in the 9th image."
    )
    no_mention = dict(good[2], question="Locate it.")
    path = tmp_path / "mig.json"
    path.write_text(json.dumps([good[0], bad_target, no_mention]))
    with pytest.raises(SampleError) as err:
        read_mig_bench(path)
    assert (
        f"{path}:record 1 (id mig-1): field 'question': expected a target image within the record's 4 images"
        in str(err.value)
    )
    out = read_mig_bench(path, skip_invalid=True)
    assert len(out) == 1 and [i for i, _, _ in out.report.skipped] == [1, 2]
    assert "field 'question'" in out.report.skipped[1][2]
