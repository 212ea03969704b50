"""Sampling completions and scoring their tokens (log-probs) with a Qwen2-VL policy.

Prompt batches are LEFT padded, so every prompt ends at the same position P and completions start
at P: the log-prob pass then needs the head only on the last C + 1 positions
(``logits_to_keep``), never on the prompt (with a 151,936-way head that is most of the cost).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from univg.tokenizer import VISION_START_ID, mm_token_type_ids

#: Token ids that end a completion: <|im_end|> and <|endoftext|>.
EOS_IDS: tuple[int, ...] = (151645, 151643)
PAD_ID = 151643

#: Keys of a prompt batch that the model's forward takes.
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


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

    >>> completion_mask(torch.tensor([[5, 151645, 9, 9], [5, 6, 7, 8]])).tolist()
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


@torch.no_grad()
def generate(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    tokenizer: Any,
    group_size: int = 1,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> Rollout:
    """Sample (or greedily decode) ``group_size`` completions per prompt with HF ``generate``.

    ``top_k=0`` disables top-k (transformers' default is 50): the paper samples with temperature
    1.0 and top_p 1.0 over the whole vocabulary.
    """
    inputs = {k: v for k, v in inputs.items() if k in MODEL_KEYS}
    was_training = model.training
    model.eval()
    try:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=group_size,
            pad_token_id=PAD_ID,
            eos_token_id=list(EOS_IDS),
            use_cache=True,
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = model.generate(**inputs, **kwargs)  # [B*G, P + C]
    finally:
        model.train(was_training)
    prompt_len = inputs["input_ids"].shape[1]
    ids = out[:, prompt_len:]
    mask = completion_mask(ids)
    ids = ids.masked_fill(mask == 0, PAD_ID)
    if ids.shape[1] == 0:
        truncated = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    else:
        last = mask.sum(1).clamp(min=1) - 1
        end_tok = ids.gather(1, last[:, None]).squeeze(1)
        truncated = ~torch.isin(end_tok, torch.tensor(EOS_IDS, device=ids.device))
    texts = decode_completions(tokenizer, ids, mask)
    return Rollout(dict(inputs), ids, mask, texts, truncated, group_size)


def completion_logprobs(
    model: nn.Module,
    prompt: Mapping[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int = 1,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs of the completions under ``model``. Returns [N, C] (0 where masked).

    ``prompt`` holds the B left-padded prompts; each is repeated ``group_size`` times to line up
    with the N = B*G completions. ``chunk_size`` rows per forward bound the [rows, C, V] logits.
    """
    full = repeat_prompts(model_inputs(prompt), group_size)
    n, c = completion_ids.shape
    chunk = chunk_size or n
    counts = images_per_prompt(full["input_ids"])
    patches = full["image_grid_thw"].prod(1) if "image_grid_thw" in full else None
    out = []
    img0 = 0
    pix0 = 0
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        ids = torch.cat([full["input_ids"][r0:r1], completion_ids[r0:r1]], dim=1)  # [r, P + C]
        att = torch.cat(
            [full["attention_mask"][r0:r1], completion_mask[r0:r1].to(full["attention_mask"].dtype)], 1
        )
        kw: dict[str, Any] = dict(input_ids=ids, attention_mask=att, mm_token_type_ids=mm_token_type_ids(ids))
        n_img = sum(counts[r0:r1])
        if patches is not None and n_img:
            n_pix = int(patches[img0 : img0 + n_img].sum())
            kw["pixel_values"] = full["pixel_values"][pix0 : pix0 + n_pix]
            kw["image_grid_thw"] = full["image_grid_thw"][img0 : img0 + n_img]
            img0 += n_img
            pix0 += n_pix
        logits = model(**kw, use_cache=False, logits_to_keep=c + 1).logits[:, :-1]  # [r, C, V]
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        tok = completion_ids[r0:r1]
        # log p(token) = logit[token] - logsumexp(logits): avoids materialising a second [r, C, V] tensor
        lp = logits.gather(-1, tok[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        out.append(lp)
    return torch.cat(out) * completion_mask.to(torch.float32)
