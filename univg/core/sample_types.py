"""The sample type every layer shares: :class:`GroundingSample` and its error.

It sits below both :mod:`univg.core.prompts` (which renders a sample) and :mod:`univg.data` (which reads
and collates samples), so neither imports the other for it; :mod:`univg.data.schema` validates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from univg.core.boxes import Box
from univg.core.errors import UsageError

#: An image is a path (relative to the data module's image root, or absolute) or an in-memory image.
ImageRef = str | Image.Image


class SampleError(UsageError, ValueError):
    """A record or sample that does not fit the schema.

    The message names the file, the record index, the field and what was expected.
    ``field_name``/``detail`` (set by :func:`sample_error`) let a reader restate a schema check
    with the file's own field name.
    """

    field_name: str | None = None
    detail: str | None = None


@dataclass
class GroundingSample:
    """One grounding question with one answer box.

    ``box`` is normalised xyxy in the *target* image (``images[target_index]``).
    ``reasoning`` is the chain-of-thought text (without tags) for CoT-SFT targets.
    ``ref_boxes`` are reference boxes quoted in the question (normalised, image given by meta).
    ``source``/``index`` say where the record came from (file and record index) for error messages.
    ``target_rule`` records how ``target_index`` was decided (e.g. "question:ordinal").
    ``prompt_template`` overrides the data module's prompt template for this sample (by name).
    ``target`` is the file's own assistant text (stage-1 files), used verbatim as the SFT target
    (:func:`univg.core.prompts.target_text`); ``None`` re-renders the target from ``reasoning`` and ``box``.
    ``meta`` holds reader flags: ``degenerate`` (box kept as written although x2 <= x1 or y2 <= y1),
    ``swapped`` (inverted corners swapped by the ``swap`` policy), ``clamped`` (a coordinate was
    outside [0, 1] and was clamped; ``raw_box`` keeps the original of either fix), ``source_kind``
    (the source a record of a mixed release file was detected as, e.g. ``coco``/``mgrounding``).
    """

    id: str
    task: str
    images: list[ImageRef]
    target_index: int
    question: str
    box: Box
    reasoning: str | None = None
    ref_boxes: list[Box] = field(default_factory=list)
    source: str = ""
    index: int = -1
    target_rule: str = ""
    prompt_template: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    target: str | None = None

    def where(self) -> str:
        """``file:record`` for error messages."""
        return f"{self.source or '<memory>'}:record {self.index} (id {self.id})"


def sample_error(where: str, field_name: str, expected: str, got: Any = None) -> SampleError:
    """``SampleError("<file>:record <i> (id ..): field 'f': expected ..., got ...")``."""
    got_text = "" if got is None else f", got {_short(got)}"
    err = SampleError(f"{where}: field '{field_name}': expected {expected}{got_text}")
    err.field_name, err.detail = field_name, f"expected {expected}{got_text}"
    return err


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
