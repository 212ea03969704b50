"""Collation: a list of :class:`GroundingSample` -> the tensors Qwen2-VL's forward and generate take.

Train mode (SFT): prompt + assistant target + ``<|im_end|>``, right padded, ``labels`` = -100
everywhere except the target tokens and the closing ``<|im_end|>``.
Generate mode (evaluation, GRPO rollouts): the prompt up to ``<|im_start|>assistant\\n``, left
padded so every row's last token is its prompt's last token.

Images are opened here (lazily, in the data loader's workers), never at start-up.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from univg.core.boxes import Frame, get_frame
from univg.core.prompts import (
    TARGET_FORMATS,
    answer_coords,
    answer_format,
    build_messages,
    sample_template,
    target_text,
)
from univg.core.sample_types import GroundingSample, SampleError
from univg.data.images import load_image
from univg.model.tokenizer import EOS_TOKEN, QwenVLProcessor, load_processor, mm_token_type_ids

IGNORE_INDEX = -100
MODES = ("train", "generate")


class GroundingCollator:
    """``collator(samples) -> batch`` (a picklable callable, usable as a DataLoader ``collate_fn``).

    Batch keys: ``input_ids``/``attention_mask``/``mm_token_type_ids`` ``[B, T]``, ``pixel_values``
    ``[sum patches, C*2*14*14]``, ``image_grid_thw`` ``[n images, 3]`` (all images of the batch in
    order), ``labels`` ``[B, T]`` (train only), ``boxes`` ``[B, 4]`` int64 in the model frame,
    ``prompt_lengths`` ``[B]`` (tokens before the target), ``tasks``/``ids`` (lists of str) and
    ``samples`` (the input samples as a list-like :class:`SampleBatch`, for evaluation and reporting).
    """

    def __init__(
        self,
        processor: QwenVLProcessor | None = None,
        mode: str = "train",
        prompt_template: str = "reasoning",
        target_format: str = "cot",
        image_root: str | os.PathLike | None = None,
        frame: str | Frame = "qwen2-vl",
        max_length: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if target_format not in TARGET_FORMATS:
            raise ValueError(f"target_format must be one of {TARGET_FORMATS}, got {target_format!r}")
        self.processor = processor if processor is not None else load_processor()
        self.mode = mode
        self.prompt_template = prompt_template
        self.target_format = target_format
        self.image_root = image_root
        self.frame = get_frame(frame)
        self.max_length = max_length

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _resized_size(self, grid_thw: torch.Tensor) -> tuple[int, int]:
        """(width, height) in pixels of an image after the processor's resize (for pixel frames)."""
        patch = int(self.processor.image_processor.patch_size)
        return int(grid_thw[2]) * patch, int(grid_thw[1]) * patch

    def __call__(self, samples: list[GroundingSample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        images = [load_image(s, i, self.image_root) for s in samples for i in range(len(s.images))]
        vision = self.processor.process_images(images)
        grid = vision["image_grid_thw"]  # [n_images, 3]
        rows: list[list[int]] = []
        labels: list[list[int]] = []
        prompt_lengths: list[int] = []
        boxes: list[tuple[int, int, int, int]] = []
        sizes: list[tuple[int, int]] = []
        cursor = 0
        for s in samples:
            prompt = self.processor.apply_chat_template(
                build_messages(s, self.prompt_template), add_generation_prompt=True
            )
            first = cursor
            prompt, cursor = self.processor.expand_image_tokens(prompt, grid, cursor)
            if cursor - first != len(s.images):
                raise SampleError(
                    f"{s.where()}: the prompt holds {cursor - first} images, the sample {len(s.images)}"
                )
            size = self._resized_size(grid[first + s.target_index])
            sizes.append(size)
            boxes.append(answer_coords(s, self.frame, size))
            ids = self._encode(prompt)
            prompt_lengths.append(len(ids))
            if self.mode == "train":
                target = self._encode(target_text(s, self.target_format, self.frame, size) + EOS_TOKEN)
                labels.append([IGNORE_INDEX] * len(ids) + target)
                ids = ids + target
            if self.max_length is not None and len(ids) > self.max_length:
                n_image = sum(int(g.prod()) for g in grid[first:cursor]) // self.processor.merge_size**2
                raise SampleError(
                    f"{s.where()}: {len(ids)} tokens ({n_image} of them image tokens) exceed max_length "
                    f"{self.max_length}; image tokens are never cut: raise max_length or lower max_pixels"
                )
            rows.append(ids)
        batch: dict[str, Any] = dict(vision)
        side = "right" if self.mode == "train" else "left"
        batch["input_ids"], batch["attention_mask"] = _pad(rows, self.tokenizer.pad_token_id, side)
        batch["mm_token_type_ids"] = mm_token_type_ids(batch["input_ids"])
        if self.mode == "train":
            batch["labels"], _ = _pad(labels, IGNORE_INDEX, side)
        batch["boxes"] = torch.tensor(boxes, dtype=torch.long)  # [B, 4] model frame
        # (width, height) of each resized target image: what a pixel frame's coordinates count
        batch["frame_sizes"] = sizes
        batch["prompt_lengths"] = torch.tensor(prompt_lengths, dtype=torch.long)  # [B]
        batch["tasks"] = [s.task for s in samples]
        # per sample, from its own template: how the rewards score its answer ("think" or "box")
        batch["answer_formats"] = [answer_format(sample_template(s, self.prompt_template)) for s in samples]
        batch["ids"] = [s.id for s in samples]
        batch["samples"] = SampleBatch(samples)
        return batch


class SampleBatch:
    """The batch's samples, list-like (len, index, iterate, compare to a list) but opaque to
    Lightning's batch transfer: ``apply_to_collection`` recurses into lists and dataclasses and fails
    on the frozen :class:`~univg.core.boxes.Box`, so the samples travel in a type it leaves alone.

    >>> b = SampleBatch(["s0", "s1"])
    >>> len(b), b[1], list(b) == ["s0", "s1"], b == ["s0", "s1"]
    (2, 's1', True, True)
    """

    __slots__ = ("items",)

    def __init__(self, items: list[GroundingSample]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        return self.items[i]

    def __iter__(self) -> Any:
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SampleBatch):
            other = other.items
        return self.items == other

    def __repr__(self) -> str:
        return f"SampleBatch({[s.id if isinstance(s, GroundingSample) else s for s in self.items]})"


def _pad(rows: list[list[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged rows to ``[B, max_len]`` on ``side``; returns (ids, attention mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        else:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask
