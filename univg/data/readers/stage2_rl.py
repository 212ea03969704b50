"""Stage-2 RL file of the release (``stage2_rl.json``): prompts and boxes for GRPO.

Record: ``question`` (with ``<image>`` placeholders), ``answer`` (4 ints, Qwen2-VL 0-1000 frame, or
a string holding ``(x1, y1), (x2, y2)``), ``images``; optional ``id``, ``task``/``type``.

Every record is read (the release trains on the whole file). Single-image COCO records are told
apart per record (:func:`~univg.data.readers.sources.detect_source`: ``coco/train2014`` in the
path, the release's own test, or a question already in the single-image template), counted in
the report (``source_kind:coco`` / ``source_kind:mgrounding``) and recorded in
``meta["source_kind"]``. They are RefCOCO samples: task ``refcoco`` and prompt template
``refcoco_single`` (no think tags requested; the training reward accepts a bare box for them),
as the release does with ``single_img_with_cot`` off; pass ``single_image_template=None`` to
keep the module's template. The target image is the question's last image mention, else the
last image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from univg.core.boxes import parse_answer
from univg.core.prompts import answer_coords, split_prompt
from univg.core.sample_types import GroundingSample
from univg.data.readers.common import DegeneratePolicy, Record, question_sample, run_reader
from univg.data.readers.mgrounding import question_text
from univg.data.readers.questions import target_from_question
from univg.data.readers.sources import detect_source, note_source
from univg.data.readers.writing import image_paths, write_records
from univg.data.schema import SampleList

#: Schema field -> this format's field (aliases), so errors name what the file calls it.
FILE_FIELDS = {"question": ("question", "problem"), "images": ("images", "image")}


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
    written_template, bare_question = split_prompt(question.strip())
    kind, source_rule = detect_source(images, written_template)
    meta.update(note_source(rec.report, kind, source_rule))
    is_coco_single = kind == "coco"
    if is_coco_single and written_template == "refcoco_single":
        question = bare_question  # the template is applied again at collation
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
    degenerate: DegeneratePolicy = "keep",
    single_image_template: str | None = "refcoco_single",
) -> SampleList:
    """Read the stage-2 RL file: one sample per record, report attached."""
    return run_reader(
        path,
        "stage2_rl",
        lambda rec: _parse(rec, image_root, single_image_template),
        skip_invalid,
        degenerate,
        FILE_FIELDS,
    )


def stage2_record(sample: GroundingSample, image_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """One record of the release's stage-2 layout: bare question after one ``<image>`` per image,
    the box as 4 ints in the 0-1000 frame. In-memory images are saved as PNG under ``image_dir``
    (give a COCO-like sample a folder under ``coco/train2014`` to have it detected as the release
    detects its COCO records)."""
    return {
        "id": sample.id,
        "task": sample.task,
        "question": "<image>" * len(sample.images) + sample.question,
        "answer": list(answer_coords(sample)),
        "images": image_paths(sample, image_dir),
    }


def write_stage2_rl(
    samples: Iterable[GroundingSample], path: str | os.PathLike, image_dir: str | os.PathLike | None = None
) -> int:
    """Write ``samples`` in the stage-2 layout (:func:`stage2_record`); returns the count."""
    return write_records([stage2_record(s, image_dir) for s in samples], path)
