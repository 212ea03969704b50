"""A rollout batch: prompts, completions and masks, and the model plumbing every rollout path shares.

Prompt batches are LEFT padded, so every prompt ends at the same position P and completions start
at P; completions are laid out ``[prompt0 x G, prompt1 x G, ...]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from univg.model.presets import TOKENS
from univg.model.tokenizer import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_ID, mm_token_type_ids

#: Token ids that end a completion (<|im_end|> and <|endoftext|>), and the padding id.
EOS_IDS: tuple[int, ...] = TOKENS.end_ids
PAD_ID: int = TOKENS.pad_id

#: Keys of a prompt batch that the model's forward takes.
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")

#: Tokens never sampled: a vision placeholder in a completion would not match any image features
#: (transformers' Qwen2-VL forward counts them); TRL suppresses the image token for the same reason.
SUPPRESS_IDS: tuple[int, ...] = (IMAGE_TOKEN_ID, VIDEO_TOKEN_ID)


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch that Qwen2-VL's forward takes."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch and batch[k] is not None}


@dataclass
class Rollout:
    """G completions for each of B prompts, laid out [prompt0 x G, prompt1 x G, ...]."""

    prompt: dict[str, torch.Tensor]  # model inputs of the B prompts; input_ids [B, P] left padded
    completion_ids: torch.Tensor  # [B*G, C], PAD after the end
    completion_mask: torch.Tensor  # [B*G, C], 1 up to and including the first end token
    texts: list[str]  # B*G decoded completions, end token excluded
    truncated: torch.Tensor  # [B*G] bool: no end token within max_new_tokens
    group_size: int
    #: [B*G, C] log-prob of each sampled token under the distribution it was drawn from (after
    #: temperature, top-k, top-p and any other processing; 0 where masked), when asked for
    #: (``generate(..., record_logprobs=True)``): the run-time check that the distribution the loss
    #: scores is the one that was sampled.
    sampler_logp: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return int(self.prompt["input_ids"].shape[0])


def images_per_prompt(input_ids: torch.Tensor) -> list[int]:
    """Number of images in each row (one ``<|vision_start|>`` per image)."""
    return (input_ids == VISION_START_ID).sum(dim=1).tolist()


def repeat_prompts(inputs: Mapping[str, torch.Tensor], group_size: int) -> dict[str, torch.Tensor]:
    """Repeat each prompt ``group_size`` times (rows and their images) -> [B*G, ...]."""
    if group_size == 1:
        return dict(inputs)
    out = {
        k: v.repeat_interleave(group_size, dim=0)
        for k, v in inputs.items()
        if k not in ("pixel_values", "image_grid_thw")
    }
    if "pixel_values" in inputs:
        grid = inputs["image_grid_thw"]  # [n_images, 3]
        patches = grid.prod(dim=1)  # [n_images]
        counts = images_per_prompt(inputs["input_ids"])
        img_starts = torch.cumsum(torch.tensor([0] + counts), 0)
        patch_starts = torch.cumsum(torch.cat([patches.new_zeros(1), patches]), 0)
        pix, grids = [], []
        for b in range(len(counts)):
            i0, i1 = int(img_starts[b]), int(img_starts[b + 1])
            p0, p1 = int(patch_starts[i0]), int(patch_starts[i1])
            for _ in range(group_size):
                pix.append(inputs["pixel_values"][p0:p1])
                grids.append(grid[i0:i1])
        out["pixel_values"] = torch.cat(pix)
        out["image_grid_thw"] = torch.cat(grids)
    return out


def completion_mask(completion_ids: torch.Tensor, eos_ids: tuple[int, ...] = EOS_IDS) -> torch.Tensor:
    """1 up to and including the first end token of each row, 0 after. [N, C] long.

    >>> completion_mask(torch.tensor([[5, EOS_IDS[0], 9, 9], [5, 6, 7, 8]])).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1]]
    """
    is_end = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos_ids:
        is_end |= completion_ids == e
    # number of end tokens strictly before each position
    before = torch.cumsum(is_end.long(), dim=1) - is_end.long()
    return (before == 0).long()


def decode_completions(tokenizer: Any, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Decode each completion up to (not including) its end token, special tokens kept."""
    texts = []
    for ids, m in zip(completion_ids.tolist(), mask.tolist()):
        n = sum(m)
        if n and ids[n - 1] in EOS_IDS:
            n -= 1
        texts.append(tokenizer.decode(ids[:n], skip_special_tokens=False))
    return texts


# --------------------------------------------------------------------------------- model plumbing
def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - every supported torch has it
        return False
    return any(isinstance(m, FSDPModule) for m in (model, _hf_model(model)))


def rope_positions(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2-VL's 3-D (M-RoPE) positions of left-padded prompts: [3, B, P] (0 on padding).

    Text tokens carry the same value on the three axes; the next token after a prompt sits at
    ``positions[:, b, -1] + 1`` (the last prompt token is text).
    """
    ids = inputs["input_ids"]
    types = inputs.get("mm_token_type_ids")
    if types is None:
        types = mm_token_type_ids(ids)
    if "image_grid_thw" not in inputs:
        pos = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return pos[None].expand(3, -1, -1).contiguous()
    pos, _ = _hf_model(model).model.get_rope_index(
        ids,
        mm_token_type_ids=types,
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    return pos


def check_left_padded(inputs: Mapping[str, torch.Tensor]) -> None:
    last = inputs["input_ids"][:, -1]
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise ValueError("rollout: prompts must be LEFT padded (a row's last position is padding)")
    if bool(((last == IMAGE_TOKEN_ID) | (last == VIDEO_TOKEN_ID)).any()):
        raise ValueError("rollout: a prompt ends in a vision token; prompts end with the assistant header")


def finish_rollout(
    ids: torch.Tensor,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    group_size: int,
    lengths: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> Rollout:
    """Mask after the first end token, flag truncation, decode. ``ids`` [N, C].

    ``lengths`` [N] (optional): each row's own length when the rows were padded to C (a row that
    stops short without an end token is truncated and masked after its last token).
    ``sampler_logp`` [N, C] (optional): the sampled tokens' log-probs, kept where the mask is 1.
    """
    mask = completion_mask(ids)
    if lengths is not None:
        mask = mask * (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None])
    ids = ids.masked_fill(mask == 0, PAD_ID)
    if ids.shape[1] == 0:
        truncated = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    else:
        kept = mask.sum(1)  # [N]
        end_tok = ids.gather(1, (kept - 1).clamp(min=0)[:, None]).squeeze(1)  # last kept token
        truncated = (kept == 0) | ~torch.isin(end_tok, torch.tensor(EOS_IDS, device=ids.device))
    texts = decode_completions(tokenizer, ids, mask)
    if sampler_logp is not None:
        sampler_logp = sampler_logp * mask.to(sampler_logp.dtype)
    return Rollout(dict(inputs), ids, mask, texts, truncated, group_size, sampler_logp)
