"""Boxes, frames, IoU and answer parsing: hand-derived values, a numpy reference, random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from univg.core.boxes import (
    FRAMES,
    Box,
    BoxFixes,
    PixelFrame,
    Qwen2VLFrame,
    box_iou,
    format_answer,
    format_box_tokens,
    get_frame,
    normalise_coords,
    parse_answer,
    parse_box_tokens,
)

# ----------------------------------------------------------------------------------------- Box


def test_box_helpers() -> None:
    b = Box.from_xyxy((0.1, 0.2, 0.4, 0.8))
    assert b == Box(0.1, 0.2, 0.4, 0.8)
    assert b.as_tuple() == (0.1, 0.2, 0.4, 0.8)
    assert b.width == pytest.approx(0.3)
    assert b.height == pytest.approx(0.6)
    assert b.area == pytest.approx(0.18)
    assert not b.is_degenerate


@pytest.mark.parametrize(
    "coords", [(0.5, 0.1, 0.5, 0.9), (0.1, 0.5, 0.9, 0.5), (0.9, 0.1, 0.1, 0.9), (math.nan, 0, 1, 1)]
)
def test_degenerate_boxes_have_zero_area(coords: tuple[float, ...]) -> None:
    b = Box(*coords)
    assert b.is_degenerate
    assert b.area == 0.0


def test_box_from_xyxy_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="4 numbers"):
        Box.from_xyxy([0.1, 0.2, 0.3])


def test_clamp_clips_each_coordinate() -> None:
    assert Box(-0.5, 1.5, 0.5, 2.0).clamp() == Box(0.0, 1.0, 0.5, 1.0)
    assert math.isnan(Box(math.nan, 0, 1, 1).clamp().x1)


# -------------------------------------------------------------------------------------- frames


def test_qwen2vl_frame_hand_values() -> None:
    f = Qwen2VLFrame()
    # int() truncates: 0.1239 * 1000 = 123.9 -> 123; 1.0 -> 1000 -> clipped to 999; negative -> 0.
    assert f.to_model(Box(0.1239, 0.0, 1.0, 0.5)) == (123, 0, 999, 500)
    assert f.to_model(Box(-0.2, 0.25, 0.75, 1.3)) == (0, 250, 750, 999)
    assert f.from_model((123, 0, 999, 500)) == Box(0.123, 0.0, 0.999, 0.5)


def test_qwen2vl_frame_ignores_image_size() -> None:
    f = Qwen2VLFrame()
    box = Box(0.3, 0.4, 0.5, 0.6)
    assert f.to_model(box, 640, 480) == f.to_model(box) == (300, 400, 500, 600)


def test_from_model_clamps_and_counts() -> None:
    fixes = BoxFixes()
    assert Qwen2VLFrame().from_model((-10, 0, 1500, 999), fixes=fixes) == Box(0.0, 0.0, 1.0, 0.999)
    assert fixes.clamped == 1
    Qwen2VLFrame().from_model((10, 0, 500, 999), fixes=fixes)
    assert fixes.clamped == 1  # in range: not counted


def test_pixel_frame_hand_values_and_size_required() -> None:
    f = PixelFrame()
    assert f.to_model(Box(0.1, 0.2, 0.5, 1.0), width=640, height=480) == (64, 96, 320, 480)
    assert f.from_model((64, 96, 320, 480), width=640, height=480) == Box(0.1, 0.2, 0.5, 1.0)
    with pytest.raises(ValueError, match="resized image size"):
        f.to_model(Box(0.1, 0.2, 0.5, 1.0))
    with pytest.raises(ValueError, match="resized image size"):
        f.from_model((1, 2, 3, 4), width=640)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), st.integers(28, 2000), st.integers(28, 2000))
def test_frames_round_trip(values: list[float], width: int, height: int) -> None:
    box = Box(*values)
    back = Qwen2VLFrame().from_model(Qwen2VLFrame().to_model(box))
    # int() truncates, so the round trip only moves down, by less than 1/1000 (exactly 1/1000 at 1.0 -> 999).
    assert all(-1e-9 <= a - b <= 0.001 + 1e-9 for a, b in zip(box.as_tuple(), back.as_tuple()))
    back = PixelFrame().from_model(PixelFrame().to_model(box, width, height), width, height)
    tols = (0.5 / width + 1e-9, 0.5 / height + 1e-9) * 2
    assert all(abs(a - b) <= t for a, b, t in zip(box.as_tuple(), back.as_tuple(), tols))


def test_get_frame() -> None:
    assert isinstance(get_frame("qwen2-vl"), Qwen2VLFrame)
    assert isinstance(get_frame("pixels"), PixelFrame)
    frame = PixelFrame()
    assert get_frame(frame) is frame
    assert set(FRAMES) == {"qwen2-vl", "pixels"}
    with pytest.raises(ValueError, match=r"unknown coordinate frame 'qwen3'.*pixels.*qwen2-vl"):
        get_frame("qwen3")


# ------------------------------------------------------------------------------ normalise_coords


def test_normalise_coords_repairs_and_counts() -> None:
    fixes = BoxFixes()
    assert normalise_coords((500, 600, 100, 200), fixes=fixes) == Box(0.1, 0.2, 0.5, 0.6)
    assert normalise_coords((-50, 0, 100, 1200), fixes=fixes) == Box(0.0, 0.0, 0.1, 1.0)
    assert normalise_coords((100, 100, 100, 300), fixes=fixes) == Box(0.1, 0.1, 0.1, 0.3)
    assert normalise_coords((math.nan, 0, 10, 10), fixes=fixes) is None
    assert normalise_coords((math.inf, 0, 10, 10), fixes=fixes) is None
    assert normalise_coords((1, 2, 3), fixes=fixes) is None  # wrong count: not a box, not counted
    assert normalise_coords(None, fixes=fixes) is None
    assert normalise_coords(("a", 1, 2, 3), fixes=fixes) is None
    assert fixes == BoxFixes(swapped=1, clamped=1, degenerate=1, nan=2)
    assert fixes.as_dict() == {"swapped": 1, "clamped": 1, "degenerate": 1, "nan": 2}


def test_normalise_coords_pixel_frame() -> None:
    assert normalise_coords((320, 480, 64, 96), "pixels", width=640, height=480) == Box(0.1, 0.2, 0.5, 1.0)


def test_box_fixes_update() -> None:
    a, b = BoxFixes(swapped=1, nan=2), BoxFixes(swapped=3, clamped=1)
    a.update(b)
    assert a == BoxFixes(swapped=4, clamped=1, degenerate=0, nan=2)


# ------------------------------------------------------------------------------------------ IoU


def test_box_iou_hand_values() -> None:
    # [0,4]x[0,4] vs [2,6]x[2,6]: intersection 2*2 = 4, union 16 + 16 - 4 = 28.
    assert box_iou((0, 0, 4, 4), (2, 2, 6, 6)) == pytest.approx(4 / 28)
    # Containment: inner 2x2 in outer 4x4 -> 4 / 16.
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(0.25)
    # Touching edges share no area.
    assert box_iou((0, 0, 4, 4), (4, 0, 8, 4)) == 0.0
    assert box_iou((0, 0, 4, 4), (10, 10, 12, 12)) == 0.0
    # Inverted corners are swapped before computing.
    assert box_iou((4, 4, 0, 0), (2, 2, 6, 6)) == pytest.approx(4 / 28)
    assert box_iou(Box(0.0, 0.0, 0.4, 0.4), Box(0.2, 0.2, 0.6, 0.6)) == pytest.approx(4 / 28)


@pytest.mark.parametrize(
    "a",
    [
        (0, 0, 0, 0),
        (1, 1, 1, 5),
        (math.nan, 0, 4, 4),
        (0, 0, math.inf, 4),
        (0, 0, 4),
        None,
        ("x", 0, 4, 4),
    ],
)
def test_box_iou_bad_boxes_score_zero(a: object) -> None:
    assert box_iou(a, (0, 0, 4, 4)) == 0.0  # type: ignore[arg-type]
    assert box_iou((0, 0, 4, 4), a) == 0.0  # type: ignore[arg-type]


def _numpy_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference IoU for [M, 4] arrays, written independently (vectorised, sorted corners)."""
    a = np.concatenate([np.minimum(a[:, :2], a[:, 2:]), np.maximum(a[:, :2], a[:, 2:])], axis=1)
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where((area_a > 0) & (area_b > 0), inter / union, 0.0)
    return iou


