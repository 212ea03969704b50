"""Prompt templates (docs/design.md section 2), chat messages and assistant targets.

A dataset picks a template by name (YAML ``prompt_template: reasoning``); a sample may override it
(``GroundingSample.prompt_template``, e.g. single-image RefCOCO records inside the stage-2 set).

>>> render_prompt("reasoning", "Where is the cat?")
'Where is the cat? First output the thinking process in <think> </think> tags and then output the bounding box in <answer> </answer> tags.'
>>> split_prompt(render_prompt("vos", "the man who jumps"))
('vos', 'the man who jumps')
"""

from __future__ import annotations

import re
from typing import Any

from univg.core.boxes import Frame, format_answer, get_frame
from univg.core.sample_types import GroundingSample, sample_error

#: Appended to every multi-image / reasoning question (the release's "rec" question template).
REASONING_SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the bounding box in "
    "<answer> </answer> tags."
)

#: Named templates; ``{question}`` is the sample's question (or instruction).
PROMPTS: dict[str, str] = {
    "reasoning": "{question}" + REASONING_SUFFIX,
    "refcoco_single": "This is a single image grounding task with simple reference. {question}",
    "lisa": "Output the bounding box in the image corresponding to the instruction: {question}."
    + REASONING_SUFFIX,
    "llmseg": "Output the bounding box in the image corresponding to the instruction: {question}."
    + REASONING_SUFFIX,
    "vos": (
        "This is a sequence of images from a video. Please understand the entire video content, and then "
        "output the bounding box in the third image according to the instruction: {question}."
        + REASONING_SUFFIX
    ),
    "plain": "{question}",
}

#: How an answer to a template is scored in training (rewards): "think" is the
#: ``<think>...</think><answer>(x1, y1), (x2, y2)</answer>`` form; "box" (single-image RefCOCO
#: prompts, which ask for the box only) accepts a bare ``(x1, y1), (x2, y2)`` anywhere, as the release
#: scored its COCO prompts. Decided per sample from the sample's own template (the release decided
#: per batch from the first sample's image path).
ANSWER_FORMATS: dict[str, str] = {"refcoco_single": "box"}


def answer_format(template: str) -> str:
    """The answer form the rewards expect for a prompt of ``template``: "think" or "box".

    >>> answer_format("refcoco_single"), answer_format("reasoning")
    ('box', 'think')
    """
    return ANSWER_FORMATS.get(_check_name(template), "think")


#: Assistant target formats: ``cot`` needs the sample's reasoning; ``auto`` uses it when present.
TARGET_FORMATS = ("cot", "answer", "auto")

#: The frame the assistant texts of the release's files are written in (a verbatim target is only
#: valid for a backbone that reads and writes this frame).
VERBATIM_FRAME = "qwen2-vl"

# Most specific first, so that split_prompt recognises "vos" before the generic "reasoning";
# "llmseg" renders exactly like "lisa" and is reported as "lisa".
_SPLIT_ORDER = ("vos", "lisa", "refcoco_single", "reasoning")


def _check_name(name: str) -> str:
    if name not in PROMPTS:
        raise ValueError(f"unknown prompt template {name!r}; choose one of {sorted(PROMPTS)}")
    return name


def render_prompt(name: str, question: str) -> str:
    """The user text of template ``name`` for ``question`` (no image placeholders).

    >>> render_prompt("refcoco_single", "the left dog")
    'This is a single image grounding task with simple reference. the left dog'
    """
    return PROMPTS[_check_name(name)].replace("{question}", question)


def split_prompt(text: str) -> tuple[str, str]:
    """Inverse of :func:`render_prompt`: (template name, question); ``plain`` when none fits.

    >>> split_prompt("Find it in the second image.  First output the thinking process in <think> </think> tags and then output the bounding box in <answer> </answer> tags.")
    ('reasoning', 'Find it in the second image. ')
    >>> split_prompt("What is this?")
    ('plain', 'What is this?')
    """
    for name in _SPLIT_ORDER:
        prefix, _, suffix = PROMPTS[name].partition("{question}")
        if text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix) + len(suffix):
            return name, text[len(prefix) : len(text) - len(suffix)]
    return "plain", text


