"""Stage-1 CoT-SFT files (sharegpt / LLaMA-Factory), read and written in one agreed format.

A JSON list (or JSONL) of records::

    {"id": str, "task": str, "images": [paths],
     "messages": [{"role": "user", "content": "<image><image>question..."},
                  {"role": "assistant", "content": "<think>...</think><answer>(x1, y1), (x2, y2)</answer>"}],
     "target_index": int}          # optional, default: the last image

LLaMA-Factory's ``conversations: [{"from": "human"|"gpt", "value": ...}]`` is accepted too.
Answer coordinates are in the Qwen2-VL 0-1000 frame. The user text is the *rendered* prompt; the
reader recognises the template (:func:`univg.prompts.split_prompt`) and stores the bare question
with ``prompt_template`` set, so a collated sample reproduces the file's prompt exactly and
``write_cot_sft(read_cot_sft(f))`` rewrites the same records.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from univg.boxes import parse_answer
from univg.data.readers.common import Record, question_sample, run_reader
from univg.data.readers.mgrounding import prompt_and_answer
from univg.data.schema import GroundingSample, SampleList, sample_error
from univg.prompts import render_prompt, split_prompt, split_target, target_text


def _parse(rec: Record, image_root: str | os.PathLike | None) -> list[GroundingSample]:
    images = rec.str_list("images", "image")
    text, answer, answer_field = prompt_and_answer(rec, len(images), "messages", "conversations")
    parts = split_target(answer)
    coords = parse_answer(answer, strict=True) if parts is not None else None
    if parts is None or coords is None:
        raise rec.error(
            answer_field, "'<think>...</think><answer>(x1, y1), (x2, y2)</answer>' (0-1000)", answer
        )
    reasoning, _ = parts
    box, meta = rec.box(coords, answer_field, rec.id, frame="qwen2-vl")
    if isinstance(rec.raw, dict) and rec.raw.get("target_index") is not None:
        target = rec.get("target_index", expected=f"an int in [0, {len(images)})", types=int)
        rule = "record:target_index"
    else:
        target, rule = len(images) - 1, "default:last"
    template, question = split_prompt(text)
    task = rec.get("task", "type", expected="a task name", types=str, default="cot_sft")
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
    )


def read_cot_sft(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
) -> SampleList:
    """Read a stage-1 CoT-SFT file (format above): one sample per record, report attached."""
    return run_reader(path, "cot_sft", lambda rec: _parse(rec, image_root), skip_invalid, degenerate)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def cot_record(
    sample: GroundingSample,
    prompt_template: str = "reasoning",
    target_format: str = "auto",
    image_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One record of the format above. In-memory images are saved as PNG under ``image_dir``."""
    paths = []
    for i, img in enumerate(sample.images):
        if isinstance(img, Image.Image):
            if image_dir is None:
                raise sample_error(
                    sample.where(), f"images[{i}]", "a path (pass image_dir to save in-memory images)"
                )
            out = Path(image_dir) / f"{_safe(sample.id)}_{i}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            img.save(out)
            paths.append(str(out))
        else:
            paths.append(img)
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
    ``<think>`` only for samples that carry reasoning (see :func:`univg.prompts.target_text`).
    """
    records = [cot_record(s, prompt_template, target_format, image_dir) for s in samples]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            json.dump(records, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)  # a half-written file never replaces a good one
    return len(records)
