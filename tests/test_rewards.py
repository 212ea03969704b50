"""Rewards: hand-derived scores, bad model output never raises, the registry and the weighted total."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from univg.core.boxes import BoxFixes
from univg.rl.rewards import (
    REWARDS,
    compute_rewards,
    format_reward,
    get_reward,
    iou_reward,
    register_reward,
    reward_stats,
)

GT = (100, 100, 300, 300)  # a 200 x 200 box in the 0-1000 frame


def answer(x1: int, y1: int, x2: int, y2: int) -> str:
    return f"<think>look</think><answer>({x1}, {y1}), ({x2}, {y2})</answer>"


# ------------------------------------------------------------------------------------ accuracy


def test_iou_reward_hand_values() -> None:
    completions = [
        answer(100, 100, 300, 300),  # exact: 1
        answer(200, 100, 400, 300),  # shifted by half a width: 100*200 / (2*40000 - 20000) = 1/3
        answer(150, 150, 250, 250),  # inside: 10000 / 40000 = 0.25
        answer(300, 300, 100, 100),  # inverted exact: swapped -> 1
        answer(500, 500, 600, 600),  # disjoint: 0
        "<think>look</think>",  # no answer: 0
        "",  # empty: 0
        "<think>look</think><answer>(100, 100), (30",  # truncated: 0
    ]
    scores = iou_reward(completions, [GT] * len(completions))
    assert scores == pytest.approx([1.0, 1 / 3, 0.25, 1.0, 0.0, 0.0, 0.0, 0.0])


def test_iou_reward_clamps_out_of_range_and_negative() -> None:
    fixes = BoxFixes()
    # (-100, 100)-(300, 300) clamps to (0, 100)-(300, 300): IoU = 40000 / 60000.
    # (100, 100)-(300, 5000) clamps to (100, 100)-(300, 1000): IoU = 40000 / (200 * 900).
    scores = iou_reward([answer(-100, 100, 300, 300), answer(100, 100, 300, 5000)], [GT, GT], fixes=fixes)
    assert scores == pytest.approx([40000 / 60000, 40000 / 180000])
    assert fixes == BoxFixes(clamped=2)


def test_iou_reward_counts_swaps_and_degenerate() -> None:
    fixes = BoxFixes()
    scores = iou_reward([answer(300, 300, 100, 100), answer(100, 100, 100, 300)], [GT, GT], fixes=fixes)
    assert scores == [1.0, 0.0]
    assert fixes == BoxFixes(swapped=1, degenerate=1)


def test_iou_reward_strict_vs_compatible() -> None:
    text = "<think>maybe (100, 100), (300, 300)</think><answer>(500, 500), (600, 600)</answer>"
    assert iou_reward([text], [GT]) == [0.0]
    assert iou_reward([text], [GT], strict=False) == [1.0]  # the release's eval scores the quoted box


def test_iou_reward_bad_ground_truth_scores_zero() -> None:
    bad = [(math.nan, 0, 10, 10), (0, 0, 0, 0), (1, 2, 3)]
    assert iou_reward([answer(0, 0, 10, 10)] * 3, bad) == [0.0, 0.0, 0.0]


def test_iou_reward_pixel_frame_needs_sizes() -> None:
    # 640 x 480 image: gt (64, 48)-(320, 240) is (0.1, 0.1)-(0.5, 0.5); the prediction is its left half.
    scores = iou_reward([answer(64, 48, 192, 240)], [(64, 48, 320, 240)], frame="pixels", sizes=[(640, 480)])
    assert scores == pytest.approx([0.5])
    with pytest.raises(ValueError, match="resized image size"):
        iou_reward([answer(64, 48, 192, 240)], [(64, 48, 320, 240)], frame="pixels")
    with pytest.raises(ValueError, match="2 image sizes for 1 completions"):
        iou_reward([answer(0, 0, 1, 1)], [GT], frame="pixels", sizes=[(640, 480)] * 2)


def test_iou_reward_length_mismatch_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 ground-truth boxes"):
        iou_reward(["a", "b"], [GT])


def test_rewards_accept_trl_keyword_call() -> None:
    # TRL calls reward_func(prompts=..., completions=..., completion_ids=..., **dataset_columns).
    kwargs = {"prompts": ["p"], "completions": [answer(*GT)], "completion_ids": [[1, 2]], "boxes": [GT]}
    assert iou_reward(**kwargs) == [1.0]
    assert format_reward(**kwargs) == [1.0]


# -------------------------------------------------------------------------------------- format

FORMAT_CASES = [
    ("<think>r</think><answer>(1, 2), (3, 4)</answer>", 1.0),
    ("<think>r</think><answer>(1,2),(3,4)</answer>", 1.0),
    ("<think>multi\nline</think>\n\n<answer>(1,  2),\n(3, 4)</answer>", 1.0),
    ("<think></think><answer>(1, 2), (3, 4)</answer>", 1.0),
    # Trailing end markers and whitespace are removed first (decoding with or without special tokens).
    ("<think>r</think><answer>(1, 2), (3, 4)</answer>\n", 1.0),
    ("<think>r</think><answer>(1, 2), (3, 4)</answer><|im_end|>", 1.0),
    ("<think>r</think><answer>(1, 2), (3, 4)</answer><|im_end|>\n<|endoftext|>", 1.0),
    # Everything else is a format failure.
    (" <think>r</think><answer>(1, 2), (3, 4)</answer>", 0.0),  # leading space
    ("<answer>(1, 2), (3, 4)</answer>", 0.0),  # no think
    ("<think>r</think>", 0.0),
    ("<think>r</think><answer>(1, 2), (3, 4)</answer> done", 0.0),  # trailing text
    ("<think>r</think><answer>(1, 2), (3, 4)", 0.0),  # truncated
    ("<think>r</think><answer>( 1, 2), (3, 4)</answer>", 0.0),  # space after "("
    ("<think>r</think><answer>(1 , 2), (3, 4)</answer>", 0.0),  # space before ","
    ("<think>r</think><answer>(-1, 2), (3, 4)</answer>", 0.0),  # negative
    ("<think>r</think><answer>(1.5, 2), (3, 4)</answer>", 0.0),
    ("<think>r</think><answer>[1, 2, 3, 4]</answer>", 0.0),
    ("<think>r</think><answer>(١, 2), (3, 4)</answer>", 0.0),  # non-ASCII digit
    ("<think>r</think> text <answer>(1, 2), (3, 4)</answer>", 0.0),
    ("<|im_end|><think>r</think><answer>(1, 2), (3, 4)</answer>", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize(("text", "expected"), FORMAT_CASES)
def test_format_reward(text: str, expected: float) -> None:
    assert format_reward([text]) == [expected]


def test_format_reward_non_strings_score_zero() -> None:
    assert format_reward([None, 3, ["<think>"]]) == [0.0, 0.0, 0.0]  # type: ignore[list-item]


# ---------------------------------------------------------------------------- registry, totals


def test_registry() -> None:
    assert get_reward("accuracy") is iou_reward
    assert get_reward("format") is format_reward
    assert {"accuracy", "format"} <= set(REWARDS)
    with pytest.raises(ValueError, match=r"unknown reward 'acc'.*'accuracy'.*'format'"):
        get_reward("acc")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy")(lambda completions, **kw: [0.0] * len(completions))


def test_register_custom_reward_and_compute() -> None:
    @register_reward("test_length")
    def length_reward(completions: list[str], **kwargs: object) -> list[float]:
        return [float(len(c)) for c in completions]

    try:
        out = compute_rewards({"test_length": 0.5, "format": 2.0}, ["ab", "abcd"], [GT, GT])
        assert out["test_length"].tolist() == [2.0, 4.0]
        assert out["format"].tolist() == [0.0, 0.0]
        assert out["total"].tolist() == [1.0, 2.0]
    finally:
        del REWARDS["test_length"]


def test_compute_rewards_total_is_weighted_sum() -> None:
    completions = [
        answer(100, 100, 300, 300),  # acc 1, fmt 1
        answer(200, 100, 400, 300),  # acc 1/3, fmt 1
        "(100, 100), (300, 300)",  # acc 0 (strict), fmt 0
        "<think>x</think> <answer>(300, 300), (100, 100)</answer> trailing",  # acc 1 (swapped), fmt 0
    ]
    out = compute_rewards({"accuracy": 1.0, "format": 1.0}, completions, [GT] * 4)
    assert set(out) == {"accuracy", "format", "total"}
    for value in out.values():
        assert value.shape == (4,) and value.dtype == torch.float32
    torch.testing.assert_close(out["accuracy"], torch.tensor([1.0, 1 / 3, 0.0, 1.0]))
    torch.testing.assert_close(out["format"], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(out["total"], torch.tensor([2.0, 4 / 3, 0.0, 1.0]))
    # Keyword arguments reach the rewards: compatible parsing scores the third completion.
    out = compute_rewards({"accuracy": 2.0}, completions, [GT] * 4, strict=False)
    torch.testing.assert_close(out["total"], torch.tensor([2.0, 2 / 3, 2.0, 2.0]))


def test_compute_rewards_config_errors() -> None:
    with pytest.raises(ValueError, match="no rewards requested"):
        compute_rewards({}, ["a"], [GT])
    with pytest.raises(ValueError, match="unknown reward 'iou'"):
        compute_rewards({"iou": 1.0}, ["a"], [GT])
    with pytest.raises(ValueError, match="'total' is the weighted sum"):
        compute_rewards({"total": 1.0}, ["a"], [GT])


def test_reward_stats_counts() -> None:
    completions = [
        answer(100, 100, 300, 300),
        "garbage",
        "<answer>(1, 2), (3",  # truncated
        answer(300, 300, 100, 100),  # swapped
        answer(-5, 100, 300, 1200),  # clamped once (one box, two coordinates)
        answer(100, 100, 100, 300),  # degenerate
    ]
    assert reward_stats(completions, [GT] * 6) == {
        "unparsable": 2.0,
        "swapped": 1.0,
        "clamped": 1.0,
        "degenerate": 1.0,
        "nan": 0.0,
    }
    assert reward_stats(["(1, 2), (3, 4)"], [GT], strict=False)["unparsable"] == 0.0


# ------------------------------------------------------------------------------ random inputs

coord = st.one_of(
    st.integers(-2000, 3000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
)
box = st.tuples(coord, coord, coord, coord)
piece = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "(", ")", ",", " ", "-", "\n", "<|im_end|>", "[", "]"]
    + [str(i) for i in (0, 1, 7, 99, 500, 999, 1000, 123456789)]
)
completion = st.one_of(st.text(max_size=120), st.lists(piece, max_size=40).map("".join))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(completion, box), min_size=1, max_size=6), st.booleans())
def test_rewards_never_raise(pairs: list[tuple[str, tuple]], strict: bool) -> None:
    completions = [c for c, _ in pairs]
    boxes = [b for _, b in pairs]
    out = compute_rewards({"accuracy": 1.0, "format": 1.0}, completions, boxes, strict=strict)
    assert ((out["accuracy"] >= 0) & (out["accuracy"] <= 1)).all()
    assert set(out["format"].tolist()) <= {0.0, 1.0}
    assert torch.isfinite(out["total"]).all()
    stats = reward_stats(completions, boxes, strict=strict)
    assert all(v >= 0 for v in stats.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 999)] * 4), min_size=1, max_size=4), st.text(max_size=30))
def test_well_formed_answers_score_format_one_and_self_iou(boxes: list[tuple], thought: str) -> None:
    thought = thought.replace("</think>", "").replace("<answer>", "").replace("</answer>", "")
    completions = [f"<think>{thought}</think><answer>({a}, {b}), ({c}, {d})</answer>" for a, b, c, d in boxes]
    assert format_reward(completions) == [1.0] * len(boxes)
    expected = [0.0 if a == c or b == d else 1.0 for a, b, c, d in boxes]  # empty boxes score 0
    assert iou_reward(completions, boxes) == pytest.approx(expected)


def test_release_rewards_differ_from_ours_only_where_documented():
    """The release's format reward searches (text before <think> passes), its accuracy reward reads
    the first <answer> block and no space after '('; a box-only prompt is scored alike by both."""
    from univg.rl.rewards import compute_rewards

    gt = [(0, 0, 100, 100)] * 5
    texts = [
        "<think>a</think><answer>(0, 0), (100, 100)</answer>",  # both: format 1, IoU 1
        "so <think>a</think><answer>(0, 0), (100, 100)</answer>",  # preamble: release format 1, ours 0
        "<think>a</think><answer>(0, 0), (50, 100)</answer><answer>(0, 0), (100, 100)</answer>",
        "<think>a</think><answer>( 0, 0), (100, 100)</answer>",  # space: release IoU 0
        "(0, 0), (100, 100)",  # a box-only prompt's bare box
    ]
    forms = ["think"] * 4 + ["box"]
    ours = compute_rewards({"accuracy": 1.0, "format": 1.0}, texts, gt, answer_formats=forms)
    rel = compute_rewards({"accuracy_release": 1.0, "format_release": 1.0}, texts, gt, answer_formats=forms)
    assert ours["format"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert rel["format_release"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    # ours: last <answer> (IoU 1 for the third), spaces allowed; release: first block (IoU 0.5)
    assert ours["accuracy"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert rel["accuracy_release"].tolist() == [1.0, 1.0, 0.5, 0.0, 1.0]
