"""Stage-2 RL file of the release (``stage2_rl.json``): prompts and boxes for GRPO.

Record: ``question`` (with ``<image>`` placeholders), ``answer`` (4 ints, Qwen2-VL 0-1000 frame, or
a string holding ``(x1, y1), (x2, y2)``), ``images``; optional ``id``, ``task``/``type``.

Single-image COCO records (``coco/train2014`` in the path, the release's test) are RefCOCO samples:
task ``refcoco`` and prompt template ``refcoco_single`` (no think tags requested), as the release
does when ``single_img_with_cot`` is off; pass ``single_image_template=None`` to keep the default.
The target image is the question's last image mention, else the last image.
"""

from __future__ import annotations

import os

from univg.boxes import parse_answer
from univg.data.readers.common import Record, question_sample, run_reader, target_from_question
from univg.data.readers.mgrounding import question_text
from univg.data.schema import GroundingSample, SampleList

COCO_MARKER = "coco/train2014"


def _parse(rec: Record, image_root, single_image_template: str | None) -> list[GroundingSample]:
    images = rec.str_list("images", "image")
    question = question_text(
        rec,
        rec.get("question", "problem", expected="the question text", types=str),
        len(images),
        rec.name_of("question", "problem"),
    )
    raw = rec.get("answer", "solution", expected="4 ints in the 0-1000 frame", types=(list, str))
    field = rec.name_of("answer", "solution")
    if isinstance(raw, str):
        parsed = parse_answer(raw, strict=False)
        if parsed is None:
            raise rec.error(field, "'(x1, y1), (x2, y2)' or [x1, y1, x2, y2] in the 0-1000 frame", raw)
        raw = list(parsed)
    box, meta = rec.box(rec.numbers(raw, field), field, rec.id, frame="qwen2-vl")
    is_coco_single = len(images) == 1 and COCO_MARKER in images[0]
    found = target_from_question(question)
    target, rule = (
        found if found is not None and found[0] < len(images) else (len(images) - 1, "default:last")
    )
    task = rec.get(
        "task",
        "type",
        expected="a task name",
        types=str,
        default="refcoco" if is_coco_single else "multi_image",
    )
    template = single_image_template if is_coco_single else None
    return question_sample(
        rec, images, image_root, task, target, rule, question.strip(), box, meta, prompt_template=template
    )


def read_stage2_rl(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
    single_image_template: str | None = "refcoco_single",
) -> SampleList:
    """Read the stage-2 RL file: one sample per record, report attached."""
    return run_reader(
        path,
        "stage2_rl",
        lambda rec: _parse(rec, image_root, single_image_template),
        skip_invalid,
        degenerate,
    )
