"""Each reader on small files written in its documented format, incl. one malformed record (the
stage-1 CoT reader and writer: tests/test_data_readers_cot.py)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from reader_helpers import check_malformed, make_image, write

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample, SampleError
from univg.data import (
    READERS,
    ImageNotFoundError,
    load_image,
    read_lisa,
    read_llmseg,
    read_mgrounding,
    read_refcoco,
    read_samples,
    read_stage2_rl,
    read_vos,
    validate_sample,
)

# ---- MGrounding ---------------------------------------------------------------------------------


MG_GOOD = {
    "id": "mg-1",
    "images": ["a.jpg", "b.jpg", "c.jpg"],
    "type": "common_object",
    "conversations": [
        {
            "from": "human",
            "value": "<image>\n<image>\n<image>\nLocate the shared object in the second image.",
        },
        {
            "from": "gpt",
            "value": "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>",
        },
    ],
}


def test_mgrounding(tmp_path):
    ref = dict(
        MG_GOOD,
        id="mg-2",
        conversations=[
            {
                "from": "human",
                "value": "<image><image><image>The object <|box_start|>(10,20),(30,40)<|box_end|> in the first image: find it.",
            },
            {"from": "gpt", "value": "<|box_start|>(0,0),(1000,500)<|box_end|>"},
            {"from": "human", "value": "and again?"},
            {"from": "gpt", "value": "<|box_start|>(1,1),(2,2)<|box_end|>"},
        ],
    )
    two_boxes = dict(MG_GOOD, id="mg-3")
    two_boxes["conversations"] = [
        MG_GOOD["conversations"][0],
        {"from": "gpt", "value": "<|box_start|>(1,2),(3,4)<|box_end|> <|box_start|>(5,6),(7,8)<|box_end|>"},
    ]
    path = write(tmp_path / "mg.json", [MG_GOOD, ref, two_boxes])
    out = check_malformed(read_mgrounding, path, 2, "conversations[1].value")
    s, r = out
    assert s.question == "Locate the shared object in the second image."
    assert (s.task, s.target_index, s.target_rule) == ("common_object", 1, "question:word")
    assert s.box == Box(0.1, 0.2, 0.3, 0.4)
    # Only a mention of the first (reference) image: it is the last mention, so the target.
    assert r.target_index == 0 and r.ref_boxes == [Box(0.01, 0.02, 0.03, 0.04)]
    assert r.box == Box(0.0, 0.0, 1.0, 0.5)
    assert out.report.notes == {"extra_turns_ignored": 2}


def test_mgrounding_placeholder_mismatch(tmp_path):
    bad = dict(MG_GOOD, images=["a.jpg", "b.jpg"])
    path = write(tmp_path / "mg.jsonl", [MG_GOOD, bad], jsonl=True)
    check_malformed(read_mgrounding, path, 1, "conversations[0].value")


# ---- stage-2 RL ---------------------------------------------------------------------------------


def test_stage2_rl(tmp_path):
    recs = [
        {
            "question": "<image><image>Which object in the second image is the same?",
            "answer": [10, 20, 300, 400],
            "images": ["m/1.jpg", "m/2.jpg"],
        },
        {
            "question": "<image>the man on the left",
            "answer": [0, 0, 500, 500],
            "images": ["dataset/coco/train2014/COCO_1.jpg"],
        },
        {"question": "<image>broken", "answer": [1, 2, 3], "images": ["z.jpg"]},
    ]
    path = write(tmp_path / "s2.json", recs)
    a, b = check_malformed(read_stage2_rl, path, 2, "answer")
    assert (a.task, a.prompt_template, a.target_index, a.box) == (
        "multi_image",
        None,
        1,
        Box(0.01, 0.02, 0.3, 0.4),
    )
    assert a.question == "Which object in the second image is the same?"
    assert (b.task, b.prompt_template, b.question) == ("refcoco", "refcoco_single", "the man on the left")
    assert read_stage2_rl(path, skip_invalid=True, single_image_template=None)[1].prompt_template is None


# ---- RefCOCO ------------------------------------------------------------------------------------


def test_refcoco(tmp_path):
    recs = [
        {
            "image": "COCO_1.jpg",
            "problem": "left dog",
            "solution": [64, 48, 320, 240],
            "normalized_solution": [100, 100, 500, 500],
            "width": 640,
            "height": 480,
        },
        {"image": "COCO_2.jpg", "problem": "cat", "normalized_solution": [250, 0, 750, 1000]},
        {
            "image": "COCO_3.jpg",
            "problem": "bad",
            "solution": [64, 48, 3200, 240],
            "width": 640,
            "height": 480,
        },
    ]
    path = write(tmp_path / "ref.json", recs)
    a, b = check_malformed(read_refcoco, path, 2, "solution")
    assert a.box == Box(0.1, 0.1, 0.5, 0.5) and a.task == "refcoco" and a.target_rule == "single"
    assert b.box == Box(0.25, 0.0, 0.75, 1.0)


# ---- LISA / LLMSeg (pixel boxes, normalised by the image size) ------------------------------------


def test_lisa_reads_size_from_header(tmp_path):
    make_image(tmp_path / "img" / "a.jpg", (200, 100))
    recs = [
        {
            "image_path": "a.jpg",
            "instruction": "what keeps you dry",
            "boxes": [[20, 10, 100, 50], [0, 0, 1, 1]],
        },
        {
            "image_path": "b.jpg",
            "instruction": "sized",
            "boxes": [[0, 0, 50, 25]],
            "width": 100,
            "height": 50,
        },
        {"image_path": "missing.jpg", "instruction": "no size, no file", "boxes": [[0, 0, 5, 5]]},
    ]
    path = write(tmp_path / "lisa.json", recs)
    out = check_malformed(read_lisa, path, 2, "boxes[0]", image_root=tmp_path / "img")
    assert out[0].box == Box(0.1, 0.1, 0.5, 0.5) and out[0].meta["image_size"] == (200, 100)
    assert out[1].box == Box(0.0, 0.0, 0.5, 0.5)
    assert out.report.notes == {"extra_boxes_ignored": 1}


def test_llmseg_nested_bbox(tmp_path):
    recs = [
        {
            "image": "p.jpg",
            "question": "the tallest tree",
            "bbox": [[40, 30], [80, 60]],
            "width": 400,
            "height": 300,
        },
        {"image": "p.jpg", "question": "flat", "bbox": [0, 0, 200, 150], "width": 400, "height": 300},
        {"image": "p.jpg", "bbox": [0, 0, 200, 150], "width": 400, "height": 300},
    ]
    path = write(tmp_path / "llmseg.json", recs)
    a, b = check_malformed(read_llmseg, path, 2, "question|instruction")
    assert a.box == Box(0.1, 0.1, 0.2, 0.2) and a.task == "llmseg"
    assert b.box == Box(0.0, 0.0, 0.5, 0.5)


# ---- ReasonVOS / ReVOS ----------------------------------------------------------------------------


def test_reasonvos_and_revos(tmp_path):
    root = tmp_path / "frames"
    for k in range(12):
        make_image(root / "vid1" / f"{k:05d}.jpg", (100, 50))
    frames = [f"vid1/{k:05d}.jpg" for k in range(6)]
    boxes = [f"[{k}, 0, {k + 10}, 10]" for k in range(6)]
    revos = {
        "video_id": "vid1",
        "frames": [0, 2, 4, 6, 8, 10],
        "question": "the moving one",
        "bbox_list": [[k, 0, k + 50, 25] for k in range(6)],
    }
    long = {
        "image_list": [f"vid1/{k:05d}.jpg" for k in range(11)],
        "question": "long",
        "bbox_list": [[k, 0, 50, 25] for k in range(11)],
    }
    bad = {"image_list": frames, "question": "bad", "bbox_list": boxes[:5]}
    path = write(
        tmp_path / "vos.json",
        [{"image_list": frames, "question": "the thing that falls", "bbox_list": boxes}, revos, long, bad],
    )
    a, b, c = check_malformed(read_vos, path, 3, "bbox_list", image_root=root)
    assert a.target_index == 2 and a.target_rule == "vos:third" and len(a.images) == 6
    assert a.box == Box(0.02, 0.0, 0.12, 0.2)  # the third frame's box "[2, 0, 12, 10]" on 100 x 50
    assert b.images[2] == str(root / "vid1" / "00004.jpg") and b.box == Box(0.02, 0.0, 0.52, 0.5)
    # every listed frame by default (the release): 11 frames, the third is frame 2 and its box
    assert len(c.images) == 11 and c.meta["frame_indices"] == list(range(11))
    assert c.box == Box(0.02, 0.0, 0.5, 0.5)
    # num_frames 6: sampled uniformly [0, 2, 4, 6, 8, 10]; the third is frame 4 and its box
    c6 = read_vos(path, image_root=root, skip_invalid=True, num_frames=6)[2]
    assert c6.meta["frame_indices"] == [0, 2, 4, 6, 8, 10] and c6.box == Box(0.04, 0.0, 0.5, 0.5)


# ---- shared behaviour -----------------------------------------------------------------------------


def test_registry_and_dispatch(tmp_path):
    assert sorted(READERS) == sorted(
        ["mig_bench", "mgrounding", "cot_sft", "stage2_rl", "refcoco", "lisa", "llmseg", "vos"]
    )
    path = write(tmp_path / "mg.json", [MG_GOOD])
    assert read_samples(path, "mgrounding")[0].id == "mg-1"
    with pytest.raises(ValueError, match="unknown data format 'nope'"):
        read_samples(path, "nope")


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        read_mgrounding(tmp_path / "none.json")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(SampleError, match="expected a JSON list of records, got dict"):
        read_mgrounding(tmp_path / "obj.json")


def test_wrong_frame_is_an_error_not_a_clamp(tmp_path):
    # Pixel coordinates given where 0-1000 ints are expected: far outside, so an error.
    rec = {"question": "<image>x", "answer": [10, 20, 3000, 4000], "images": ["a.jpg"]}
    path = write(tmp_path / "s2.json", [rec])
    with pytest.raises(
        SampleError,
        match=r"field 'answer': expected coordinates in \[0, 1000\] \(a wrong coordinate frame\?\)",
    ):
        read_stage2_rl(path)
    rec["answer"] = [10, 20, 1050, 400]  # slightly out: clamped and counted
    out = read_stage2_rl(write(tmp_path / "s2b.json", [rec]))
    assert out[0].box.x2 == 1.0 and out.report.clamped == ["s2b-0"]


def test_missing_image_is_reported_at_the_sample(tmp_path):
    make_image(tmp_path / "here.jpg", (30, 20))
    rec = dict(MG_GOOD, images=["here.jpg", "gone.jpg", "here.jpg"])
    samples = read_mgrounding(
        write(tmp_path / "mg.json", [rec]), image_root=tmp_path
    )  # no error at read time
    assert load_image(samples[0], 0).size == (30, 20)
    with pytest.raises(ImageNotFoundError) as err:
        load_image(samples[0], 1)
    assert f"{tmp_path / 'mg.json'}:record 0 (id mg-1): images[1] not found: {tmp_path / 'gone.jpg'}" in str(
        err.value
    )


def test_validate_sample_names_field():
    s = GroundingSample("x", "t", ["a.jpg"], 0, "q", Box(0.5, 0.1, 0.2, 0.9))
    with pytest.raises(SampleError, match=r"field 'box': expected x1 < x2 and y1 < y2"):
        validate_sample(s)
    s.meta["degenerate"] = True
    validate_sample(s)
    s.box = Box(0.1, 0.1, 1.5, 0.9)
    with pytest.raises(SampleError, match=r"field 'box': expected normalised coordinates in \[0, 1\]"):
        validate_sample(s)
    s.box, s.images = Box(0.1, 0.1, 0.2, 0.2), []
    with pytest.raises(SampleError, match="field 'images'"):
        validate_sample(s)


def test_stage2_writer_round_trip_detects_coco_by_path(tmp_path):
    """Synthetic samples written in the release's stage-2 layout read back as the same prompts and
    boxes; single-image samples saved under coco/train2014 are detected as COCO records."""
    from dataclasses import replace

    from univg.core.prompts import answer_coords
    from univg.data import write_stage2_rl
    from univg.data.synthetic import generate_samples

    multi = generate_samples(3, tasks=["diff", "common_object"], image_size=56, seed=1)
    single = [
        replace(s, prompt_template="refcoco_single") for s in generate_samples(2, tasks=["single"], seed=2)
    ]
    assert write_stage2_rl(multi, tmp_path / "a.json", image_dir=tmp_path / "img") == 3
    write_stage2_rl(single, tmp_path / "b.json", image_dir=tmp_path / "coco" / "train2014")
    records = json.loads((tmp_path / "a.json").read_text()) + json.loads((tmp_path / "b.json").read_text())
    (tmp_path / "stage2.json").write_text(json.dumps(records))
    first = records[0]
    assert first["question"] == "<image><image>" + multi[0].question and first["answer"] == list(
        answer_coords(multi[0])
    )
    out = read_stage2_rl(tmp_path / "stage2.json")
    assert [s.meta["source_kind"] for s in out] == ["mgrounding"] * 3 + ["coco"] * 2
    assert out.report.notes == {"source_kind:coco": 2, "source_kind:mgrounding": 3}
    for written, read in zip(multi + single, out):
        assert read.question == written.question.strip() and answer_coords(read) == answer_coords(written)
        assert read.prompt_template == ("refcoco_single" if written in single else None)
        assert [Image.open(p).size for p in read.images] == [im.size for im in written.images]
