"""Teacher and judge prompts for building CoT data, and the hash that keys the cache.

The teacher sees the question, all images (numbered), and the ground-truth box in the 0-1000
Qwen2-VL frame, and writes one reasoning chain ending in that box. The judge sees the same and the
chains that passed the automatic checks, and names the best one. Images travel as OpenAI
``image_url`` content parts holding base64 ``data:`` URLs; they are encoded lazily (only when a
request is actually sent), so a fully cached run never reads an image.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from univg.core.sample_types import GroundingSample, ImageRef
from univg.data.images import resolve_image_path

TEACHER_SYSTEM = (
    "You are an expert annotator who writes step-by-step visual reasoning for training a visual "
    "grounding model."
)

TEACHER_TEMPLATE = """Task given to the model: {question}

The correct answer is the box {answer} in image {target} (of {num_images}). Coordinates are \
integers normalised to 0-1000 in that image: x grows to the right, y grows downwards, (0, 0) is \
the top-left corner and (1000, 1000) the bottom-right corner.

Write the reasoning a careful model would follow to find this box from the images and the task \
alone: say which images matter and why, compare them where the task requires it, name the visual \
evidence (objects, attributes, positions, differences, relations), and conclude where the target \
is. Reason step by step. Do not say that the answer was given to you, do not mention a "ground \
truth" or a "provided box", and do not merely restate the coordinates.

Reply in exactly this format and nothing else:
<think>your step-by-step reasoning</think><answer>(x1, y1), (x2, y2)</answer>
where the answer is the box above."""

JUDGE_SYSTEM = "You are a strict reviewer of reasoning chains for visual grounding training data."

JUDGE_TEMPLATE = """Task given to the model: {question}

The correct answer is the box {answer} in image {target} (of {num_images}), coordinates \
normalised to 0-1000.

Below are {num_chains} candidate reasoning chains that all end in this box.

{chains}

Which chain is best: faithful to what the images show, specific about the visual evidence, \
logically leading to the box, concise, and never hinting that the answer was given? Reply with \
only the number of the best chain as <best>k</best>."""

_BEST_RE = re.compile(r"<best>\s*(\d+)\s*</best>", re.IGNORECASE)
_INT_RE = re.compile(r"\d+")


class LazyImage:
    """An image reference that becomes a ``data:`` URL only when a request is sent.

    ``identity`` stands for the image in the prompt hash: the path as written in the dataset (so
    moving the image root does not invalidate the cache), or a digest of the pixels for an
    in-memory image.
    """

    def __init__(self, ref: ImageRef, image_root: str | os.PathLike[str] | None = None) -> None:
        self.ref = ref
        self.image_root = image_root
        if isinstance(ref, Image.Image):
            digest = hashlib.sha256(ref.tobytes() + repr((ref.mode, ref.size)).encode()).hexdigest()
            self.identity = f"pil:{digest[:32]}"
        else:
            self.identity = f"path:{ref}"

    def data_url(self) -> str:
        """``data:image/...;base64,...``: PNG for in-memory images; files keep their bytes and type
        when they are PNG or JPEG (re-encoding a JPEG as PNG would only make the request bigger)."""
        if isinstance(self.ref, Image.Image):
            return png_data_url(self.ref)
        with open(resolve_image_path(self.ref, self.image_root), "rb") as handle:
            raw = handle.read()
        if raw.startswith(b"\x89PNG"):
            mime = "image/png"
        elif raw.startswith(b"\xff\xd8"):
            mime = "image/jpeg"
        else:
            with Image.open(io.BytesIO(raw)) as image:
                return png_data_url(image)
        return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def png_data_url(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _content(
    images: Sequence[LazyImage], text: str, resolve: Callable[[LazyImage], str]
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for number, image in enumerate(images, start=1):
        parts.append({"type": "text", "text": f"Image {number}:"})
        parts.append({"type": "image_url", "image_url": {"url": resolve(image)}})
    parts.append({"type": "text", "text": text})
    return parts


class ChatPrompt:
    """A chat request whose images are resolved late.

    ``messages(resolve)`` builds OpenAI messages, calling ``resolve`` on each image; ``hash`` is the
    SHA-256 of the request with each image replaced by its identity and with the sampling
    parameters included, so any change to wording, images, model parameters or chains re-keys it.
    """

    def __init__(self, system: str, text: str, images: Sequence[LazyImage], params: dict[str, Any]) -> None:
        self.system = system
        self.text = text
        self.images = list(images)
        self.params = dict(params)
        stable = {"messages": self.messages(lambda image: image.identity), "params": self.params}
        self.hash = hashlib.sha256(json.dumps(stable, sort_keys=True).encode("utf-8")).hexdigest()

    def messages(self, resolve: Callable[[LazyImage], str] = LazyImage.data_url) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": _content(self.images, self.text, resolve)},
        ]


def sample_images(sample: GroundingSample, image_root: str | os.PathLike[str] | None) -> list[LazyImage]:
    """The sample's images as :class:`LazyImage` in order."""
    return [LazyImage(ref, image_root) for ref in sample.images]


def teacher_prompt(
    sample: GroundingSample, answer: str, images: Sequence[LazyImage], params: dict[str, Any]
) -> ChatPrompt:
    """The request for one reasoning chain; ``answer`` is the ground truth as
    ``(x1, y1), (x2, y2)`` in the 0-1000 frame."""
    text = TEACHER_TEMPLATE.format(
        question=sample.question.strip(),
        answer=answer,
        target=sample.target_index + 1,
        num_images=len(sample.images),
    )
    return ChatPrompt(TEACHER_SYSTEM, text, images, params)


def judge_prompt(
    sample: GroundingSample,
    answer: str,
    chains: Sequence[str],
    images: Sequence[LazyImage],
    params: dict[str, Any],
) -> ChatPrompt:
    """The request that asks which of ``chains`` (reasoning texts, numbered from 1) is best."""
    listed = "\n\n".join(f"Chain {k}:\n{chain.strip()}" for k, chain in enumerate(chains, start=1))
    text = JUDGE_TEMPLATE.format(
        question=sample.question.strip(),
        answer=answer,
        target=sample.target_index + 1,
        num_images=len(sample.images),
        num_chains=len(chains),
        chains=listed,
    )
    return ChatPrompt(JUDGE_SYSTEM, text, images, params)


def parse_judge_choice(text: str, num_chains: int) -> int | None:
    """0-based index of the chain the judge picked, or ``None`` when the reply names none of them.

    >>> parse_judge_choice("Chain 2 is most specific. <best>2</best>", 3)
    1
    >>> parse_judge_choice("3", 3)
    2
    >>> parse_judge_choice("<best>4</best>", 3) is None
    True
    >>> parse_judge_choice("Chain 1 and 2 are fine", 2) is None
    True
    """
    match = _BEST_RE.search(text)
    if match is None:
        numbers = _INT_RE.findall(text)
        if len(set(numbers)) != 1:  # no tag and an ambiguous bare reply: do not guess
            return None
        value = int(numbers[0])
    else:
        value = int(match.group(1))
    return value - 1 if 1 <= value <= num_chains else None
