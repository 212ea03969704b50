"""Bad training/evaluation data, per reader: errors name the file's own field, and inverted-corner
boxes follow an explicit policy (swap and count, skip and count, or error), never a silent keep.

Every record is hand-written in its reader's documented layout; expected boxes are worked out by
hand from the written numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from univg.cli import main
from univg.core.boxes import Box
from univg.core.prompts import REASONING_SUFFIX
from univg.core.sample_types import SampleError
from univg.data import READERS, read_samples

ROOT = Path(__file__).resolve().parent.parent
SIX = [f"v/{i}.jpg" for i in range(6)]


# --- one good record per reader; box(x1, y1, x2, y2) writes it in the reader's own frame -----------
# Coordinates are given as thousandths of the image (0-1000); pixel readers use 100 x 100 images.


def _pix(b):
    return [v / 10 for v in b]


RECORDS: dict[str, tuple[Callable[[str, list[int]], dict[str, Any]], str, str]] = {
    # reader: (record(question, box), the file's question field, the file's box field)
    "refcoco": (
        lambda q, b: {"image": "a.jpg", "problem": q, "solution": _pix(b), "width": 100, "height": 100},
        "problem",
        "solution",
    ),
    "stage2_rl": (
        lambda q, b: {"question": "<image><image>" + q, "answer": b, "images": ["a.jpg", "b.jpg"]},
        "question",
        "answer",
    ),
    "cot_sft": (
        lambda q, b: {
            "images": ["a.jpg", "b.jpg"],
            "messages": [
                {"role": "user", "content": "<image><image>" + q},
                {
                    "role": "assistant",
                    "content": f"<think>t</think><answer>({b[0]}, {b[1]}), ({b[2]}, {b[3]})</answer>",
                },
            ],
        },
        "messages[0].content",
        "messages[1].content",
    ),
    "mgrounding": (
        lambda q, b: {
            "images": ["a.jpg", "b.jpg"],
            "conversations": [
                {"from": "human", "value": "<image><image>" + q},
                {"from": "gpt", "value": f"<|box_start|>({b[0]},{b[1]}),({b[2]},{b[3]})<|box_end|>"},
            ],
        },
        "conversations[0].value",
        "conversations[1].value",
    ),
    "mig_bench": (
        lambda q, b: {
            "task": "region",
            "images": ["a.jpg", "b.jpg"],
            "question": q,
            "answer": [v / 1000 for v in b],
        },
        "question",
        "answer",
    ),
    "lisa": (
        lambda q, b: {
            "image_path": "a.jpg",
            "instruction": q,
            "boxes": [_pix(b)],
            "width": 100,
            "height": 100,
        },
        "instruction",
        "boxes[0]",
    ),
    "llmseg": (
        lambda q, b: {"image": "a.jpg", "question": q, "bbox": _pix(b), "width": 100, "height": 100},
        "question",
        "bbox",
    ),
    "vos": (
        lambda q, b: {
            "image_list": SIX,
            "instruction": q,
            "bbox_list": [_pix(b)] * 6,
            "width": 100,
            "height": 100,
        },
        "instruction",
        "bbox_list[2]",
    ),
}


def test_every_reader_is_covered():
    assert set(RECORDS) == set(READERS)


def write(tmp_path: Path, reader: str, records: list[dict]) -> Path:
    path = tmp_path / f"{reader}.json"
    path.write_text(json.dumps(records))
    return path


GOOD_Q = "Where is it in the second image?" + REASONING_SUFFIX


@pytest.mark.parametrize("reader", sorted(RECORDS))
def test_empty_question_names_the_files_field(reader, tmp_path):
    make, question_field, _ = RECORDS[reader]
    path = write(tmp_path, reader, [make(GOOD_Q, [100, 200, 300, 400]), make("", [100, 200, 300, 400])])
    with pytest.raises(SampleError) as err:
        read_samples(path, reader)
    msg = str(err.value)
    assert msg.startswith(f"{path}:record 1 "), msg
    assert f"field '{question_field}'" in msg, msg
    if question_field != "question":
        assert "'question'" not in msg, msg  # the schema's name is not what the user wrote
    # skipped and reported, with the same wording, when asked to skip
    out = read_samples(path, reader, skip_invalid=True)
    assert len(out) == 1 and [
        (i, f"field '{question_field}'" in why) for i, _, why in out.report.skipped
    ] == [(1, True)]


@pytest.mark.parametrize("reader", sorted(RECORDS))
def test_inverted_corners_policies(reader, tmp_path):
    make, _, box_field = RECORDS[reader]
    # record 1 has x1 > x2 and y1 > y2 as written; record 2 has no area in any corner order
    path = write(
        tmp_path,
        reader,
        [
            make(GOOD_Q, [100, 200, 300, 400]),
            make(GOOD_Q, [600, 700, 200, 100]),
            make(GOOD_Q, [300, 100, 300, 500]),
        ],
    )
    swapped = read_samples(path, reader, degenerate="swap")
    assert [s.index for s in swapped] == [0, 1]
    assert swapped[1].box == Box(0.2, 0.1, 0.6, 0.7) and swapped[1].meta["swapped"]
    assert swapped.report.swapped == [swapped[1].id] and swapped.report.degenerate == []
    assert [(i, "empty box" in why) for i, _, why in swapped.report.skipped] == [(2, True)]
    assert (
        "inverted corners swapped 1" in swapped.report.summary() and "skipped 1" in swapped.report.summary()
    )

    skipped = read_samples(path, reader, degenerate="skip")
    assert [s.index for s in skipped] == [0] and [i for i, _, _ in skipped.report.skipped] == [1, 2]

    with pytest.raises(SampleError) as err:
        read_samples(path, reader, degenerate="error")
    assert str(err.value).startswith(f"{path}:record 1 ") and f"field '{box_field}'" in str(err.value)

    kept = read_samples(path, reader, degenerate="keep")  # evaluation files: kept, flagged, listed
    assert len(kept) == 3 and kept[1].box == Box(0.6, 0.7, 0.2, 0.1) and kept[1].meta["degenerate"]
    assert len(kept.report.degenerate) == 2


def test_unknown_reader_policy_is_an_error(tmp_path):
    make, _, _ = RECORDS["refcoco"]
    path = write(tmp_path, "refcoco", [make(GOOD_Q, [100, 200, 300, 400])])
    with pytest.raises(ValueError, match=r"degenerate must be one of \('keep', 'swap', 'skip', 'error'\)"):
        read_samples(path, "refcoco", degenerate="swapp")


def _parse(args: list[str]) -> tuple[int | None, str]:
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "--print_config"])
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


@pytest.mark.parametrize("value", ["swapp", "keep"])
def test_training_policy_is_typed_at_parse_time(value):
    """A typo, or the evaluation-only ``keep``, is refused by the CLI before anything is read."""
    code, err = _parse(["fit", "--config", "configs/grpo.yaml", f"--data.init_args.degenerate_boxes={value}"])
    assert code not in (0, None) and "degenerate_boxes" in err and value in err


def test_training_module_swaps_by_default_and_evaluation_keeps(tmp_path, capsys):
    from univg.data import MixtureDataModule, Stage2RLDataModule

    make, _, _ = RECORDS["stage2_rl"]
    train = write(
        tmp_path, "stage2_rl", [make(GOOD_Q, [100, 200, 300, 400]), make(GOOD_Q, [600, 700, 200, 100])]
    )
    mig_make, _, _ = RECORDS["mig_bench"]
    val = write(tmp_path, "mig_bench", [mig_make(GOOD_Q, [600, 700, 200, 100])])
    dm = Stage2RLDataModule(train_file=str(train), val_file=str(val), eval_format="mig_bench")
    assert dm.degenerate_boxes == "swap"
    dm.setup("fit")
    assert dm.train_samples[1].box == Box(0.2, 0.1, 0.6, 0.7)
    assert dm.val_samples[0].meta["degenerate"]  # evaluation ground truth is not rewritten here
    out = capsys.readouterr().out
    assert "train: stage2_rl" in out and "inverted corners swapped 1" in out and "degenerate kept 1" in out
    with pytest.raises(SampleError, match=r"stage2_rl.json:record 1 .*field 'answer'"):
        Stage2RLDataModule(train_file=str(train), degenerate_boxes="error").setup("fit")
    skip = MixtureDataModule(
        [{"format": "stage2_rl", "path": str(train), "ratio": 1.0}], degenerate_boxes="skip"
    )
    skip.setup("fit")
    assert [s.index for s in skip.train_samples] == [0]
    with pytest.raises(ValueError, match="degenerate_boxes must be"):
        Stage2RLDataModule(degenerate_boxes="keep")


def test_an_unknown_mig_bench_task_is_refused_by_name_not_made_a_column(tmp_path):
    """A misspelt task is refused by name: it does not become a column of its own, nor of AVG."""
    make, _, _ = RECORDS["mig_bench"]
    good = make(GOOD_Q, [100, 200, 300, 400])
    path = write(tmp_path, "mig_bench", [good, {**good, "task": "refer_grondin"}])
    with pytest.raises(SampleError, match=r"mig_bench.json:record 1 .*field 'task'.*refer_grondin"):
        read_samples(path, "mig_bench")
    kept = read_samples(path, "mig_bench", skip_invalid=True)
    assert len(kept) == 1 and [s[0] for s in kept.report.skipped] == [1]