@pytest.mark.parametrize("integer", [False, True])
def test_box_iou_matches_numpy_reference(integer: bool) -> None:
    rng = np.random.default_rng(0)
    m = 5000
    if integer:  # the model frame: ints in [0, 1000), small boxes make many exact ties and touches
        a = rng.integers(0, 1000, size=(m, 4)).astype(float)
        b = np.concatenate(
            [a[:, :2] + rng.integers(-50, 50, size=(m, 2)), rng.integers(0, 1000, size=(m, 2))], 1
        )
    else:  # normalised floats, corners in any order (about 3/4 of the boxes have an inverted axis)
        a, b = rng.random((m, 4)), rng.random((m, 4))
    expected = _numpy_iou(a, b)
    got = np.array([box_iou(tuple(x), tuple(y)) for x, y in zip(a.tolist(), b.tolist())])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert 0.05 < (expected > 0).mean() < 0.95  # the sample exercises both overlap and disjoint cases
    assert ((got >= 0) & (got <= 1)).all()


finite = st.floats(-1e6, 1e6, allow_nan=False)
any_float = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf))


@settings(max_examples=300, deadline=None)
@given(st.lists(any_float, min_size=4, max_size=4), st.lists(any_float, min_size=4, max_size=4))
def test_box_iou_properties(a: list[float], b: list[float]) -> None:
    iou = box_iou(a, b)
    assert 0.0 <= iou <= 1.0
    assert iou == pytest.approx(box_iou(b, a), abs=1e-12)  # symmetric


