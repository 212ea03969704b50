"""``accuracy_release`` / ``format_release`` against a second, independent reading of the release.

The reference below re-states the release's reward functions (``format_reward_rec`` and
``iou_reward`` of ``src/open-r1-multimodal/src/open_r1/vlm_modules/qwen_module.py`` in
AMAP-ML/UniVG-R1, decoded with ``skip_special_tokens=True`` by its ``trainer/grpo_trainer.py``)
without regular expressions: a character scanner for the box, ``str.find`` for the first answer
block, a right-to-left check for the format, the IoU in the release's own terms (overlap corners
``max(x1)``, ``min(x2 - 1)``, counted when ``left < right``, ``+ 1`` back on each side). Python's
``\\d`` and ``\\s`` are ``str.isdecimal`` and ``str.isspace``, so the scanner uses those.

Each check was seen to fail with a fault injected in ``univg/rl/rewards_release.py`` (the fuzz
tripped on every seed for each fault):

- overlap counted when longer than 0 units instead of 1: ``test_accuracy_hand_values`` (the
  one-unit overlap), ``test_release_iou_hand_values`` and the fuzz;
- the ``+1`` pixel-inclusive intersection, ``(side + 1)`` per axis: the accuracy and IoU hand
  values and the fuzz;
- inverted corners swapped before scoring: the two inverted hand values and the fuzz;
- trailing whitespace trimmed before the format search: ``test_format_trailing_text`` and the fuzz;
- special tokens kept: the format hand values with special tokens, the tokenizer round trip and
  the fuzz;
- ``re.ASCII`` on the box pattern: the Arabic-Indic digits hand value and the fuzz;
- the last ``<answer>`` block read instead of the first: ``test_accuracy_hand_values_other_rules``
  and the fuzz.
"""

from __future__ import annotations

import random

import pytest
import torch

from univg.rl.difficulty import difficulty_weights, phi
from univg.rl.rewards_release import accuracy_release, as_decoded_by_release, format_release, release_iou

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


# ------------------------------------------------------------------------------------ reference
def ref_decode(text: str) -> str:
    """Left to right, drop each special token where it starts (what skipping the tokens leaves)."""
    out, i = [], 0
    while i < len(text):
        hit = next((t for t in SPECIALS if text.startswith(t, i)), None)
        if hit is not None:
            i += len(hit)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _digits(s: str, i: int) -> int:
    j = i
    while j < len(s) and s[j].isdecimal():
        j += 1
    return j


def _spaces(s: str, i: int) -> int:
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def ref_pair_at(s: str, i: int) -> tuple[list[str], int] | None:
    """``(d, <ws>d), <ws>(d, <ws>d)`` starting at ``s[i]``: the four digit strings and the end."""
    nums = []
    for half in range(2):
        if half == 1:
            if not s.startswith(",", i):
                return None
            i = _spaces(s, i + 1)
        if not s.startswith("(", i):
            return None
        i += 1
        for k in range(2):
            if k == 1:
                if not s.startswith(",", i):
                    return None
                i = _spaces(s, i + 1)
            j = _digits(s, i)
            if j == i:
                return None
            nums.append(s[i:j])
            i = j
        if not s.startswith(")", i):
            return None
        i += 1
    return nums, i


def ref_first_pair(s: str) -> list[str] | None:
    for i, c in enumerate(s):
        if c == "(":
            found = ref_pair_at(s, i)
            if found is not None:
                return found[0]
    return None


def ref_iou(p: list[int], g: list[int]) -> float:
    left, top = max(p[0], g[0]), max(p[1], g[1])
    right, bottom = min(p[2] - 1, g[2] - 1), min(p[3] - 1, g[3] - 1)
    inter = (right - left + 1) * (bottom - top + 1) if left < right and top < bottom else 0
    area_p = (p[2] - p[0]) * (p[3] - p[1])
    area_g = (g[2] - g[0]) * (g[3] - g[1])
    try:
        return float(inter) / (area_p + area_g - inter)
    except (ZeroDivisionError, OverflowError):
        return 0.0


def ref_accuracy(text, gt, form: str) -> float:
    if not isinstance(text, str):
        return 0.0
    t = ref_decode(text)
    if form == "think":
        start = t.find("<answer>")
        stop = t.find("</answer>", start + len("<answer>")) if start >= 0 else -1
        if stop < 0:
            return 0.0
        t = t[start + len("<answer>") : stop]
    nums = ref_first_pair(t)
    if nums is None:
        return 0.0
    try:
        pred = [int(n) for n in nums]
    except ValueError:
        return 0.0
    return ref_iou(pred, list(gt))


