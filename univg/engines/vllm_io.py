"""What the vLLM engine exchanges with vLLM: prompts and images in, completions out, weights pushed.

Pure functions of tensors and token ids (no vLLM import), so every one is tested without a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from univg.model.tokenizer import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, load_image_processor
from univg.rl.rollout import EOS_IDS, PAD_ID, SUPPRESS_IDS, Rollout, finish_rollout, images_per_prompt


# --------------------------------------------------------------------------------- prompts
def collapse_image_runs(ids: Sequence[int]) -> list[int]:
    """Each run of ``<|image_pad|>`` as one placeholder, as a processor's input text holds it.

    >>> collapse_image_runs([1, 151655, 151655, 151655, 2, 151655, 3])
    [1, 151655, 2, 151655, 3]
    """
    out: list[int] = []
    for t in ids:
        if t == IMAGE_TOKEN_ID and out and out[-1] == IMAGE_TOKEN_ID:
            continue
        out.append(int(t))
    return out


def image_runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """(offset, length) of each run of ``<|image_pad|>`` in ``ids``: one run per image.

    >>> image_runs([1, 151655, 151655, 2, 151655])
    [(1, 2), (4, 1)]
    """
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(ids):
        if t != IMAGE_TOKEN_ID:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def prompt_token_rows(inputs: Mapping[str, torch.Tensor]) -> list[list[int]]:
    """The B prompts of a left-padded batch without their padding (image tokens expanded): B id lists."""
    ids = inputs["input_ids"].cpu()
    keep = inputs["attention_mask"].cpu().bool()
    return [row[m].tolist() for row, m in zip(ids, keep)]


def prompt_texts(inputs: Mapping[str, torch.Tensor], tokenizer: Any) -> list[str]:
    """The B prompts as text with one ``<|image_pad|>`` per image (what vLLM's processor expands)."""
    rows = prompt_token_rows(inputs)
    if any(VIDEO_TOKEN_ID in r for r in rows):
        raise ValueError("vllm engine: prompts hold <|video_pad|> tokens; only images are supported")
    return [tokenizer.decode(collapse_image_runs(r), skip_special_tokens=False) for r in rows]


def pixels_to_images(
    pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, image_processor: Any = None
) -> list[Image.Image]:
    """Undo Qwen2-VL's image processing: the RGB images at the size the processor resized them to.

    Args:
        pixel_values: [sum of h*w over images, 3 * T * P * P] normalised patches (each still
            image repeated T = 2 times), in the processor's (block, merge, channel, T, P, P) order.
        image_grid_thw: [n_images, 3] grid (t, h, w) in patches of P = 14 pixels; t must be 1.
        image_processor: the processor that made them (its mean, std, patch and merge sizes);
            default Qwen2-VL's.

    Returns:
        n_images PIL RGB images of (w * P) x (h * P) pixels; processing them again gives back
        ``pixel_values`` (uint8 rounding is exact: the normalisation error is far below 0.5/255).
    """
    proc = image_processor if image_processor is not None else load_image_processor()
    p, t, m = int(proc.patch_size), int(proc.temporal_patch_size), int(proc.merge_size)
    mean = np.asarray(proc.image_mean, dtype=np.float64).reshape(3, 1, 1)
    std = np.asarray(proc.image_std, dtype=np.float64).reshape(3, 1, 1)
    scale = 1.0 / float(proc.rescale_factor)  # 255
    pix = pixel_values.detach().float().cpu().numpy().astype(np.float64)
    images, start = [], 0
    for gt, gh, gw in image_grid_thw.tolist():
        if gt != 1:
            raise ValueError(
                f"vllm engine: an image grid has t = {gt}; only still images (t = 1) are supported"
            )
        block = pix[start : start + gh * gw].reshape(gh // m, gw // m, m, m, 3, t, p, p)[..., 0, :, :]
        # (h/m, w/m, mh, mw, C, ph, pw) -> (C, h/m, mh, ph, w/m, mw, pw) -> (C, H, W)
        chw = block.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
        rgb = np.clip(np.rint((chw * std + mean) * scale), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0))))
        start += gh * gw
    if start != pix.shape[0]:
        raise ValueError(
            f"vllm engine: image_grid_thw covers {start} patches, pixel_values holds {pix.shape[0]}"
        )
    return images


def prompt_images(inputs: Mapping[str, torch.Tensor], image_processor: Any = None) -> list[list[Image.Image]]:
    """The images of each of the B prompts (see :func:`pixels_to_images`), in prompt order."""
    counts = images_per_prompt(inputs["input_ids"])
    if "pixel_values" not in inputs:
        return [[] for _ in counts]
    flat = pixels_to_images(inputs["pixel_values"], inputs["image_grid_thw"], image_processor)
    starts = np.cumsum([0] + counts)
    return [flat[int(a) : int(b)] for a, b in zip(starts[:-1], starts[1:])]


def place_image_features(features: dict | None, prompt_ids: Sequence[int]) -> dict | None:
    """Point a server's processed image features at the image runs of ``prompt_ids``.

    The server reports where the images sat in the conversation it processed them in; the prompt we
    generate from holds them elsewhere. Its per-image token counts must equal our runs' lengths
    (otherwise its processor resized the images differently from ours).
    """
    if features is None:
        return None
    runs = image_runs(prompt_ids)
    theirs = [int(p["length"]) for p in features["mm_placeholders"]["image"]]
    if [n for _, n in runs] != theirs:
        raise ValueError(
            f"vllm server: image token counts {theirs} differ from the prompt's {[n for _, n in runs]}: "
            "its image processor resizes differently (check its min/max pixels)"
        )
    image = [{"offset": o, "length": n} for o, n in runs]
    return {**features, "mm_placeholders": {**features["mm_placeholders"], "image": image}}


