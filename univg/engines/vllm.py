"""vLLM as GRPO's rollout engine (GPU only), behind the interface of :func:`univg.rollout.generate`.

:meth:`VLLMEngine.generate` returns the same :class:`~univg.rollout.Rollout` as our own decoder
([prompt0 x G, prompt1 x G, ...], PAD after the end, mask up to and including the first end token),
so rewards, advantages and the log-prob passes do not know which engine sampled.
:meth:`VLLMEngine.sync_weights` pushes the policy into vLLM after each optimiser step. Two modes,
as in TRL 1.16's ``GRPOTrainer``:

- ``colocate``: a ``vllm.LLM`` inside the training process, on its GPU (``gpu_memory_utilization``
  of it). vLLM's engine is kept in this process (``distributed_executor_backend="external_launcher"``)
  so the weights are loaded straight into its model with the model's own ``load_weights``.
- ``server``: a separate ``vllm serve`` process reached through TRL's ``VLLMClient`` (start it with
  ``VLLM_SERVER_DEV_MODE=1`` and ``--weight-transfer-config '{"backend": "nccl"}'``; multi-image
  prompts need ``--enable-scale-out`` from vLLM 0.30); the weights are streamed to it over NCCL.

What vLLM is given, and why it sees the prompts our log-prob passes score:

- colocate: the prompt as text, i.e. the left-padded ``input_ids`` without padding, each run of
  ``<|image_pad|>`` collapsed to one placeholder (vLLM expands it again from the image), decoded.
  Our prompts are the tokenisation of one string, so re-tokenising the text gives the same ids.
  Server: the exact token ids, with the server's image features pointed at their image runs.
- the images, rebuilt from ``pixel_values`` (un-patched, un-normalised, uint8 RGB at the size the
  processor resized them to): a multiple of 28 within the processor's pixel bounds, so vLLM's
  processor keeps that size and the completions are conditioned on the same pixels.

vLLM is imported only when an engine is built without an injected ``llm``/``client`` (tests inject
fakes); the CPU path stays ``univg.rollout.generate``.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from univg.rollout import (
    EOS_IDS,
    MODEL_KEYS,
    PAD_ID,
    SUPPRESS_IDS,
    Rollout,
    _check_left_padded,
    finish_rollout,
    images_per_prompt,
)
from univg.tokenizer import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, load_image_processor

MODES = ("colocate", "server")

#: Logit bias that keeps vision placeholders out of completions (a sampled one would not match any
#: image features in the log-prob passes). -100 is the floor of the OpenAI range the server accepts;
#: it leaves such a token a probability below e^-100 relative to any other.
SUPPRESS_BIAS = -100.0

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "the vLLM rollout engine needs vLLM: `pip install vllm` on a GPU machine (it brings its own "
            "CUDA build of torch). Without vLLM (e.g. on CPU) leave the module's `vllm` option unset: "
            "rollouts then use univg.rollout.generate (engine='shared')."
        ) from err
    return vllm


def _vllm_client_class() -> Any:
    _import_vllm()  # TRL's client streams weights with vLLM's NCCL transfer engine
    try:
        from trl.generation.vllm_client import VLLMClient  # TRL >= 1.x
    except ImportError:  # pragma: no cover - older TRL
        from trl.extras.vllm_client import VLLMClient
    return VLLMClient


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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

    Each row is cut after its first end token (as :func:`univg.rollout.generate` does); a row that
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


def _launcher_env() -> None:
    """vLLM's ``external_launcher`` joins torch.distributed from the env:// variables (as TRL sets
    them); a process outside any launcher gets rank 0 of 1 and a free local port."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


