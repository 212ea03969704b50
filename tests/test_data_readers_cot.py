"""The stage-1 CoT reader and writer on small files: messages and LLaMA-Factory conversations, a
malformed record, JSONL lines that are not JSON, round trips, and targets kept as the file's text."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from reader_helpers import check_malformed, write

from univg.core.boxes import Box
from univg.core.prompts import render_prompt
from univg.core.sample_types import GroundingSample, SampleError
from univg.data import (
    load_image,
    read_cot_sft,
    write_cot_sft,
)

# ---- stage-1 CoT --------------------------------------------------------------------------------

SUFFIX = render_prompt("reasoning", "")


def cot_rec(i, **kw):
    rec = {
        "id": f"c{i}",
        "task": "multi_view",
        "images": ["x/1.jpg", "x/2.jpg"],
        "messages": [
            {"role": "user", "content": "<image><image>Find the cup in the second image." + SUFFIX},
            {
                "role": "assistant",
                "content": "<think>The cup is on the table.</think><answer>(120, 340), (560, 780)</answer>",
            },
        ],
    }
    rec.update(kw)
    return rec


def test_cot_sft_messages_and_conversations(tmp_path):
    llama_factory = {
        "images": ["y.jpg"],
        "conversations": [
            {
                "from": "human",
                "value": "<image>This is a single image grounding task with simple reference. the red car",
            },
            {"from": "gpt", "value": "<answer>(0, 0), (500, 999)</answer>"},
        ],
    }
    bad_answer = cot_rec(2)
    bad_answer["messages"][1]["content"] = "<think>no box here</think>"
    path = write(tmp_path / "cot.json", [cot_rec(0, target_index=0), llama_factory, bad_answer])
    out = check_malformed(read_cot_sft, path, 2, "messages[1].content", image_root="/imgs")
    a, b = out
    assert a.question == "Find the cup in the second image." and a.prompt_template == "reasoning"
    assert a.reasoning == "The cup is on the table." and a.box == Box(0.12, 0.34, 0.56, 0.78)
    assert (a.target_index, a.target_rule) == (0, "record:target_index")
    assert a.images == ["/imgs/x/1.jpg", "/imgs/x/2.jpg"]
    assert (b.id, b.task, b.prompt_template, b.reasoning) == ("cot-1", "refcoco", "refcoco_single", None)
    assert (b.question, b.target_index, b.target_rule) == ("the red car", 0, "default:last")


def test_cot_sft_round_trip(tmp_path):
    src = write(tmp_path / "in.json", [cot_rec(0), cot_rec(1, target_index=1)])
    first = read_cot_sft(src)
    out = tmp_path / "out.jsonl"
    assert write_cot_sft(first, out) == 2
    again = read_cot_sft(out)
    for x, y in zip(first, again):
        assert (x.question, x.box, x.reasoning, x.images, x.prompt_template, x.task) == (
            y.question,
            y.box,
            y.reasoning,
            y.images,
            y.prompt_template,
            y.task,
        )
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["messages"] == cot_rec(0)["messages"]  # byte-identical prompt and target
    assert rec["target_index"] == 1 and rec["id"] == "c0"


def test_write_cot_sft_in_memory_images(tmp_path):
    img = Image.new("RGB", (56, 28), (255, 0, 0))
    s = GroundingSample(
        "syn/0", "synthetic", [img], 0, "the red box", Box(0.25, 0.5, 0.75, 1.0), reasoning="red."
    )
    with pytest.raises(SampleError, match="field 'images\\[0\\]'"):
        write_cot_sft([s], tmp_path / "c.json")
    write_cot_sft([s], tmp_path / "c.json", image_dir=tmp_path / "imgs")
    back = read_cot_sft(tmp_path / "c.json")[0]
    assert back.images == [str(tmp_path / "imgs" / "syn_0_0.png")] and back.reasoning == "red."
    assert load_image(back, 0).size == (56, 28)
    assert back.box == Box(0.25, 0.5, 0.75, 0.999)  # the 0-1000 frame tops out at 999


def test_jsonl_line_that_is_not_json(tmp_path):
    path = tmp_path / "cot.jsonl"
    path.write_text(json.dumps(cot_rec(0)) + "\n{not json\n" + json.dumps(cot_rec(2)) + "\n")
    with pytest.raises(SampleError, match=re.escape(f"{path}:record 1 (line 2): not JSON")):
        read_cot_sft(path)
    assert len(read_cot_sft(path, skip_invalid=True)) == 2


# ---- stage-1 targets: the file's assistant text, verbatim -------------------------------------------


def test_cot_sft_targets_are_the_files_text_verbatim(tmp_path):
    from univg.core.prompts import target_text

    spaced = "<think>\n  The cup is left of the plate.\n</think>\n\n<answer>(120, 340), (560, 780)</answer>"
    tight = "<think>a</think><answer>(120,340),(560,780)</answer>"
    bare = " (5, 6), (700, 800)"
    over = "<think>b</think><answer>(120, 340), (1040, 780)</answer>"  # 1040: clamped to the frame
    recs = [cot_rec(0), cot_rec(1), cot_rec(2), cot_rec(3)]
    for rec, text in zip(recs, (spaced, tight, bare, over)):
        rec["messages"][1]["content"] = text
    recs[2]["images"] = ["coco/train2014/COCO_1.jpg"]
    recs[2]["messages"][0]["content"] = "<image>" + render_prompt("refcoco_single", "the cup")
    out = read_cot_sft(write(tmp_path / "cot.json", recs))
    a, b, c, d = out
    assert (a.target, b.target, c.target, d.target) == (spaced, tight, bare, None)
    assert a.reasoning == "\n  The cup is left of the plate.\n" and c.reasoning is None
    assert c.box == Box(0.005, 0.006, 0.7, 0.8) and c.meta["source_kind"] == "coco"
    assert out.report.notes["target_rerendered_box_fixed"] == 1 and d.meta["clamped"]
    # cot / auto: the text as written; answer: coordinates only, re-rendered from the box
    assert (
        target_text(a, "cot") == spaced and target_text(b, "auto") == tight and target_text(c, "auto") == bare
    )
    assert target_text(a, "answer") == "<answer>(120, 340), (560, 780)</answer>"
    assert target_text(c, "answer") == "<answer>(5, 6), (700, 800)</answer>"
    with pytest.raises(SampleError, match="field 'reasoning'"):
        target_text(c, "cot")  # no reasoning in a bare-box record: 'cot' asks for one
    # a box the reader had to fix is rendered from the fixed box (the file's text still has 1040)
    assert target_text(d, "cot") == "<think>b</think><answer>(120, 340), (999, 780)</answer>"
    # another coordinate frame cannot use the 0-1000 text: re-rendered in that frame
    assert target_text(a, "cot", "pixels", (200, 100)) == (
        "<think>\n  The cup is left of the plate.\n</think><answer>(24, 34), (112, 78)</answer>"
    )
    # no target_index in the record: the question's last image mention names the target image
    three = cot_rec(9, images=["x/1.jpg", "x/2.jpg", "x/3.jpg"])
    three["messages"][0]["content"] = (
        "<image><image><image>The cup of the first image, in the 2th image." + SUFFIX
    )
    (e,) = read_cot_sft(write(tmp_path / "three.json", [three]))
    assert (e.target_index, e.target_rule) == (1, "question:ordinal")
    # written back, the same texts
    again = read_cot_sft(tmp_path / "again.json") if write_cot_sft(out, tmp_path / "again.json") else None
    assert [s.target for s in again[:3]] == [spaced, tight, bare]
