"""One wrapper over transformers' Qwen-VL models shared by the SFT, pure-RL and GRPO modules.

``BackboneSpec`` is what a YAML names (``model.init_args.backbone``); ``spec.build()`` returns the
model (its family's model class, wrapped by peft when LoRA is on). Presets name model sizes in one
table; each belongs to a *family* (:data:`FAMILIES`: config and model classes, coordinate frame, FSDP
units, tokens, image processor, export names), so that nothing else branches on the backbone.
``tiny`` / ``tiny-qwen2.5-vl`` / ``tiny-qwen3-vl`` are for tests and the demo, the sized
presets carry the public checkpoints' config values (a randomly initialised model of the same
shape), and ``checkpoint`` loads real weights with ``from_pretrained`` (a local path or a hub id).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from univg.model.checkpoints import check_model_folder
from univg.model.presets import (
    FAMILIES,
    PRESET_FAMILIES,
    PRESET_FRAMES,
    PRESETS,
    Family,
    PresetName,
    family_of_config,
    resolve_class,
)
from univg.model.tokenizer import resolve_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Literal types so that a YAML typo is rejected at parse time with the valid names listed.
DtypeName = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["4bit", "8bit"]

# What a YAML/command-line null can turn into on its way through the parser (see BackboneSpec).
_NULL_STRINGS = ("None", "null")


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def preset_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The config of a preset (its family's config class), with nested ``overrides``
    (e.g. ``{"text_config": {...}}``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; choose one of {sorted(PRESETS)}")
    values = _merge(PRESETS[name], overrides or {})
    text = values["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    section = text["rope_parameters"].get("mrope_section")
    if section is not None and 2 * sum(section) != head_dim:
        raise ValueError(
            f"preset {name!r}: mrope_section {section} must sum to head_dim / 2 = {head_dim // 2}"
        )
    return resolve_class(FAMILIES[PRESET_FAMILIES[name]].config_class)(**values)


@dataclass
class LoRASpec:
    """LoRA adapters on the language model (peft). ``target_modules`` are projection names."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class BackboneSpec:
    """What to build: a preset (random init) or a checkpoint, and how to train it.

    Args:
        preset: a key of :data:`PRESETS`; also names the coordinate frame.
        checkpoint: local path or hub id loaded with ``from_pretrained``; None builds the preset
            with random weights (seeded by Lightning's ``seed_everything``).
        overrides: nested config overrides for the preset, e.g. ``{"text_config": {"hidden_size": 128}}``.
        freeze_vision: keep the vision tower (patch embed, blocks, merger) frozen (paper default).
        freeze_embeddings: keep the input token embedding frozen (with an untied head only the
            151,936-row input table; a large saving of optimiser state and time on small models).
        gradient_checkpointing: recompute activations in backward (non-reentrant).
        dtype: "float32", "bfloat16" or "float16" parameter dtype.
        lora: LoRA adapters (peft) on the language model; None trains the full language model.
        quantization: None, "4bit" or "8bit" (bitsandbytes; needs a checkpoint, QLoRA with ``lora``).
        attn_implementation: "sdpa" (default) or "eager"/"flash_attention_2".
    """

    preset: PresetName = "tiny"
    checkpoint: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    freeze_vision: bool = True
    freeze_embeddings: bool = False
    gradient_checkpointing: bool = False
    dtype: DtypeName = "float32"
    lora: LoRASpec | None = None
    quantization: Quantization | None = None
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.checkpoint in _NULL_STRINGS:
            # `--model.init_args.backbone.checkpoint null` arrives here as the string "None":
            # jsonargparse re-parses a nested command-line value of a subclass's init_args from
            # f"--{key}={value}", after the YAML null was already loaded. No checkpoint is meant.
            self.checkpoint = None
        if self.preset not in PRESETS:
            raise ValueError(f"unknown backbone preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {sorted(DTYPES)}")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ValueError(f"quantization must be null, '4bit' or '8bit', got {self.quantization!r}")
        if isinstance(self.lora, dict):
            self.lora = LoRASpec(**self.lora)
        if self.checkpoint is None and self.overrides:
            preset_config(self.preset, self.overrides)  # a bad override fails here, not in the fit

    @property
    def frame(self) -> Any:
        """The coordinate frame the model reads and writes (a :mod:`univg.core.boxes` frame)."""
        from univg.core.boxes import get_frame

        return get_frame(PRESET_FRAMES[self.preset])

    @property
    def family(self) -> Family:
        """The preset's family: it fixes the frame and must match a checkpoint's architecture."""
        return FAMILIES[PRESET_FAMILIES[self.preset]]

    def check_family(self, config: Any) -> None:
        """A checkpoint of another family than the preset's would be scored in the wrong frame."""
        found = family_of_config(config)
        if found != self.family:
            names = sorted(p for p, f in PRESET_FAMILIES.items() if FAMILIES[f] == found)
            raise ValueError(
                f"backbone.checkpoint {self.checkpoint!r} is a {type(config).__name__} model but "
                f"backbone.preset {self.preset!r} is of another family (its frame is {self.family.frame!r}); "
                f"set backbone.preset to one of {names}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def config(self) -> Any:
        return preset_config(self.preset, self.overrides)

    def build(self, device: str | torch.device | None = None) -> nn.Module:
        """The model, ready to train: frozen parts, checkpointing and adapters applied."""
        if self.checkpoint is not None:
            model = load_pretrained(
                self.checkpoint, self.torch_dtype, self.quantization, self.attn_implementation
            )
            self.check_family(model.config)
        else:
            if self.quantization is not None:
                raise ValueError(
                    "quantization needs real weights: set backbone.checkpoint (bitsandbytes quantises on load)"
                )
            model = build_from_config(self.config(), self.torch_dtype, device, self.attn_implementation)
        return self.prepare(model)

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.freeze_vision:
            freeze_vision_tower(model)
        if self.freeze_embeddings:
            language_model(model).embed_tokens.weight.requires_grad_(False)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if self.lora is not None:
            model = apply_lora(model, self.lora, quantized=self.quantization is not None)
        return model


def build_from_config(
    config: Any, dtype: torch.dtype = torch.float32, device: Any = None, attn_implementation: str = "sdpa"
) -> nn.Module:
    """A randomly initialised model of ``config``'s family (``device="meta"`` for sizing)."""
    model_class = resolve_class(family_of_config(config).model_class)
    config._attn_implementation = attn_implementation
    with torch.device(device or "cpu"):
        model = model_class(config)
    return model.to(dtype) if device != "meta" else model.to(dtype=dtype)


def checkpoint_config(checkpoint: str | os.PathLike) -> Any:
    """The config saved with a checkpoint (a local path or hub id) of a supported family; no weights
    are read."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_checkpoint(checkpoint))
    family_of_config(config)  # an unsupported architecture fails here, naming the families
    return config


def load_pretrained(
    checkpoint: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    quantization: str | None = None,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """``from_pretrained`` on a local path or hub id, with optional bitsandbytes quantisation; the
    model class is the checkpoint's family's."""
    path = resolve_checkpoint(checkpoint)
    if os.path.isdir(path):  # a torn or incomplete folder: one line naming the file
        check_model_folder(path, "backbone.checkpoint")
    model_class = resolve_class(family_of_config(checkpoint_config(path)).model_class)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, dtype)
    model = model_class.from_pretrained(path, **kwargs)
    if quantization == "4bit":
        _disable_cpu_avx512bf16_repack(model)
    return model


def quantization_config(kind: str, compute_dtype: torch.dtype = torch.float32) -> Any:
    """bitsandbytes 4-bit (NF4, QLoRA) or 8-bit config; a clear error when bitsandbytes is unusable."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # ImportError or a broken native library
        raise RuntimeError(
            f"{kind} quantisation needs a working bitsandbytes on this platform: {err}"
        ) from err
    from transformers import BitsAndBytesConfig

    # The vision tower and head stay unquantised: its small layers (in_features below the 4-bit block
    # size) fail under no_grad on CPU, and quantising the head hurts the 151,936-way softmax.
    skip = ["model.visual", "visual", "lm_head"]
    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
        )
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be '4bit' or '8bit', got {kind!r}")


