"""Which image a question names: ordinal mentions ("in the 3th image", "the second image",
"image-2") and the ``<image>`` placeholders of conversation files."""

from __future__ import annotations

import re

ORDINAL_WORDS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
}
# "in the 3th image" / "the second image" / "image-2" (case-insensitive). "the 1th region picture"
# and "the source image" deliberately do not match.
_MENTION_RE = re.compile(
    r"\b(?:(?P<num>\d+)(?:st|nd|rd|th)|(?P<word>" + "|".join(ORDINAL_WORDS) + r"))\s+image\b"
    r"|\bimage-(?P<dash>\d+)\b",
    re.IGNORECASE,
)
_IMAGE_PLACEHOLDER_RE = re.compile(r"<image>\n?")


def image_mentions(text: str) -> list[tuple[int, str]]:
    """Every image named in ``text`` as (0-based index, rule), in order of appearance.

    >>> image_mentions("the object in the first image ... locate it in the 3th image, not image-2")
    [(0, 'question:word'), (2, 'question:ordinal'), (1, 'question:image-n')]
    >>> image_mentions("Please locate the 1th region picture in the source image.")
    []
    """
    out = []
    for m in _MENTION_RE.finditer(text):
        if m.group("num"):
            out.append((int(m.group("num")) - 1, "question:ordinal"))
        elif m.group("word"):
            out.append((ORDINAL_WORDS[m.group("word").lower()] - 1, "question:word"))
        else:
            out.append((int(m.group("dash")) - 1, "question:image-n"))
    return out


def target_from_question(question: str) -> tuple[int, str] | None:
    """The target image of a question: its **last** image mention (earlier ones name references).

    "These images share one object (marked in the first image). Locate it in the 2th image." -> 1.

    >>> target_from_question("For the box in the first image, locate it in the second image.")
    (1, 'question:word')
    >>> target_from_question("no mention") is None
    True
    """
    found = image_mentions(question)
    return found[-1] if found else None


def strip_image_placeholders(text: str) -> tuple[str, int]:
    """Remove ``<image>`` placeholders (and the newline after each). Returns (text, count).

    >>> strip_image_placeholders("<image>\\n<image>What is here?")
    ('What is here?', 2)
    """
    count = text.count("<image>")
    return _IMAGE_PLACEHOLDER_RE.sub("", text), count
