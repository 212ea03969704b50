"""Synthetic grounding generator: determinism, exact boxes, task structure, knobs."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image

from univg.data.synthetic import (
    COLOURS,
    DEFAULT_NUM_IMAGES,
    MARK_COLOUR,
    MIG_TASKS,
    TASKS,
    generate_samples,
)

SIZE = 112


def _colour_bbox(image: Image.Image, rgb: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """Pixel bbox with exclusive ends of all pixels of exactly ``rgb``."""
    a = np.asarray(image)
    mask = np.all(a == np.array(rgb, dtype=np.uint8), axis=-1)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _pixels(box, size: int = SIZE) -> tuple[float, ...]:
    return tuple(v * size for v in box.as_tuple())


def test_task_names_are_the_mig_bench_ten_plus_single():
    assert set(MIG_TASKS) == {
        "diff",
        "view_diff",
        "common_object",
        "object_tracking",
        "multi_view",
        "region",
        "refer_grounding",
        "group_grounding",
        "reasoning",
        "correspondence",
    }
    assert TASKS == ("single", *MIG_TASKS)


def test_same_seed_same_pixels_and_boxes_other_seed_differs():
    a = generate_samples(22, tasks=TASKS, seed=3, background="gradient")
    b = generate_samples(22, tasks=TASKS, seed=3, background="gradient")
    c = generate_samples(22, tasks=TASKS, seed=4, background="gradient")
    for x, y in zip(a, b):
        assert x.id == y.id and x.box == y.box and x.question == y.question and x.reasoning == y.reasoning
        assert [im.tobytes() for im in x.images] == [im.tobytes() for im in y.images]
    assert [x.box for x in a] != [z.box for z in c]


def test_sample_i_does_not_depend_on_n():
    short = generate_samples(5, tasks=["single", "diff"], seed=7)
    long = generate_samples(12, tasks=["single", "diff"], seed=7)
    assert [s.box for s in short] == [s.box for s in long[:5]]
    assert long[4].images[0].tobytes() == short[4].images[0].tobytes()


def test_ids_tasks_and_source():
    samples = generate_samples(4, tasks=["region", "single"], seed=9)
    assert [s.id for s in samples] == ["syn-region-9-0", "syn-single-9-1", "syn-region-9-2", "syn-single-9-3"]
    assert [s.index for s in samples] == [0, 1, 2, 3]
    assert {s.source for s in samples} == {"synthetic"}


@pytest.mark.parametrize("background", ["plain", "gradient", "grid"])
def test_target_colour_mask_matches_box(background):
    """The target's colour occurs only in the target object, so its mask's bbox is the box."""
    tasks = [t for t in TASKS if t != "region"]
    samples = generate_samples(4 * len(tasks), tasks=tasks, seed=11, background=background)
    for s in samples:
        colour, _shape = s.meta["target"]
        got = _colour_bbox(s.images[s.target_index], COLOURS[colour])
        assert got is not None, s.where()
        assert np.allclose(got, _pixels(s.box), atol=1.0), (s.where(), got, _pixels(s.box))


def test_every_object_listed_in_meta_is_drawn_where_it_says():
    for s in generate_samples(22, tasks=[t for t in TASKS if t != "region"], seed=5):
        for image, objects in zip(s.images, s.meta["objects"]):
            for colour, _shape, box in objects:
                got = _colour_bbox(image, COLOURS[colour])
                assert got is not None and np.allclose(got, _pixels(box), atol=1.0), s.where()


def test_region_box_crops_back_to_the_region_image():
    for s in generate_samples(6, tasks=["region"], seed=2, background="gradient"):
        assert s.target_index == 0
        x1, y1, x2, y2 = (round(v) for v in _pixels(s.box))
        assert (x1, y1, x2, y2) == s.meta["crop_pixels"]
        crop = s.images[0].crop((x1, y1, x2, y2)).resize((SIZE, SIZE), Image.NEAREST)
        region = s.images[1 + s.meta["region"]]
        assert crop.tobytes() == region.tobytes(), s.where()
        assert f"{s.meta['region'] + 1}th region" in s.question


@pytest.mark.parametrize("task", TASKS)
def test_image_count_and_target_index(task):
    for s in generate_samples(6, tasks=[task], seed=1):
        assert len(s.images) == DEFAULT_NUM_IMAGES[task], s.where()
        assert 0 <= s.target_index < len(s.images)
        assert all(im.size == (SIZE, SIZE) for im in s.images)
        assert all(0.0 <= v <= 1.0 for v in s.box.as_tuple()) and s.box.x2 > s.box.x1 and s.box.y2 > s.box.y1
        if task in ("diff", "view_diff", "refer_grounding", "reasoning", "correspondence"):
            assert s.target_index == 1
        if task in ("single", "region"):
            assert s.target_index == 0
        if task in ("object_tracking", "multi_view"):
            assert s.target_index >= 1  # the first image holds the reference
        if task in ("common_object", "object_tracking", "multi_view"):
            assert f"{s.target_index + 1}th image" in s.question
        if task == "group_grounding":
            ordinal = ("first", "second", "third", "fourth")[s.target_index]
            assert s.meta["additional_info"].startswith(f"It is in the {ordinal} image.")


@pytest.mark.parametrize(
    "task", ["common_object", "object_tracking", "multi_view", "region", "group_grounding"]
)
def test_num_images_knob(task):
    samples = generate_samples(4, tasks=[task], seed=0, num_images={task: 3}, image_size=84)
    assert [len(s.images) for s in samples] == [3] * 4
    ranged = generate_samples(20, tasks=[task], seed=0, num_images=(2, 5))
    assert {len(s.images) for s in ranged} <= {2, 3, 4, 5} and len({len(s.images) for s in ranged}) > 1


def test_num_distractors_knob_and_single_default():
    plain = generate_samples(5, tasks=["single"], seed=0)
    assert [len(s.meta["objects"][0]) for s in plain] == [1] * 5
    crowded = generate_samples(5, tasks=["single"], seed=0, num_distractors=3)
    assert [len(s.meta["objects"][0]) for s in crowded] == [4] * 5
    colours = [c for c, _, _ in crowded[0].meta["objects"][0]]
    assert len(set(colours)) == 4  # distinct colours: the name is unambiguous


@pytest.mark.parametrize("task", TASKS)
def test_reasoning_names_target_and_its_image(task):
    for s in generate_samples(5, tasks=[task], seed=4):
        colour, shape = s.meta["target"]
        assert f"{colour} {shape}" in s.reasoning, s.where()
        assert "<think>" not in s.reasoning and "<answer>" not in s.reasoning
        if len(s.images) > 1:
            assert f"image {s.target_index + 1}" in s.reasoning.lower(), s.reasoning


def test_single_question_names_target():
    s = generate_samples(1, tasks=["single"], seed=0)[0]
    colour, shape = s.meta["target"]
    assert s.question == f"Locate the {colour} {shape} in the image."


@pytest.mark.parametrize("task", ["object_tracking", "multi_view", "correspondence"])
def test_reference_box_in_question_and_marked_in_first_image(task):
    for s in generate_samples(4, tasks=[task], seed=6):
        (ref,) = s.ref_boxes
        m = re.search(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>", s.question)
        assert m is not None
        assert [int(v) for v in m.groups()] == [min(999, int(v * 1000)) for v in ref.as_tuple()]
        # the white outline sits one pixel outside the reference object
        x1, y1, x2, y2 = (round(v) for v in _pixels(ref))
        assert _colour_bbox(s.images[0], MARK_COLOUR) == (x1 - 1, y1 - 1, x2 + 1, y2 + 1), s.where()
        assert all(_colour_bbox(im, MARK_COLOUR) is None for im in s.images[1:])


def test_answers_are_unique():
    """What makes each multi-image task well posed holds in every sample."""
    for s in generate_samples(40, tasks=["common_object", "group_grounding", "diff", "view_diff"], seed=8):
        pairs = [{(c, sh) for c, sh, _ in objs} for objs in s.meta["objects"]]
        target = s.meta["target"]
        if s.task == "common_object":
            assert set.intersection(*pairs) == {target}, s.where()
        elif s.task == "group_grounding":
            assert [target in p for p in pairs] == [i == s.target_index for i in range(len(pairs))]
        else:  # diff / view_diff: image 2 = image 1 plus the target
            assert pairs[1] - pairs[0] == {target} and pairs[0] <= pairs[1], s.where()
    for s in generate_samples(20, tasks=["view_diff"], seed=8):
        first, second = s.meta["objects"]
        shifts = {
            (round((b2.x1 - b1.x1) * SIZE), round((b2.y1 - b1.y1) * SIZE))
            for (_, _, b1), (_, _, b2) in zip(first, second)
        }
        assert len(shifts) == 1  # the second view moves everything by one offset


def test_reasoning_task_rule_holds():
    for s in generate_samples(20, tasks=["reasoning"], seed=3):
        ((ref_colour, ref_shape, _),) = s.meta["objects"][0]
        colour, shape = s.meta["target"]
        if s.meta["rule"] == "same_shape":
            assert shape == ref_shape and colour != ref_colour
            others = [(c, sh) for c, sh, _ in s.meta["objects"][1][1:]]
            assert all(sh != ref_shape for _, sh in others)
        else:
            assert colour == ref_colour and shape != ref_shape
            assert all(c != ref_colour for c, _, _ in s.meta["objects"][1][1:])


def test_gradient_background_encodes_position():
    s = generate_samples(1, tasks=["single"], seed=0, background="gradient", image_size=56)[0]
    a = np.asarray(s.images[0]).astype(int)
    # objects keep two pixels from the border, so corners and edges show the ramp:
    # red = 64 + x * 128 // 55 (left to right), green = 64 + y * 128 // 55 (top to bottom)
    assert tuple(a[0, 0]) == (64, 64, 128)
    assert tuple(a[55, 55]) == (192, 192, 128)
    assert tuple(a[0, 11]) == (64 + 11 * 128 // 55, 64, 128) == (89, 64, 128)
    assert tuple(a[20, 0]) == (64, 64 + 20 * 128 // 55, 128) == (64, 110, 128)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task types \\['nope'\\]"):
        generate_samples(1, tasks=["nope"])
    with pytest.raises(ValueError, match="background"):
        generate_samples(1, background="stripes")


def test_thousand_samples_in_a_few_seconds():
    start = time.perf_counter()
    samples = generate_samples(1000, seed=0)
    assert len(samples) == 1000
    assert time.perf_counter() - start < 5.0


def test_short_reasoning_names_target_image_and_location():
    full = generate_samples(11, tasks=TASKS, seed=2)
    short = generate_samples(11, tasks=TASKS, seed=2, reasoning_style="short")
    assert [s.box for s in full] == [s.box for s in short]  # same scenes, other text
    single = short[0]
    assert single.reasoning == "The orange ellipse is in the upper right."
    x1, y1, x2, y2 = single.box.as_tuple()
    assert (x1 + x2) / 2 >= 2 / 3 and (y1 + y2) / 2 < 1 / 3  # the box centre is in the upper-right third
    for s in short[1:]:
        colour, shape = s.meta["target"]
        assert f"{colour} {shape}" in s.reasoning and f"image {s.target_index + 1}" in s.reasoning
        assert len(s.reasoning.split()) <= 12
    with pytest.raises(ValueError, match="reasoning_style"):
        generate_samples(1, reasoning_style="long")