def _think_tail(e: str) -> bool:
    if not e.endswith("</answer>"):
        return False
    body = e[: -len("</answer>")]
    k = body.rfind("<answer>")
    if k < 0:
        return False
    pair = body[k + len("<answer>") :]
    found = ref_pair_at(pair, 0)
    if found is None or found[1] != len(pair):
        return False
    head = body[:k].rstrip()
    return head.endswith("</think>") and "<think>" in head[: -len("</think>")]


def ref_format(text, form: str) -> float:
    if not isinstance(text, str):
        return 0.0
    t = ref_decode(text)
    if form == "box":
        return 1.0 if ref_first_pair(t) is not None else 0.0
    # "$" without MULTILINE: the very end, or just before one final "\n"
    ends = [t, t[:-1]] if t.endswith("\n") else [t]
    return 1.0 if any(_think_tail(e) for e in ends) else 0.0


# ------------------------------------------------------------------------------------ hand values
GT = (0, 0, 100, 100)  # area 100 * 100 = 10000


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # overlap 100 x 100 = 10000; union 10000 + 10000 - 10000 = 10000 -> 1
        ("(0, 0), (100, 100)", 1.0),
        # inverted: right = min(0 - 1, 99) = -1 < left = 0 -> no overlap -> 0 (a swap would give 1)
        ("(100, 100), (0, 0)", 0.0),
        # x inverted only: no overlap; area (0 - 100) * (100 - 0) = -10000, union 0 -> 0
        ("(100, 0), (0, 100)", 0.0),
        # overlap 50 x 100 = 5000; union 10000 + 10000 - 5000 = 15000 -> 1/3
        ("(50, 0), (150, 100)", 1 / 3),
        # overlap 2 x 100 = 200; union 10200 + 10000 - 200 = 20000 -> 0.01
        ("(98, 0), (200, 100)", 0.01),
        # overlap 1 unit wide: left 99, right min(199, 99) = 99, 99 < 99 false -> 0 (not 100/20100)
        ("(99, 0), (200, 100)", 0.0),
        # past the ground truth, not clamped: overlap 10000; union 20000 + 10000 - 10000 -> 0.5
        ("(0, 0), (200, 100)", 0.5),
        # degenerate (zero width): no overlap -> 0; union 0 + 10000 - 0
        ("(50, 0), (50, 100)", 0.0),
        # inside: overlap 50 x 50 = 2500; union 2500 + 10000 - 2500 = 10000 -> 0.25
        ("(25, 25), (75, 75)", 0.25),
        # Arabic-Indic digits are \d and int() reads them: (0, 0), (100, 100) -> 1
        ("(٠, ٠), (١٠٠, ١٠٠)", 1.0),
        # a space after "(" is no box -> 0
        ("( 0, 0), (100, 100)", 0.0),
        # special tokens removed first: (0, 0), (100, 100) -> 1
        ("<|box_start|>(0, 0), (100, 100)<|box_end|>", 1.0),
    ],
)
def test_accuracy_hand_values(answer: str, expected: float) -> None:
    text = f"<think>x</think><answer>{answer}</answer>"
    assert accuracy_release([text], [GT]) == [pytest.approx(expected, abs=1e-12)]
    assert ref_accuracy(text, GT, "think") == pytest.approx(expected, abs=1e-12)