# --------------------------------------------------------------------------------- engine
class VLLMEngine:
    """Rollouts sampled by vLLM (colocated or as a server) and the policy's weights pushed into it.

    Args:
        model_name_or_path: the checkpoint vLLM loads (architecture, tokenizer, image processor;
            its weights are replaced at the first :meth:`sync_weights`).
        mode: "colocate" (a ``vllm.LLM`` in this process) or "server" (``vllm serve`` elsewhere).
        gpu_memory_utilization: share of the GPU vLLM may take (colocate); the rest is training's.
        max_model_len: prompt + completion tokens vLLM reserves a sequence for; None = the model's.
        server_host, server_port: where the vLLM server listens (server).
        dtype: vLLM's weight dtype; pushed weights are cast to it.
        llm, client: an existing ``vllm.LLM`` / TRL ``VLLMClient`` (or a test's fake) instead of one
            built here.
        max_images_per_prompt: vLLM's ``limit_mm_per_prompt`` for images (colocate).
        seed: vLLM's sampling seed (colocate); each process adds its rank.
        skip_frozen: after the first (full) sync, push only tensors an optimiser step can change
            (trainable parameters and the LoRA layers' merged weights): frozen ones never change.
        legacy_names: push the original checkpoints' names (see :func:`vllm_weight_name`).
        server_timeout: seconds to wait for the server to come up.
        group_port: port of the NCCL weight-transfer group (server).
        llm_kwargs: extra ``vllm.LLM`` arguments (e.g. ``max_num_batched_tokens``, ``enforce_eager``).
    """

    def __init__(
        self,
        model_name_or_path: str,
        mode: str = "colocate",
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        server_host: str = "127.0.0.1",
        server_port: int = 8000,
        dtype: str = "bfloat16",
        llm: Any | None = None,
        client: Any | None = None,
        *,
        max_images_per_prompt: int = 8,
        seed: int = 0,
        skip_frozen: bool = True,
        legacy_names: bool = False,
        server_timeout: float = 240.0,
        group_port: int = 51216,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.check_kwargs({"mode": mode})
        self.model_name_or_path = model_name_or_path
        self.mode = mode
        self.dtype = dtype
        self.skip_frozen = skip_frozen
        self.legacy_names = legacy_names
        self.llm = llm
        self.client = client
        self.num_syncs = 0
        if mode == "colocate" and llm is None:
            vllm = _import_vllm()
            _launcher_env()
            kwargs: dict[str, Any] = dict(
                model=model_name_or_path,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                limit_mm_per_prompt={"image": max_images_per_prompt},
                seed=seed + _rank(),  # processes must not draw the same completions
                # keeps the engine in this process, so sync_weights reaches vLLM's model (TRL does the same)
                distributed_executor_backend="external_launcher",
            )
            self.llm = vllm.LLM(**{**kwargs, **(llm_kwargs or {})})
        elif mode == "server" and client is None:
            client_cls = _vllm_client_class()
            self.client = client_cls(
                host=server_host,
                server_port=server_port,
                group_port=group_port,
                connection_timeout=server_timeout,
            )
            if _rank() == 0:  # the main process alone pushes weights
                self.client.init_communicator(device=torch.cuda.current_device())
        try:
            from vllm import SamplingParams

            self._sampling_params_cls: Any = SamplingParams
        except ImportError:  # only with an injected fake: it receives the keyword arguments as a dict
            self._sampling_params_cls = dict

    @classmethod
    def check_kwargs(cls, kwargs: Mapping[str, Any]) -> None:
        """Fail early (before vLLM is imported or a GPU touched) on unknown arguments or a bad mode.

        >>> VLLMEngine.check_kwargs({"mode": "server", "gpu_memory_utilisation": 0.3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: vllm engine: unknown argument(s) ['gpu_memory_utilisation']; expected some of [...]
        """
        params = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"vllm engine: unknown argument(s) {unknown}; expected some of {params}")
        if kwargs.get("mode", "colocate") not in MODES:
            raise ValueError(f"vllm engine: unknown mode {kwargs['mode']!r}; choose one of {MODES}")

    # ----------------------------------------------------------------------------- sampling
    def sampling_params(
        self,
        group_size: int,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> dict[str, Any]:
        """vLLM ``SamplingParams`` arguments of one request (one prompt).

        Sampling asks for ``n = group_size`` completions of the prompt (vLLM prefills it once); greedy
        decoding (temperature 0) asks for one, which :meth:`generate` repeats G times. top_k 0 (ours:
        off) is vLLM's -1. The end tokens stop a completion; vision placeholders are suppressed.

        >>> e = VLLMEngine("m", llm=object())
        >>> kw = e.sampling_params(8, 256, True, top_k=0)
        >>> kw["n"], kw["top_k"], kw["stop_token_ids"], kw["max_tokens"]
        (8, -1, [151645, 151643], 256)
        >>> e.sampling_params(8, 256, False)["temperature"], e.sampling_params(8, 256, False)["n"]
        (0.0, 1)
        """
        kw: dict[str, Any] = dict(
            n=group_size if do_sample else 1,
            max_tokens=max_new_tokens,
            stop_token_ids=list(EOS_IDS),
            logit_bias={i: SUPPRESS_BIAS for i in SUPPRESS_IDS},
        )
        if do_sample:
            kw.update(
                temperature=float(temperature), top_p=float(top_p), top_k=int(top_k) if top_k > 0 else -1
            )
        else:
            kw.update(temperature=0.0, top_p=1.0, top_k=-1)
        return kw

    @torch.no_grad()
    def generate(
        self,
        inputs: Mapping[str, torch.Tensor],
        tokenizer: Any,
        group_size: int = 1,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        *,
        images: Sequence[Sequence[Image.Image]] | None = None,
    ) -> Rollout:
        """``group_size`` completions per prompt from vLLM, laid out as :func:`univg.rollout.generate`'s.

        Args:
            inputs: left-padded prompts (``input_ids`` [B, P], ``attention_mask``, their images).
            tokenizer: the tokenizer of the prompts (decodes prompt and completion texts).
            images: the B prompts' PIL images; default rebuilt from ``pixel_values``
                (:func:`prompt_images`), which keeps vLLM on the pixels the policy is scored on.

        Returns:
            a :class:`~univg.rollout.Rollout` of B*G completions, [prompt0 x G, prompt1 x G, ...],
            ``completion_ids`` [B*G, C] with C <= ``max_new_tokens``.
        """
        inputs = {k: v for k, v in inputs.items() if k in MODEL_KEYS}
        _check_left_padded(inputs)
        b = int(inputs["input_ids"].shape[0])
        if max_new_tokens <= 0:  # vLLM needs max_tokens >= 1
            return assemble_rollout([[] for _ in range(b * group_size)], tokenizer, inputs, group_size)
        if images is None:
            images = prompt_images(inputs)
        if len(images) != b:
            raise ValueError(f"vllm engine: {len(images)} image lists for {b} prompts")
        kw = self.sampling_params(group_size, max_new_tokens, do_sample, temperature, top_p, top_k)
        if self.mode == "colocate":
            groups = self._generate_colocate(prompt_texts(inputs, tokenizer), images, kw)
        else:
            groups = self._generate_server(prompt_token_rows(inputs), images, kw)
        if not do_sample:  # one greedy completion per prompt stands for its G identical ones
            groups = [g * group_size for g in groups]
        if [len(g) for g in groups] != [group_size] * b:
            raise RuntimeError(
                f"vllm engine: expected {group_size} completions per prompt, got {[len(g) for g in groups]}"
            )
        return assemble_rollout([c for g in groups for c in g], tokenizer, inputs, group_size)

    def _generate_colocate(
        self, texts: list[str], images: Sequence[Sequence[Image.Image]], kw: dict[str, Any]
    ) -> list[list[list[int]]]:
        requests = []
        for text, imgs in zip(texts, images):
            request: dict[str, Any] = {"prompt": text}
            if imgs:
                request["multi_modal_data"] = {"image": list(imgs)}
            requests.append(request)
        outputs = self.llm.generate(requests, sampling_params=self._sampling_params_cls(**kw), use_tqdm=False)
        return [[completion_tokens(o) for o in out.outputs] for out in outputs]  # in request order

    def _generate_server(
        self, rows: list[list[int]], images: Sequence[Sequence[Image.Image]], kw: dict[str, Any]
    ) -> list[list[list[int]]]:
        # The server generates from token ids or from images, never both: its processed image
        # features are fetched first and paired with our exact ids (TRL 1.16's protocol).
        features = None
        if any(images):
            raw = self.client.image_features([list(i) if i else None for i in images])
            features = [place_image_features(f, r) for f, r in zip(raw, rows)]
        explicit = {k: kw.pop(k) for k in ("n", "temperature", "top_p", "top_k", "max_tokens")}
        out = self.client.generate(
            prompts=rows, features=features, logprobs=None, generation_kwargs=kw, **explicit
        )
        flat = out["completion_ids"]  # [B * n], prompt-major
        n = explicit["n"]
        return [[list(map(int, c)) for c in flat[i * n : (i + 1) * n]] for i in range(len(rows))]

    # ----------------------------------------------------------------------------- weights
    def _colocated_model(self) -> Any:
        try:  # the path TRL 1.16 loads through (vLLM's engine in this process)
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as err:
            raise RuntimeError(
                "vllm engine: cannot reach the colocated model at "
                "llm.llm_engine.model_executor.driver_worker.model_runner.model; build the LLM with "
                "distributed_executor_backend='external_launcher' (as this engine does) so it runs in-process"
            ) from err

    @torch.no_grad()
    def sync_weights(self, model: nn.Module) -> int:
        """Push the policy's current weights into vLLM and drop its prefix cache (stale keys/values).

        The first call pushes every tensor; later ones, with ``skip_frozen``, only those an optimiser
        step can change. A peft model is pushed merged (base + delta, computed without touching the
        model) under the plain model's names, with no ``lora_*`` tensors. Under FSDP2 every rank
        must call it (gathering a shard is a collective). Returns the number of tensors pushed.
        """
        weights = pushed_weights(model, self.skip_frozen and self.num_syncs > 0, self.legacy_names)
        cast = _DTYPES.get(self.dtype)  # None ("auto"): as the model holds them

        def values():
            for w in weights:
                t = w.tensor()
                yield w.name, (t.to(cast) if cast is not None else t)

        if self.mode == "colocate":
            target = self._colocated_model()
            for name, t in values():  # one tensor at a time: no second copy of the model in memory
                target.load_weights([(name, t)])
            self.llm.reset_prefix_cache()
        elif _rank() == 0:
            if hasattr(self.client, "update_named_params"):  # TRL >= 1.16: one streamed update
                meta = [
                    (w.name, str(cast or w.param.dtype).removeprefix("torch."), list(w.param.shape))
                    for w in weights
                ]
                self.client.update_named_params(meta, values())
            else:
                for name, t in values():
                    self.client.update_named_param(name, t)
            self.client.reset_prefix_cache()
        else:
            for _ in values():  # take part in FSDP's gathers; the main process pushes
                pass
        self.num_syncs += 1
        return len(weights)