def sample_template(sample: GroundingSample, template: str) -> str:
    """The template a sample is rendered with: its own override, else ``template``."""
    return _check_name(sample.prompt_template or template)


def build_messages(sample: GroundingSample, template: str = "reasoning") -> list[dict[str, Any]]:
    """Qwen2-VL chat messages for the prompt: one user turn, images first, then the text.

    The system prompt is added by the chat template. ``sample.prompt_template`` overrides
    ``template``.

    >>> from univg.core.boxes import Box
    >>> from univg.core.sample_types import GroundingSample
    >>> s = GroundingSample("a", "t", ["1.jpg", "2.jpg"], 1, "Where?", Box(0.1, 0.2, 0.3, 0.4))
    >>> build_messages(s, "plain")
    [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'image'}, {'type': 'text', 'text': 'Where?'}]}]
    """
    text = render_prompt(sample_template(sample, template), sample.question)
    content: list[dict[str, Any]] = [{"type": "image"} for _ in sample.images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def answer_coords(
    sample: GroundingSample, frame: str | Frame = "qwen2-vl", size: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The sample's box in the model frame (``size`` = resized target image, for pixel frames)."""
    width, height = size if size is not None else (None, None)
    return get_frame(frame).to_model(sample.box, width, height)


def target_text(
    sample: GroundingSample,
    target_format: str = "cot",
    frame: str | Frame = "qwen2-vl",
    size: tuple[int, int] | None = None,
) -> str:
    """The assistant turn (without ``<|im_end|>``).

    ``cot``: ``<think>{reasoning}</think><answer>(x1, y1), (x2, y2)</answer>`` (the sample must carry
    reasoning); ``answer``: ``<answer>(x1, y1), (x2, y2)</answer>`` (plain SFT, coordinates only);
    ``auto``: ``cot`` when the sample has reasoning, else ``answer``. Coordinates are in ``frame``.

    A sample that carries its file's own assistant text (``sample.target``, stage-1 files) gets
    that text verbatim for ``cot`` and ``auto`` (whitespace between the tags and a bare-box answer
    kept as written), since that is what the release trained on; ``answer`` still re-renders the
    coordinates alone. The file's text is in the Qwen2-VL 0-1000 frame, so another ``frame``
    re-renders from ``reasoning`` and ``box``.

    >>> from univg.core.boxes import Box
    >>> from univg.core.sample_types import GroundingSample
    >>> s = GroundingSample("a", "t", ["1.jpg"], 0, "Where?", Box(0.1, 0.2, 0.35, 0.4), reasoning="It is left.")
    >>> target_text(s, "cot")
    '<think>It is left.</think><answer>(100, 200), (350, 400)</answer>'
    >>> target_text(s, "answer")
    '<answer>(100, 200), (350, 400)</answer>'
    """
    if target_format not in TARGET_FORMATS:
        raise ValueError(f"unknown target_format {target_format!r}; choose one of {TARGET_FORMATS}")
    if target_format == "cot" and sample.reasoning is None:
        raise sample_error(
            sample.where(),
            "reasoning",
            "CoT text for target_format='cot' (use 'auto' or 'answer' for boxes only)",
        )
    verbatim = sample.target is not None and get_frame(frame).name == VERBATIM_FRAME
    if verbatim and target_format != "answer":
        return sample.target  # type: ignore[return-value]
    answer = "<answer>" + format_answer(answer_coords(sample, frame, size)) + "</answer>"
    if target_format == "answer" or sample.reasoning is None:  # "auto" without reasoning
        return answer
    return f"<think>{sample.reasoning}</think>{answer}"


_THINK_ANSWER_RE = re.compile(
    r"^(?:<think>(?P<think>.*?)</think>\s*)?<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL
)


def split_target(text: str) -> tuple[str | None, str] | None:
    """(reasoning or None, answer body) of an assistant turn, or ``None`` if it is not one.

    >>> split_target("<think>a</think><answer>(1, 2), (3, 4)</answer>")
    ('a', '(1, 2), (3, 4)')
    >>> split_target("just text") is None
    True
    """
    m = _THINK_ANSWER_RE.match(text)
    return (m.group("think"), m.group("answer")) if m else None
