"""MIG-Bench (Migician): ``MIG_data.json`` and the release's ``revised_MIG_bench.json`` (same keys).

Record: ``task``, ``images`` (paths), ``question``, ``answer`` (normalised xyxy floats),
``additional_info``, ``need_format``. Records have no id; ours is ``<file stem>-<index>``.

Target image rules (docs/design.md section 6), checked on all 4,295 records of ``MIG_data.json``:

| rule | tasks | how |
|---|---|---|
| ``task:region`` | region | the first (source) image; "the 1th region picture" names a region, not the target |
| ``task:diff`` | diff | two aligned images, the second |
| ``additional_info:word`` | group_grounding | "It is in the fourth image." |
| ``question:ordinal`` / ``question:word`` / ``question:image-n`` | the 7 others | the question's **last** image mention ("… in the first image (box) … locate it in the 3th image") |

A record whose target cannot be derived, or is outside its images, is malformed (error, or skipped
with ``skip_invalid``). Box policy: see :mod:`univg.data.readers.common` (the file's 2 answers
above 1.0 are clamped and listed; its 5 "degenerate" boxes, MIG_data-7, -105, -126, -163 and -512,
are inverted corners (x2 < x1 or y2 < y1), not empty boxes: with the readers' default ``keep`` they
stay as written, flagged and listed, and a prediction can hit the box they describe once the
corners are swapped; ``degenerate="swap"`` swaps them at reading).
"""

from __future__ import annotations

import os
import re

from univg.data.readers.common import (
    ORDINAL_WORDS,
    Record,
    question_sample,
    run_reader,
    target_from_question,
)
from univg.data.schema import GroundingSample, SampleList

#: MIG-Bench task -> paper column (Table 1), in the paper's column order.
PAPER_COLUMNS: dict[str, str] = {
    "diff": "Static",
    "view_diff": "Robust",
    "common_object": "Common",
    "object_tracking": "OT",
    "multi_view": "MV",
    "region": "Region",
    "refer_grounding": "Refer",
    "group_grounding": "GG",
    "reasoning": "Reason",
    "correspondence": "Co-Re",
}
MIG_TASKS: tuple[str, ...] = tuple(PAPER_COLUMNS)

_ADDITIONAL_INFO_RE = re.compile(r"\bIt is in the (" + "|".join(ORDINAL_WORDS) + r") image\b", re.IGNORECASE)


def mig_target_index(task: str, question: str, additional_info: str = "") -> tuple[int, str] | None:
    """The 0-based target image index and the rule that gave it, or ``None`` if nothing applies.

    >>> mig_target_index("region", "Please locate the 2th region picture in the source image. ")
    (0, 'task:region')
    >>> mig_target_index("diff", "Compare these two images carefully and give me the coordinates of their difference. ")
    (1, 'task:diff')
    >>> mig_target_index("group_grounding", "Please find ...", "It is in the fourth image. <|box_start|>(530,282),(608,605)<|box_end|>. ")
    (3, 'additional_info:word')
    >>> mig_target_index("multi_view", "... marked with red bounding box in the first image(...). Recognize and locate this object in the 3th image. ")
    (2, 'question:ordinal')
    >>> mig_target_index("refer_grounding", "Find and locate where does the object in image-1 locate in the image-2.")
    (1, 'question:image-n')
    """
    if task == "region":
        return 0, "task:region"
    if task == "diff":
        return 1, "task:diff"
    m = _ADDITIONAL_INFO_RE.search(additional_info or "")
    if m:
        return ORDINAL_WORDS[m.group(1).lower()] - 1, "additional_info:word"
    return target_from_question(question)


def _parse(rec: Record, image_root: str | os.PathLike | None) -> list[GroundingSample]:
    task = rec.get("task", expected="a task name", types=str)
    images = rec.str_list("images")
    question = rec.get("question", expected="the question text", types=str)
    additional_info = rec.get("additional_info", expected="a string", types=str, default="")
    found = mig_target_index(task, question, additional_info)
    if found is None:
        raise rec.error(
            "question",
            "a target image named as 'in the 3th image' / 'the second image' / 'image-2' "
            "(or additional_info 'It is in the fourth image.')",
            question,
        )
    target, rule = found
    if not 0 <= target < len(images):
        field = "additional_info" if rule.startswith("additional_info") else "question"
        raise rec.error(
            field, f"a target image within the record's {len(images)} images", f"image {target + 1}"
        )
    coords = rec.coords("answer", expected="4 normalised floats", types=list)
    box, meta = rec.box(coords, "answer", rec.id, frame="normalised")
    meta.update(
        need_format=rec.get("need_format", expected="a bool", types=bool, default=None),
        additional_info=additional_info,
        paper_column=PAPER_COLUMNS.get(task, task),
    )
    return question_sample(rec, images, image_root, task, target, rule, question, box, meta)


def read_mig_bench(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read ``MIG_data.json`` (or the revised file): one sample per record, report attached.

    ``image_root`` is the folder the ``./MIG-Bench/images/...`` paths are relative to.
    """
    return run_reader(path, "mig_bench", lambda rec: _parse(rec, image_root), skip_invalid, degenerate)