# ------------------------------------------------------------------------------------- parsing

STRICT_CASES = [
    ("<think>r</think><answer>(12, 34), (56, 78)</answer>", (12, 34, 56, 78)),
    ("<answer>(12,34),(56,78)</answer>", (12, 34, 56, 78)),
    ("<answer>( 12 , 34 ) , (56, 78)</answer>", (12, 34, 56, 78)),
    ("<answer>\n(12,\t34),\n(56, 78)\n</answer>", (12, 34, 56, 78)),
    ("<answer>The box is (1, 2), (3, 4) I think</answer>", (1, 2, 3, 4)),
    ("<answer><|box_start|>(1,2),(3,4)<|box_end|></answer>", (1, 2, 3, 4)),
    # The last block wins, and within it the first box.
    ("<answer>(1, 1), (2, 2)</answer> wait <answer>(5, 6), (7, 8) or (9, 9), (9, 9)</answer>", (5, 6, 7, 8)),
    # A box quoted only in the reasoning does not count.
    ("<think>(1, 2), (3, 4)</think><answer>none</answer>", None),
    ("<think>(1, 2), (3, 4)</think>", None),
    # Truncated: no closing tag.
    ("<think>r</think><answer>(12, 34), (56, 78)", None),
    ("<answer>(12, 34), (56", None),
    ("", None),
    ("<answer></answer>", None),
    ("</answer><answer>", None),
    # Negative and out-of-range numbers are parsed, to be clamped (and counted) by the caller.
    ("<answer>(-5, 34), (1200, 78)</answer>", (-5, 34, 1200, 78)),
    # Inverted corners are returned as written; the caller swaps and counts.
    ("<answer>(56, 78), (12, 34)</answer>", (56, 78, 12, 34)),
    # Not integers, or the wrong shape.
    ("<answer>(1.5, 2), (3, 4)</answer>", None),
    ("<answer>(1, 2, 3, 4)</answer>", None),
    ("<answer>[1, 2, 3, 4]</answer>", None),  # list form: compatible mode only
    ("<answer>(١, 2), (3, 4)</answer>", None),  # Arabic-Indic digit: not an ASCII integer
]