def test_accuracy_hand_values_other_rules() -> None:
    # the first <answer> block: (0, 0), (50, 100) -> overlap 5000, union 5000 + 10000 - 5000 = 0.5
    two = "<think>x</think><answer>(0, 0), (50, 100)</answer><answer>(0, 0), (100, 100)</answer>"
    # a "box" prompt: first box of the whole text, tags or not -> (0, 0), (50, 100): 0.5
    bare = "it is (0, 0), (50, 100) or (0, 0), (100, 100)"
    # an unclosed block holds no answer -> 0; a number too long for int() -> 0
    texts = [
        two,
        bare,
        "<think>x</think><answer>(0, 0), (100, 100)",
        f"<answer>(0, 0), ({'9' * 5000}, 1)</answer>",
    ]
    forms = ["think", "box", "think", "think"]
    assert accuracy_release(texts, [GT] * 4, answer_formats=forms) == [0.5, 0.5, 0.0, 0.0]
    # non-strings score 0 in both rewards
    assert accuracy_release([None, 7], [GT, GT]) == [0.0, 0.0]
    assert format_release([None, ["<think>"]]) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        ("", 1.0),
        ("\n", 1.0),  # "$" matches just before one final newline
        ("\n\n", 0.0),
        (" ", 0.0),
        ("\t", 0.0),
        (" \n", 0.0),
        ("\r\n", 0.0),  # only "\n" is special to "$"
        ("<|im_end|>", 1.0),  # a special token, removed as skip_special_tokens does
        ("\n<|im_end|>", 1.0),
        (" <|im_end|>", 0.0),
        (" more", 0.0),
    ],
)
def test_format_trailing_text(suffix: str, expected: float) -> None:
    text = "<think>x</think><answer>(0, 0), (100, 100)</answer>" + suffix
    assert format_release([text]) == [expected]
    assert ref_format(text, "think") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so: <think>x</think><answer>(1, 2), (3, 4)</answer>", 1.0),  # searched: preamble allowed
        ("<think>x</think> \n <answer>(1,2),(3,4)</answer>", 1.0),  # whitespace between the tags
        ("<think>x</think>y<answer>(1, 2), (3, 4)</answer>", 0.0),  # text between the tags
        ("<think>x</think><answer>( 1, 2), (3, 4)</answer>", 0.0),  # space after "("
        ("<think>x</think><answer>(1 , 2), (3, 4)</answer>", 0.0),  # space before ","
        ("<think>x</think><answer>(-1, 2), (3, 4)</answer>", 0.0),  # negative
        ("<think>x</think><answer>(1.5, 2), (3, 4)</answer>", 0.0),  # float
        ("</think><answer>(1, 2), (3, 4)</answer>", 0.0),  # no <think>
        ("<think></think><think>a</think><answer>(1, 2), (3, 4)</answer>", 1.0),
        # two blocks: "</think>" must be followed by the last one -> 0; inside the think part -> 1
        ("<think>x</think><answer>(1, 2), (3, 4)</answer><answer>(1, 2), (3, 4)</answer>", 0.0),
        ("<think>x<answer>(1, 2), (3, 4)</answer></think><answer>(1, 2), (3, 4)</answer>", 1.0),
        ("<think>x</think><answer>(1,\u00a02), (3, 4)</answer>", 1.0),  # no-break space is \s
        ("<think>x</think><answer><|box_start|>(1, 2), (3, 4)<|box_end|></answer>", 1.0),
    ],
)
def test_format_hand_values(text: str, expected: float) -> None:
    assert format_release([text]) == [expected]
    assert ref_format(text, "think") == expected


def test_release_iou_hand_values() -> None:
    # overlap 5 x 10 = 50; union 100 + 100 - 50 = 150
    assert release_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    # one-unit overlap: not counted; zero union (two empty boxes): 0; not 4 numbers: 0
    assert release_iou((0, 0, 11, 10), (10, 0, 20, 10)) == 0.0
    assert release_iou((5, 5, 5, 5), (1, 1, 1, 1)) == 0.0
    assert release_iou((0, 0, 1), GT) == 0.0
    # a union too large for a float: 0, as the release's float / int division raises
    assert release_iou((0, 0, 10**200, 10**200), GT) == 0.0
    # a tensor row as the ground truth: overlap 50 x 100, union 15000
    assert accuracy_release(["<answer>(50, 0), (150, 100)</answer>"], torch.tensor([GT])) == [
        pytest.approx(1 / 3)
    ]