def _disable_cpu_avx512bf16_repack(model: nn.Module) -> None:
    # bitsandbytes repacks 4-bit weights during a no_grad forward on AVX512-BF16 CPUs, after which the
    # next training step fails (docs/design.md section 9). Turning the fast path off keeps weights as loaded.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision encoder (patch embed, blocks, merger) of a (possibly peft-wrapped) Qwen2-VL."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.visual


def language_model(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.language_model


def freeze_vision_tower(model: nn.Module) -> None:
    for p in vision_tower(model).parameters():
        p.requires_grad_(False)


def apply_lora(model: nn.Module, spec: LoRASpec, quantized: bool = False) -> nn.Module:
    """peft LoRA on the language model's projections only (the vision tower keeps its own names)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    layer = re.compile(r".*language_model\.layers\.\d+\.")
    available = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if layer.match(n) and not list(m.children())
    }
    unknown = sorted(set(spec.target_modules) - available)
    if unknown:  # peft would skip them silently (e.g. lm_head: its adapters go on decoder layers only)
        raise ValueError(
            f"lora.target_modules {unknown}: no such projection in the language model's decoder layers "
            f"(adapters go there only); choose from {sorted(available)}"
        )
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    names = "|".join(spec.target_modules)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        # a regex: restricts adapters to the decoder layers of the language model
        target_modules=rf".*language_model\.layers\.\d+\..*\.({names})",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, counting tied weights once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def fsdp_layer_classes() -> set[type[nn.Module]]:
    """Module classes that FSDP wraps (shards) one by one: decoder layers and vision blocks of every
    family (a model only contains its own)."""
    return {resolve_class(name) for family in FAMILIES.values() for name in family.layer_classes}


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules to shard individually, in order (each vision block, each decoder layer)."""
    classes = tuple(fsdp_layer_classes())
    return [m for m in model.modules() if isinstance(m, classes)]