@pytest.mark.parametrize(("text", "expected"), STRICT_CASES)
def test_parse_answer_strict(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_answer(text) == expected
    assert parse_answer(text, strict=True) == expected


COMPAT_CASES = [
    # The release's eval: first box anywhere, even one quoted in the reasoning.
    ("<think>maybe (1, 2), (3, 4)</think><answer>(12, 34), (56, 78)</answer>", (1, 2, 3, 4)),
    ("(12,34),(56,78)", (12, 34, 56, 78)),
    ("<answer>(12, 34), (56, 78)", (12, 34, 56, 78)),  # truncated still parses here
    ("box: [10, 20, 30, 40]", (10, 20, 30, 40)),
    ("[10, 20, 30, 40] then (1, 2), (3, 4)", (10, 20, 30, 40)),  # whichever form comes first
    ("(1, 2), (3, 4) then [10, 20, 30, 40]", (1, 2, 3, 4)),
    ("no box here", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), COMPAT_CASES)
def test_parse_answer_compatible(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_answer(text, strict=False) == expected


def test_parse_answer_never_raises_on_odd_input() -> None:
    huge = "9" * 5000  # above Python's int-from-string digit limit (4300)
    assert parse_answer(f"<answer>({huge}, 1), (2, 3)</answer>") is None
    assert parse_answer(f"({huge}, 1), (2, 3)", strict=False) is None
    assert parse_answer(None) is None  # type: ignore[arg-type]
    assert parse_answer(123) is None  # type: ignore[arg-type]
    assert parse_answer("<answer>" * 10000 + "(1, 2), (3, 4)</answer>") == (1, 2, 3, 4)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_parse_answer_random_text(text: str, strict: bool) -> None:
    out = parse_answer(text, strict=strict)
    assert out is None or (len(out) == 4 and all(isinstance(v, int) for v in out))


answer_alphabet = st.sampled_from(
    list("0123456789(), -[]\n") + ["<answer>", "</answer>", "<think>", "</think>"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(answer_alphabet, max_size=60).map("".join), st.booleans())
def test_parse_answer_near_miss_text(text: str, strict: bool) -> None:
    # Random strings made of the answer's own pieces hit the parser's edge cases far more often.
    out = parse_answer(text, strict=strict)
    assert out is None or (len(out) == 4 and all(isinstance(v, int) for v in out))
    if strict and out is not None:
        assert "</answer>" in text


coords = st.tuples(*[st.integers(0, 999)] * 4)


@settings(max_examples=200, deadline=None)
@given(coords, st.text(max_size=40).filter(lambda s: "<answer>" not in s and "</answer>" not in s))
def test_format_then_parse_round_trip(c: tuple[int, int, int, int], thought: str) -> None:
    text = f"<think>{thought}</think><answer>{format_answer(c)}</answer>"
    assert parse_answer(text) == c


def test_format_answer_and_box_tokens() -> None:
    assert format_answer((1, 22, 333, 999)) == "(1, 22), (333, 999)"
    assert format_answer([1.0, 2.0, 3.0, 4.0]) == "(1, 2), (3, 4)"
    assert format_box_tokens((1, 22, 333, 999)) == "<|box_start|>(1,22),(333,999)<|box_end|>"


def test_parse_box_tokens() -> None:
    text = (
        "In image 1 <|object_ref_start|>the dog<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>"
        " and <|box_start|>( 1 , 2 ) , ( 3 , 4 )<|box_end|>; not (5,6),(7,8) nor <|box_start|>(1,2)<|box_end|>"
    )
    assert parse_box_tokens(text) == [(10, 20, 30, 40), (1, 2, 3, 4)]
    assert parse_box_tokens("") == []
    assert parse_box_tokens(None) == []  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.lists(coords, max_size=4))
def test_box_tokens_round_trip(boxes: list[tuple[int, int, int, int]]) -> None:
    text = " and ".join(format_box_tokens(b) for b in boxes)
    assert parse_box_tokens(text) == boxes