# ------------------------------------------------------------------------------------ fuzz
def _num(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.05:
        return str(rng.choice([0, 1000, 999, 1]))  # the border
    if r < 0.10:
        return str(rng.randint(1001, 3000))  # out of range
    if r < 0.13:
        return "".join(chr(0x660 + int(d)) for d in str(rng.randint(0, 1000)))  # Arabic-Indic digits
    if r < 0.15:
        return rng.choice(["-5", "12.5", "", "x", "9" * 400])
    return str(rng.randint(0, 1000))


def _box(rng: random.Random, gt: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    r = rng.random()
    if r < 0.1:
        return gt
    if r < 0.3:  # near the ground truth
        return tuple(max(0, v + rng.randint(-3, 3)) for v in gt)  # type: ignore[return-value]
    if r < 0.4:
        return (gt[2], gt[3], gt[0], gt[1])  # inverted
    if r < 0.45:
        return (gt[0], gt[1], gt[0], gt[3])  # degenerate
    if r < 0.5:
        return (gt[0], gt[1], gt[0] + 1, gt[3])  # one unit wide
    if r < 0.55:
        return (gt[2] - 1, gt[1], gt[2] + 50, gt[3])  # one-unit overlap
    return tuple(rng.randint(0, 1000) for _ in range(4))  # type: ignore[return-value]


def _sep(rng: random.Random) -> str:
    return rng.choice(["", " ", " ", "  ", "\n", "\u00a0", "\t", " \n"])


def _pair(rng: random.Random, gt: tuple[int, int, int, int]) -> str:
    x1, y1, x2, y2 = (str(v) for v in _box(rng, gt))
    if rng.random() < 0.15:
        x1, y1, x2, y2 = _num(rng), _num(rng), _num(rng), _num(rng)
    if rng.random() < 0.05:
        x1 = " " + x1  # space inside the parenthesis
    if rng.random() < 0.05:
        y2 = y2 + " "
    return f"({x1},{_sep(rng)}{y1}),{_sep(rng)}({x2},{_sep(rng)}{y2})"


def _completion(rng: random.Random, gt: tuple[int, int, int, int]) -> object:
    if rng.random() < 0.03:
        return rng.choice([None, 3, ["<think>"], b"<think>"])
    parts = []
    if rng.random() < 0.2:
        parts.append(rng.choice(["Sure. ", "<answer>(1, 2), (3, 4)", "(5, 6), (7, 8) ", "<|im_start|>"]))
    if rng.random() < 0.9:
        parts.append("<think>" + rng.choice(["", "the cup", "see <answer>x</answer>", "a\nb"]) + "</think>")
    parts.append(rng.choice(["", "", " ", "\n", "x"]))
    for _ in range(1 if rng.random() < 0.8 else 2):  # sometimes two answer blocks
        inner = _pair(rng, gt)
        if rng.random() < 0.1:
            inner = f"<|box_start|>{inner}<|box_end|>"
        if rng.random() < 0.05:
            inner = "the box " + inner
        parts.append(f"<answer>{inner}</answer>" if rng.random() < 0.95 else f"<answer>{inner}")
    parts.append(
        rng.choice(
            [
                "",
                "",
                "",
                "\n",
                "\n\n",
                " ",
                "\t",
                " \n",
                "\r\n",
                "<|im_end|>",
                "\n<|im_end|>",
                "<|endoftext|>",
            ]
        )
    )
    return "".join(parts)


def _gt(rng: random.Random) -> tuple[int, int, int, int]:
    if rng.random() < 0.05:
        return (500, 500, 500, 700)  # degenerate ground truth
    x1, x2 = sorted(rng.sample(range(0, 1001), 2))
    y1, y2 = sorted(rng.sample(range(0, 1001), 2))
    return (x1, y1, x2, y2)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = 600
    gts = [_gt(rng) for _ in range(n)]
    texts = [_completion(rng, g) for g in gts]
    forms = [rng.choice(["think", "think", "think", "box"]) for _ in range(n)]
    acc = accuracy_release(texts, gts, answer_formats=forms)
    fmt = format_release(texts, answer_formats=forms)
    for text, gt, form, a, f in zip(texts, gts, forms, acc, fmt):
        assert a == ref_accuracy(text, gt, form), (text, gt, form)
        assert f == ref_format(text, form), (text, form)
        assert 0.0 <= a <= 1.0
    # the fuzz reaches both outcomes of each reward and the partial IoUs
    assert 0 < sum(fmt) < n
    assert any(0 < a < 1 for a in acc) and any(a == 1.0 for a in acc) and any(a == 0.0 for a in acc)


def test_special_tokens_removed_as_the_tokenizer_skips_them(tokenizer) -> None:
    """The text removal agrees with encoding and decoding with ``skip_special_tokens=True``."""
    rng = random.Random(7)
    texts = [s for s in (_completion(rng, _gt(rng)) for _ in range(60)) if isinstance(s, str)]
    texts += ["<|im_<|box_end|>end|>", "a<|vision_start|><|image_pad|><|vision_end|>b", "<|im_start|>"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert as_decoded_by_release(text) == tokenizer.decode(ids, skip_special_tokens=True), text
        assert as_decoded_by_release(text) == ref_decode(text)


# ------------------------------------------------------------------------------------ phi power
def test_phi_power_hand_values() -> None:
    """The release's weight (1.05 - mIoU)^1, per group, then mean-normalised."""
    # G = 2: groups with accuracy (0.1, 0.3) and (0.7, 0.9): mIoU 0.2 and 0.8
    acc = torch.tensor([0.1, 0.3, 0.7, 0.9])
    # 1.05 - 0.2 = 0.85, 1.05 - 0.8 = 0.25
    torch.testing.assert_close(difficulty_weights(acc, 2, "power"), torch.tensor([0.85, 0.85, 0.25, 0.25]))
    # mean (0.85 + 0.25) / 2 = 0.55: 0.85 / 0.55 = 17/11, 0.25 / 0.55 = 5/11
    w = difficulty_weights(acc, 2, "power", normalize=True)
    torch.testing.assert_close(w, torch.tensor([17 / 11, 17 / 11, 5 / 11, 5 / 11]))
    # a solved group keeps 0.05 (the paper's square gives it 0): 1.05 - 1 = 0.05
    torch.testing.assert_close(phi("power", torch.tensor([1.0, 0.0])), torch.tensor([0.05, 1.05]))
    assert phi("square", torch.tensor([1.0])).item() == 0.0
