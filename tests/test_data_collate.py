"""Collation: chat text, labels, padding sides, boxes, errors, and Lightning's batch transfer."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.data import GroundingCollator, ImageNotFoundError
from univg.model.tokenizer import IMAGE_TOKEN_ID

SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the bounding box in "
    "<answer> </answer> tags."
)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def vision(n_tokens):
    return "<|vision_start|>" + "<|image_pad|>" * n_tokens + "<|vision_end|>"


@pytest.fixture
def samples():
    big, tall = Image.new("RGB", (112, 112), (200, 0, 0)), Image.new("RGB", (56, 112), (0, 200, 0))
    a = GroundingSample(
        "a",
        "multi_view",
        [big, tall],
        1,
        "Locate it in the second image.",
        Box(0.1, 0.2, 0.5, 0.6),
        reasoning="It is green.",
    )
    b = GroundingSample(
        "b", "single", [big], 0, "Find the red square.", Box(0.0, 0.0, 1.0, 1.0), reasoning="All red."
    )
    return [a, b]


def test_train_batch_decodes_to_chat_text(processor, samples):
    batch = GroundingCollator(processor, mode="train")(samples)
    tok = processor.tokenizer
    # 112 x 112 -> 8 x 8 patches -> 16 tokens after the 2 x 2 merge; 56 x 112 (w x h) -> 8 tokens.
    expected_a = (
        SYSTEM
        + "<|im_start|>user\n"
        + vision(16)
        + vision(8)
        + "Locate it in the second image."
        + SUFFIX
        + "<|im_end|>\n<|im_start|>assistant\n"
        + "<think>It is green.</think><answer>(100, 200), (500, 600)</answer><|im_end|>"
    )
    expected_b = (
        SYSTEM
        + "<|im_start|>user\n"
        + vision(16)
        + "Find the red square."
        + SUFFIX
        + "<|im_end|>\n<|im_start|>assistant\n"
        + "<think>All red.</think><answer>(0, 0), (999, 999)</answer><|im_end|>"
    )
    mask = batch["attention_mask"].bool()
    assert tok.decode(batch["input_ids"][0][mask[0]]) == expected_a
    assert tok.decode(batch["input_ids"][1][mask[1]]) == expected_b
    # Tokenising prompt and target apart gives the same ids as tokenising the whole text.
    assert batch["input_ids"][0][mask[0]].tolist() == tok(expected_a, add_special_tokens=False)["input_ids"]
    # Labels: exactly the assistant target and the closing <|im_end|>.
    for row, target in (
        (0, "<think>It is green.</think><answer>(100, 200), (500, 600)</answer><|im_end|>"),
        (1, "<think>All red.</think><answer>(0, 0), (999, 999)</answer><|im_end|>"),
    ):
        labels = batch["labels"][row]
        kept = labels[labels != -100]
        assert tok.decode(kept) == target
        n = len(tok(target, add_special_tokens=False)["input_ids"])
        assert len(kept) == n and kept[-1].item() == tok.convert_tokens_to_ids("<|im_end|>")
        length = int(mask[row].sum())
        assert (labels[length - n : length] == batch["input_ids"][row][length - n : length]).all()
        assert batch["prompt_lengths"][row].item() == length - n


def test_right_padding_and_tensors(processor, samples):
    batch = GroundingCollator(processor, mode="train")(samples)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] > lengths[1] and batch["input_ids"].shape == (2, lengths[0])
    pad = processor.tokenizer.pad_token_id
    assert (batch["input_ids"][1, lengths[1] :] == pad).all() and (
        batch["labels"][1, lengths[1] :] == -100
    ).all()
    assert batch["attention_mask"][1, : lengths[1]].all()
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == IMAGE_TOKEN_ID).long())
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 4], [1, 8, 8]]
    assert batch["pixel_values"].shape == (64 + 32 + 64, 3 * 2 * 14 * 14)
    assert batch["boxes"].dtype == torch.long and batch["boxes"].tolist() == [
        [100, 200, 500, 600],
        [0, 0, 999, 999],
    ]
    assert batch["tasks"] == ["multi_view", "single"] and batch["ids"] == ["a", "b"]
    assert batch["samples"] == samples


def test_generate_batch_is_left_padded_prompt(processor, samples):
    batch = GroundingCollator(processor, mode="generate")(samples)
    assert "labels" not in batch
    mask = batch["attention_mask"]
    lengths = mask.sum(1).tolist()
    assert lengths[0] > lengths[1]
    assert mask[:, -1].all() and not mask[1, 0]  # left padding: every row ends at its last prompt token
    assert (
        batch["input_ids"][1, : batch["input_ids"].shape[1] - lengths[1]] == processor.tokenizer.pad_token_id
    ).all()
    text = processor.tokenizer.decode(batch["input_ids"][1][mask[1].bool()])
    assert text == SYSTEM + "<|im_start|>user\n" + vision(16) + "Find the red square." + SUFFIX + (
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert batch["prompt_lengths"].tolist() == lengths


def test_answer_target_and_sample_template(processor, samples):
    samples[1].prompt_template = "refcoco_single"
    batch = GroundingCollator(processor, mode="train", target_format="answer")(samples)
    tok = processor.tokenizer
    text = tok.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert (
        "This is a single image grounding task with simple reference. Find the red square.<|im_end|>" in text
    )
    assert text.endswith("<|im_start|>assistant\n<answer>(0, 0), (999, 999)</answer><|im_end|>")


def test_max_length_is_an_error_not_a_cut(processor, samples):
    with pytest.raises(
        ValueError, match=r"record -1 \(id a\): \d+ tokens \(24 of them image tokens\) exceed max_length 50"
    ):
        GroundingCollator(processor, mode="train", max_length=50)(samples)


def test_missing_image_fails_at_the_sample(processor, tmp_path):
    Image.new("RGB", (56, 56)).save(tmp_path / "ok.png")
    s = GroundingSample(
        "m", "t", ["ok.png", "gone.png"], 1, "q", Box(0.1, 0.1, 0.2, 0.2), source="f.json", index=7
    )
    collate = GroundingCollator(processor, mode="generate", image_root=tmp_path)
    with pytest.raises(
        ImageNotFoundError, match=rf"f.json:record 7 \(id m\): images\[1\] not found: {tmp_path}/gone.png"
    ):
        collate([s])


def test_batch_survives_lightning_transfer(processor, samples):
    from lightning.fabric.utilities.apply_func import move_data_to_device

    collate = GroundingCollator(processor, mode="generate")
    batch = move_data_to_device(collate(samples), torch.device("cpu"))
    assert batch["samples"][0] is samples[0] and batch["tasks"] == ["multi_view", "single"]
