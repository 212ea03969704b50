"""MIG-Bench (Migician): ``MIG_data.json`` and the release's ``revised_MIG_bench.json`` (same keys).

Record: ``task``, ``images`` (paths), ``question``, ``answer`` (xyxy), ``additional_info``,
``need_format``. Records have no id; ours is ``<file stem>-<index>``.

The answer's frame is decided per file by a majority of its records (:func:`answer_frames`):
``MIG_data.json`` stores [0, 1] floats; the release's scorer compares the revised file's values
with the model's 0-1000 integers as they are, so that file is expected in 0-1000. Each record's
answer votes (a coordinate beyond the clamp tolerance of [0, 1]: 0-1000; else [0, 1]; only 0s and
1s: no vote), the majority decides, and the records that disagree are outliers: never re-framed,
each is an error naming the file, record and field (skipped and listed with ``skip_invalid``),
counted in the report (``answer_frame_outliers``) and logged with the first ids. A tie is an
error. The report says which frame was read (``answer_frame_normalised`` / ``answer_frame_0_1000``);
``answer_frame`` forces one.

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

import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from univg.core.sample_types import GroundingSample, SampleError
from univg.data.readers.common import (
    CLAMP_TOLERANCE,
    Record,
    load_records,
    logger,
    question_sample,
    run_reader,
)
from univg.data.readers.questions import ORDINAL_WORDS, target_from_question
from univg.data.schema import SampleList

#: MIG-Bench task name -> paper column (Table 1 order). AVG is the unweighted mean of these 10.
MIG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("diff", "Static"),
    ("view_diff", "Robust"),
    ("common_object", "Common"),
    ("object_tracking", "OT"),
    ("multi_view", "MV"),
    ("region", "Region"),
    ("refer_grounding", "Refer"),
    ("group_grounding", "GG"),
    ("reasoning", "Reason"),
    ("correspondence", "Co-Re"),
)
#: The same as a mapping, and the task names alone, in the paper's column order.
PAPER_COLUMNS: dict[str, str] = dict(MIG_COLUMNS)
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


ANSWER_FRAMES = ("auto", "normalised", "qwen2-vl")


def record_frame(raw: Any) -> str | None:
    """The frame one record's ``answer`` reads in: "qwen2-vl" when a coordinate is beyond the clamp
    tolerance of [0, 1], "normalised" otherwise; ``None`` for no numbers or only 0s and 1s (either
    frame).

    >>> record_frame({"answer": [12, 20, 500, 730]}), record_frame({"answer": [0.1, 0.2, 0.5, 1.04]})
    ('qwen2-vl', 'normalised')
    >>> record_frame({"answer": [0, 0, 1, 1]}) is None, record_frame({"answer": "bad"}) is None
    (True, True)
    """
    box = raw.get("answer") if isinstance(raw, dict) else None
    if isinstance(box, list) and len(box) == 2 and all(isinstance(p, list) for p in box):
        box = [c for p in box for c in p]
    if not isinstance(box, list):
        return None
    nums = [
        float(v) for v in box if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if not nums or all(v in (0.0, 1.0) for v in nums):
        return None
    return "qwen2-vl" if max(nums) > 1 + CLAMP_TOLERANCE else "normalised"


def answer_frames(records: list, path: str | os.PathLike = "") -> tuple[str, dict[int, str]]:
    """(the file's frame, ``{record index: its own frame}`` of the records that disagree).

    The frame most records read in (:func:`record_frame`); one out-of-range record cannot flip it.
    A tie raises :class:`SampleError` naming the file and field.

    >>> answer_frames([{"answer": [0.1, 0.2, 0.5, 0.6]}, {"answer": [120, 200, 500, 600]}, {"answer": [0.3, 0.1, 0.4, 0.9]}])
    ('normalised', {1: 'qwen2-vl'})
    >>> answer_frames([{"answer": [12, 20, 500, 730]}, {"answer": "bad"}])
    ('qwen2-vl', {})
    """
    frames = {i: f for i, raw in enumerate(records) if (f := record_frame(raw)) is not None}
    votes = Counter(frames.values())
    if votes["qwen2-vl"] == votes["normalised"] and votes["normalised"]:
        raise SampleError(
            f"{path}: field 'answer': expected most records in one frame, got {votes['normalised']} in [0, 1] "
            f"and {votes['qwen2-vl']} in 0-1000; pass answer_frame normalised or qwen2-vl"
        )
    frame = "qwen2-vl" if votes["qwen2-vl"] > votes["normalised"] else "normalised"
    return frame, {i: f for i, f in frames.items() if f != frame}


def answer_frame(records: list) -> str:
    """The frame of a file's answers by a majority of its records (:func:`answer_frames`).

    >>> answer_frame([{"answer": [0.1, 0.2, 0.5, 1.04]}, {"answer": "bad"}])
    'normalised'
    """
    return answer_frames(records)[0]


_UNITS = {"normalised": "[0, 1]", "qwen2-vl": "0-1000"}


def _record_id(raw: Any, path: str | os.PathLike, index: int) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return str(rid) if rid not in (None, "") else f"{Path(path).stem}-{index}"


def _outlier_text(path: str | os.PathLike, records: list, frame: str, outliers: dict[int, str]) -> str:
    ids = [_record_id(records[i], path, i) for i in sorted(outliers)]
    shown = ", ".join(ids[:5]) + (f", ... {len(ids) - 5} more" if len(ids) > 5 else "")
    return (
        f"{len(ids)} of {len(records)} answers are not in the file's frame {_UNITS[frame]} "
        f"(answer_frame_outliers: {shown})"
    )


def _parse(
    rec: Record, image_root: str | os.PathLike | None, frame: str, outliers: dict[int, str], summary: str
) -> list[GroundingSample]:
    if rec.index in outliers:
        raise rec.error(
            "answer",
            f"coordinates in the file's frame {_UNITS[frame]}, not {_UNITS[outliers[rec.index]]} ({summary}; "
            "answer_frame forces a frame)",
            rec.raw.get("answer"),
        )
    task = rec.get("task", expected="a task name", types=str)
    if task not in PAPER_COLUMNS:  # a misspelt task would become a column of its own in AVG
        raise rec.error(
            "task", f"one of MIG-Bench's {len(PAPER_COLUMNS)} tasks {sorted(PAPER_COLUMNS)}", task
        )
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
    expected = "4 normalised floats" if frame == "normalised" else "4 numbers in 0-1000"
    coords = rec.coords("answer", expected=expected, types=list)
    box, meta = rec.box(coords, "answer", rec.id, frame=frame)
    meta.update(
        need_format=rec.get("need_format", expected="a bool", types=bool, default=None),
        additional_info=additional_info,
        paper_column=PAPER_COLUMNS[task],
    )
    return question_sample(rec, images, image_root, task, target, rule, question, box, meta)


def read_mig_bench(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
    answer_frame: str = "auto",
) -> SampleList:
    """Read ``MIG_data.json`` (or the revised file): one sample per record, report attached.

    ``image_root`` is the folder the ``./MIG-Bench/images/...`` paths are relative to.
    ``answer_frame``: "auto" (decided by a majority of the file's records, see
    :func:`answer_frames`; the records that disagree are errors, or skipped with ``skip_invalid``,
    and counted), "normalised" or "qwen2-vl" (0-1000); the frame read is counted in the report's
    notes.
    """
    if answer_frame not in ANSWER_FRAMES:
        raise ValueError(f"answer_frame must be one of {ANSWER_FRAMES}, got {answer_frame!r}")
    outliers: dict[int, str] = {}
    summary = ""
    if answer_frame == "auto":
        records = load_records(path)
        frame, outliers = answer_frames(records, path)
        if outliers:
            summary = _outlier_text(path, records, frame, outliers)
            logger.warning("mig_bench %s: %s", os.fspath(path), summary)
    else:
        frame = answer_frame
    out = run_reader(
        path,
        "mig_bench",
        lambda rec: _parse(rec, image_root, frame, outliers, summary),
        skip_invalid,
        degenerate,
    )
    name = "answer_frame_normalised" if frame == "normalised" else "answer_frame_0_1000"
    out.report.note(name, out.report.records)
    if outliers:
        out.report.note("answer_frame_outliers", len(outliers))
    return out