# --------------------------------------------------------------------------------- completions
def completion_tokens(output: Any) -> list[int]:
    """A vLLM ``CompletionOutput``'s token ids, ending with its end token when it stopped on one
    (vLLM includes a stop token in ``token_ids``; one that is missing is put back from ``stop_reason``)."""
    ids = [int(t) for t in output.token_ids]
    if getattr(output, "finish_reason", None) == "stop" and (not ids or ids[-1] not in EOS_IDS):
        reason = getattr(output, "stop_reason", None)
        ids.append(reason if isinstance(reason, int) and reason in EOS_IDS else EOS_IDS[0])
    return ids


def assemble_rollout(
    completions: Sequence[Sequence[int]], tokenizer: Any, inputs: Mapping[str, torch.Tensor], group_size: int
) -> Rollout:
    """A :class:`Rollout` from N ragged completions (token ids, [prompt0 x G, prompt1 x G, ...]).

    Each row is cut after its first end token (as :func:`univg.rl.rollout.generate` does); a row that
    stops short without one (vLLM's ``max_model_len``) is truncated, masked after its last token.
    Tensors [N, C] with C the longest completion, on the device of ``inputs``.
    """
    device = inputs["input_ids"].device
    width = max((len(c) for c in completions), default=0)
    ids = torch.full((len(completions), width), PAD_ID, dtype=torch.long)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.long)
    roll = finish_rollout(ids.to(device), tokenizer, inputs, group_size, lengths.to(device))
    suppressed = torch.isin(roll.completion_ids, torch.tensor(SUPPRESS_IDS, device=device))
    if bool((suppressed & roll.completion_mask.bool()).any()):
        raise RuntimeError(
            "vllm engine: a completion holds a vision placeholder token despite the logit bias"
        )
    return roll


# --------------------------------------------------------------------------------- weights
def vllm_weight_name(name: str, legacy_names: bool = False) -> str:
    """The checkpoint name vLLM's ``load_weights`` takes for a parameter of our (wrapped) model.

    Wrapper segments are dropped (activation checkpointing, FSDP1, ``torch.compile``, peft's
    ``base_layer`` / ``modules_to_save``). Names stay transformers 5's (``model.language_model.*``,
    ``model.visual.*``, ``lm_head.*``), as TRL 1.16 pushes them; ``legacy_names`` gives the names of
    the original Qwen2-VL checkpoints (``model.*``, ``visual.*``) for older vLLM releases.

    >>> vllm_weight_name("model.language_model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.language_model.layers.0.self_attn.q_proj.weight'
    >>> vllm_weight_name("model.visual.blocks.0._checkpoint_wrapped_module.attn.qkv.weight", legacy_names=True)
    'visual.blocks.0.attn.qkv.weight'
    """
    for wrapper in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.", "base_layer."):
        name = name.replace(wrapper, "")
    name = re.sub(r"modules_to_save\.[^.]+\.", "", name)
    if legacy_names:
        for new, old in (("model.language_model.", "model."), ("model.visual.", "visual.")):
            if name.startswith(new):
                name = old + name[len(new) :]
    return name


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 (DTensor) shard; a collective, so every rank must call it."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _lora_delta(layer: nn.Module) -> torch.Tensor | None:
    """Sum of the active, unmerged LoRA deltas of a peft layer ([out, in] like its base weight)."""
    if layer.disable_adapters:
        return None
    names = [a for a in layer.active_adapters if a in layer.lora_A and a not in layer.merged_adapters]
    if any(layer.use_dora.get(a, False) for a in names):
        raise NotImplementedError("vllm engine: weight sync of DoRA adapters is not supported")
    deltas = [_full(layer.get_delta_weight(a)) for a in names]
    return torch.stack(deltas).sum(0) if deltas else None


@dataclass
class PushedWeight:
    """One tensor vLLM receives: its name, the model's tensor and the LoRA layer merged into it."""

    name: str
    param: torch.Tensor  # the model's parameter (a LoRA layer's base weight)
    lora: nn.Module | None = None  # peft layer whose delta is added to ``param``

    def tensor(self) -> torch.Tensor:
        """The value to push: the parameter, plus the LoRA delta (merged without touching the model)."""
        t = _full(self.param.detach())
        if self.lora is not None:
            delta = _lora_delta(self.lora)
            if delta is not None:
                t = t + delta.to(t.dtype)
        return t


def pushed_weights(
    model: nn.Module, trainable_only: bool = False, legacy_names: bool = False
) -> list[PushedWeight]:
    """What :meth:`VLLMEngine.sync_weights` pushes: every parameter of the transformers model under
    any peft wrapper, once (tied weights once, as vLLM expects), LoRA layers as base + delta and no
    ``lora_*`` tensors; ``trainable_only`` keeps those that an optimiser step can change."""
    from peft.tuners.lora import LoraLayer

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    lora_layers = {name: m for name, m in hf.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for name, p in hf.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue  # adapters are merged into their base weight; a modules_to_save original is stale
        owner, _, leaf = name.rpartition(".")
        lora = lora_layers.get(owner.removesuffix(".base_layer")) if leaf == "weight" else None
        if hasattr(p, "quant_state"):  # a bitsandbytes 4-bit weight: vLLM holds unquantised ones
            raise NotImplementedError(
                f"vllm engine: weight sync of quantised (bitsandbytes) weights ({name})"
            )
        changes = p.requires_grad or (lora is not None and any(q.requires_grad for q in lora.parameters()))
        if trainable_only and not changes:
            continue
        out.append(PushedWeight(vllm_weight_name(name, legacy_names), p, lora))
    return out
