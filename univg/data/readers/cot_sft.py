"""Stage-1 CoT-SFT files (sharegpt / LLaMA-Factory), read and written in one agreed format.

A JSON list (or JSONL) of records::

    {"id": str, "task": str, "images": [paths],
     "messages": [{"role": "user", "content": "<image><image>question..."},
                  {"role": "assistant", "content": "<think>...</think><answer>(x1, y1), (x2, y2)</answer>"}],
     "target_index": int}          # optional, default: the question's last image mention
                                   # ("... in the 3th image"), else the last image

LLaMA-Factory's ``conversations: [{"from": "human"|"gpt", "value": ...}]`` is accepted too.
Answer coordinates are in the Qwen2-VL 0-1000 frame. The user text is the *rendered* prompt; the
reader recognises the template (:func:`univg.core.prompts.split_prompt`) and stores the bare question
with ``prompt_template`` set, so a collated sample reproduces the file's prompt exactly and
``write_cot_sft(read_cot_sft(f))`` rewrites the same records.

The release's ``stage1_cotsft.json`` mixes two sources in one file, told apart per record
(:func:`~univg.data.readers.sources.detect_source`, counted in the report as ``source_kind:*``):
MGrounding CoT records (``<think>...</think><answer>...</answer>``) and single-image RefCOCO/COCO
records, whose assistant turn may be an ``<answer>`` block without reasoning or the bare box
``(x1, y1), (x2, y2)`` (optionally in ``<|box_start|>...<|box_end|>``). The assistant text is kept
verbatim as the sample's ``target`` (the SFT target), unless the reader had to fix the box (clamp
or corner swap): then the target is re-rendered from the fixed box (counted as
``target_rerendered_box_fixed``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from univg.core.boxes import parse_answer
from univg.core.prompts import render_prompt, split_prompt, split_target, target_text
from univg.core.sample_types import GroundingSample
from univg.data.readers.common import DegeneratePolicy, Record, question_sample, run_reader
from univg.data.readers.mgrounding import prompt_and_answer
from univg.data.readers.questions import target_from_question
from univg.data.readers.sources import detect_source, note_source
from univg.data.readers.writing import image_paths, write_records
from univg.data.schema import SampleList

# A whole assistant turn that is one box and nothing else (RefCOCO records of the stage-1 file).
_BARE_BOX_RE = re.compile(
    r"\s*(?:<\|box_start\|>)?\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)\s*,\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)"
    r"\s*(?:<\|box_end\|>)?\s*"
)


def answer_box(answer: str) -> tuple[str | None, tuple[int, ...]] | None:
    """(reasoning or None, 4 ints) of a stage-1 assistant turn, or ``None`` if it is not one.

    >>> answer_box("<think>left dog</think>\\n<answer>(1, 2), (3, 4)</answer>")
    ('left dog', (1, 2, 3, 4))
    >>> answer_box("(10,20),(30,40)")
    (None, (10, 20, 30, 40))
    >>> answer_box("the dog (10,20),(30,40)") is None
    True
    """
    parts = split_target(answer)
    if parts is not None:
        coords = parse_answer(answer, strict=True)
        return (parts[0], coords) if coords is not None else None
    bare = _BARE_BOX_RE.fullmatch(answer)
    return (None, tuple(int(v) for v in bare.groups())) if bare else None


def _target(rec: Record, question: str, n_images: int) -> tuple[int, str]:
    """The record's ``target_index`` when it has one; else, as the other multi-image readers, the
    question's last image mention ("... in the 3th image"); else the last image."""
    if isinstance(rec.raw, dict) and rec.raw.get("target_index") is not None:
        rec.map_field("target_index", "target_index")
        index = rec.get("target_index", expected=f"an int in [0, {n_images})", types=int)
        return index, "record:target_index"
    mention = target_from_question(question)
    if mention is not None and mention[0] < n_images:
        return mention
    return n_images - 1, "default:last"


def _parse(rec: Record, image_root: str | os.PathLike | None) -> list[GroundingSample]:
    images = rec.str_list("images", "image")
    rec.map_field("images", "images", "image")
    text, answer, answer_field = prompt_and_answer(rec, len(images), "messages", "conversations")
    found = answer_box(answer)
    if found is None:
        raise rec.error(
            answer_field,
            "'<think>...</think><answer>(x1, y1), (x2, y2)</answer>' (0-1000; a single-image record "
            "may also answer '<answer>(x1, y1), (x2, y2)</answer>' or the bare box)",
            answer,
        )
    reasoning, coords = found
    box, meta = rec.box(coords, answer_field, rec.id, frame="qwen2-vl")
    template, question = split_prompt(text)
    target, rule = _target(rec, question, len(images))
    meta.update(
        note_source(rec.report, *detect_source(images, template, has_reasoning=reasoning is not None))
    )
    verbatim: str | None = answer
    if meta.get("clamped") or meta.get("swapped"):
        verbatim = None  # the file's text still holds the box as written: render the fixed one
        rec.report.note("target_rerendered_box_fixed")
    task = rec.get("task", "type", expected="a task name", types=str, default=None)
    if task is None:
        task = "refcoco" if meta["source_kind"] == "coco" else "cot_sft"
    return question_sample(
        rec,
        images,
        image_root,
        task,
        target,
        rule,
        question,
        box,
        meta,
        reasoning=reasoning,
        prompt_template=template,
        target=verbatim,
    )


def read_cot_sft(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: DegeneratePolicy = "keep",
) -> SampleList:
    """Read a stage-1 CoT-SFT file (format above): one sample per record, report attached."""
    return run_reader(path, "cot_sft", lambda rec: _parse(rec, image_root), skip_invalid, degenerate)


def cot_record(
    sample: GroundingSample,
    prompt_template: str = "reasoning",
    target_format: str = "auto",
    image_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One record of the format above. In-memory images are saved as PNG under ``image_dir``."""
    paths = image_paths(sample, image_dir)
    user = "<image>" * len(paths) + render_prompt(sample.prompt_template or prompt_template, sample.question)
    return {
        "id": sample.id,
        "task": sample.task,
        "images": paths,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": target_text(sample, target_format)},
        ],
        "target_index": sample.target_index,
    }


def write_cot_sft(
    samples: Iterable[GroundingSample],
    path: str | os.PathLike,
    prompt_template: str = "reasoning",
    target_format: str = "auto",
    image_dir: str | os.PathLike | None = None,
) -> int:
    """Write ``samples`` in the stage-1 format (JSONL if ``path`` ends in ``.jsonl``). Returns the count.

    ``prompt_template`` applies to samples without their own; ``target_format`` "auto" writes
    ``<think>`` only for samples that carry reasoning (see :func:`univg.core.prompts.target_text`).
    """
    records = [cot_record(s, prompt_template, target_format, image_dir) for s in samples]
    return write_records(records, path)
