"""MGrounding-630k (Migician's training set): sharegpt-style multi-image grounding conversations.

Record: ``id``, ``images`` (paths), ``conversations`` = [{from: human, value}, {from: gpt, value}, ...],
``type`` (the task). The human turn holds one ``<image>`` placeholder per image; the answer is one
``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` in the Qwen2-VL 0-1000 frame (referred phrases may be
wrapped in ``<|object_ref_start|>…<|object_ref_end|>``).

One sample per record, from its first human/gpt pair; further turns are counted in the report
(``extra_turns_ignored``). An answer with no box or several boxes is malformed. The target image is
the question's last image mention (as in MIG-Bench), else the last image (``default:last``).
"""

from __future__ import annotations

import os

from univg.core.boxes import parse_box_tokens
from univg.core.sample_types import GroundingSample
from univg.data.readers.common import DegeneratePolicy, Record, question_sample, run_reader
from univg.data.readers.questions import strip_image_placeholders, target_from_question
from univg.data.schema import SampleList

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def conversation_turns(rec: Record, *names: str) -> list[tuple[str, str, str]]:
    """[(role, text, field name)] of a ``conversations`` (from/value) or ``messages`` (role/content) list."""
    turns = rec.get(*names, expected="a list of chat turns", types=list)
    field = rec.name_of(*names)
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise rec.error(f"{field}[{i}]", "an object with from/value or role/content", turn)
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if role not in _ROLES:
            raise rec.error(f"{field}[{i}].from", f"one of {sorted(_ROLES)}", role)
        if not isinstance(text, str):
            raise rec.error(f"{field}[{i}].value", "a string", text)
        key = "value" if "value" in turn else "content"
        out.append((_ROLES[role], text, f"{field}[{i}].{key}"))
    return out


def first_exchange(rec: Record, *names: str) -> tuple[tuple[str, str], tuple[str, str], int]:
    """((user text, field), (assistant text, field), number of turns after them)."""
    turns = [t for t in conversation_turns(rec, *names) if t[0] != "system"]
    field = rec.name_of(*names)
    if len(turns) < 2 or turns[0][0] != "user" or turns[1][0] != "assistant":
        raise rec.error(
            field, "a user (human) turn followed by an assistant (gpt) turn", [t[0] for t in turns]
        )
    return (turns[0][1], turns[0][2]), (turns[1][1], turns[1][2]), len(turns) - 2


def check_placeholders(rec: Record, count: int, n_images: int, field: str) -> None:
    """Placeholders, when present, must match the images one to one."""
    if count and count != n_images:
        raise rec.error(field, f"{n_images} <image> placeholders (one per image)", f"{count}")


def question_text(rec: Record, text: str, n_images: int, field: str) -> str:
    """``text`` without its ``<image>`` placeholders (checked by :func:`check_placeholders`)."""
    question, count = strip_image_placeholders(text)
    check_placeholders(rec, count, n_images, field)
    return question


def prompt_and_answer(rec: Record, n_images: int, *names: str) -> tuple[str, str, str]:
    """(user text without placeholders, assistant text, the assistant turn's field name) of the
    first exchange (:func:`first_exchange`); turns after it are counted as ``extra_turns_ignored``."""
    (user, user_field), (answer, answer_field), extra = first_exchange(rec, *names)
    if extra:
        rec.report.note("extra_turns_ignored", extra)
    rec.fields["question"] = user_field  # a schema check on the question names this turn
    return question_text(rec, user, n_images, user_field), answer, answer_field


def _parse(rec: Record, image_root: str | os.PathLike | None) -> list[GroundingSample]:
    images = rec.str_list("images", "image")
    rec.map_field("images", "images", "image")
    question, answer, answer_field = prompt_and_answer(rec, len(images), "conversations", "messages")
    boxes = parse_box_tokens(answer)
    if len(boxes) != 1:
        raise rec.error(answer_field, "exactly one <|box_start|>(x1,y1),(x2,y2)<|box_end|> (0-1000)", answer)
    box, meta = rec.box(boxes[0], answer_field, rec.id, frame="qwen2-vl")
    found = target_from_question(question)
    target, rule = found if found is not None else (len(images) - 1, "default:last")
    if not 0 <= target < len(images):
        target, rule = len(images) - 1, "default:last"
        rec.report.note("target_mention_out_of_range")
    meta["answer_text"] = answer
    task = rec.get("type", "task", expected="a task name", types=str, default="mgrounding")
    return question_sample(rec, images, image_root, task, target, rule, question.strip(), box, meta)


def read_mgrounding(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: DegeneratePolicy = "keep",
) -> SampleList:
    """Read an MGrounding-630k JSON/JSONL file: one sample per record, report attached."""
    return run_reader(path, "mgrounding", lambda rec: _parse(rec, image_root), skip_invalid, degenerate)
