"""The backbone table: each preset's config values, and each family's transformers classes,
coordinate frame, FSDP units, tokens, image processor and export names (:mod:`univg.model.backbone`
builds from it; nothing else branches on the backbone).

A preset names a model size of a family: ``tiny`` / ``tiny-qwen2.5-vl`` / ``tiny-qwen3-vl`` for tests
and the demo, the others carry the public checkpoints' config values (a randomly initialised model of
the same shape; :data:`HUB_IDS` names the released weights).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# Config values of the public checkpoints (Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-VL-7B-Instruct).
_VISION_675M = dict(
    depth=32,
    embed_dim=1280,
    mlp_ratio=4,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
_MROPE_128 = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}

PRESETS: dict[str, dict[str, Any]] = {
    # 2 text layers, hidden 64: ~9.9M parameters, almost all of them the tied 151,936-row embedding.
    "tiny": dict(
        text_config=dict(
            vocab_size=151936,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=4),
        tie_word_embeddings=True,
    ),
    "qwen2-vl-2b": dict(
        text_config=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            rope_parameters=dict(_MROPE_128),
        ),
        vision_config=dict(_VISION_675M, hidden_size=1536),
        tie_word_embeddings=True,
    ),
    "qwen2-vl-7b": dict(
        text_config=dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            rope_parameters=dict(_MROPE_128),
        ),
        vision_config=dict(_VISION_675M, hidden_size=3584),
        tie_word_embeddings=False,
    ),
}

# Qwen2.5-VL (Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct): a windowed-attention vision
# tower (SwiGLU MLP, full attention every 8th block) whose merger projects to the text width.
_VISION_QWEN25 = dict(
    depth=32,
    hidden_size=1280,
    hidden_act="silu",
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
PRESETS.update(
    {
        # Qwen2.5-VL's architecture at the size of "tiny" (4 vision blocks: windowed and full attention)
        "tiny-qwen2.5-vl": dict(
            text_config=dict(PRESETS["tiny"]["text_config"]),
            vision_config=dict(
                depth=4,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                window_size=56,
                fullatt_block_indexes=[1, 3],
            ),
            tie_word_embeddings=True,
        ),
        "qwen2.5-vl-3b": dict(
            text_config=dict(
                vocab_size=151936,
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                rms_norm_eps=1e-6,
                max_position_embeddings=128000,
                rope_parameters=dict(_MROPE_128),
            ),
            vision_config=dict(_VISION_QWEN25, out_hidden_size=2048),
            tie_word_embeddings=True,
        ),
        "qwen2.5-vl-7b": dict(
            text_config=dict(
                vocab_size=152064,
                hidden_size=3584,
                intermediate_size=18944,
                num_hidden_layers=28,
                num_attention_heads=28,
                num_key_value_heads=4,
                rms_norm_eps=1e-6,
                max_position_embeddings=128000,
                rope_parameters=dict(_MROPE_128),
            ),
            vision_config=dict(_VISION_QWEN25, out_hidden_size=3584),
            tie_word_embeddings=False,
        ),
    }
)


# Qwen3-VL (Qwen/Qwen3-VL-2B-Instruct, -4B-Instruct, -8B-Instruct): a Qwen3 language model (QK-norm,
# explicit head_dim 128, interleaved M-RoPE) and a patch-16 vision tower with learned position
# embeddings whose intermediate blocks feed the first decoder layers ("DeepStack").
_MROPE_QWEN3 = {
    "rope_type": "default",
    "rope_theta": 5_000_000.0,
    "mrope_section": [24, 20, 20],
    "mrope_interleaved": True,
}
_VISION_QWEN3_SMALL = dict(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    hidden_act="gelu_pytorch_tanh",
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[5, 11, 17],
)


def _qwen3_text(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, Any]:
    return dict(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-6,
        max_position_embeddings=262144,
        rope_parameters=dict(_MROPE_QWEN3),
    )


PRESETS.update(
    {
        # Qwen3-VL's architecture at the size of "tiny": head_dim 16, interleaved M-RoPE sections
        # [4, 2, 2] (its [24, 20, 20] scaled down), 2 vision blocks both feeding DeepStack
        "tiny-qwen3-vl": dict(
            text_config=dict(
                PRESETS["tiny"]["text_config"],
                head_dim=16,
                rope_parameters={**_MROPE_QWEN3, "mrope_section": [4, 2, 2]},
            ),
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                num_position_embeddings=64,
                deepstack_visual_indexes=[0, 1],
            ),
            tie_word_embeddings=True,
        ),
        "qwen3-vl-2b": dict(
            text_config=_qwen3_text(2048, 6144, 28, 16),
            vision_config=dict(_VISION_QWEN3_SMALL, out_hidden_size=2048),
            tie_word_embeddings=True,
        ),
        "qwen3-vl-4b": dict(
            text_config=_qwen3_text(2560, 9728, 36, 32),
            vision_config=dict(_VISION_QWEN3_SMALL, out_hidden_size=2560),
            tie_word_embeddings=True,
        ),
        "qwen3-vl-8b": dict(
            text_config=_qwen3_text(4096, 12288, 36, 32),
            vision_config=dict(
                _VISION_QWEN3_SMALL,
                depth=27,
                hidden_size=1152,
                intermediate_size=4304,
                out_hidden_size=4096,
                deepstack_visual_indexes=[8, 16, 24],
            ),
            tie_word_embeddings=False,
        ),
    }
)


@dataclass(frozen=True)
class Tokens:
    """The special tokens of a family's tokenizer: their text in id order from ``first_id`` on, and
    which of them end a completion, pad a batch and stand for vision inputs."""

    special: tuple[str, ...]
    first_id: int
    #: tokens that end a completion, the chat turn's end first (what an SFT target ends with)
    end: tuple[str, ...]
    pad: str
    image: str
    video: str
    vision_start: str
    vision_end: str

    def id(self, token: str) -> int:
        return self.first_id + self.special.index(token)

    @property
    def end_ids(self) -> tuple[int, ...]:
        return tuple(self.id(t) for t in self.end)

    @property
    def pad_id(self) -> int:
        return self.id(self.pad)


#: Qwen2-VL's 14 special tokens from id 151643 on (its tokenizer_config.json's added tokens).
QWEN_VL_TOKENS = Tokens(
    special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    first_id=151643,
    end=("<|im_end|>", "<|endoftext|>"),
    pad="<|endoftext|>",
    image="<|image_pad|>",
    video="<|video_pad|>",
    vision_start="<|vision_start|>",
    vision_end="<|vision_end|>",
)

_QWEN2_VL_IMAGES = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl:Qwen2VLImageProcessorPil"


@dataclass(frozen=True)
class Family:
    """What a backbone family fixes: transformers classes, the coordinate frame it writes, FSDP units,
    its tokens and image processor, and how an exported folder names it.

    Class names are resolved lazily (``"module:Class"`` or a ``transformers`` top-level name) so that
    importing univg does not import every model.
    """

    name: str
    #: how people write it (model cards)
    title: str
    config_class: str
    model_class: str
    #: ``model_type`` of its ``config.json``
    model_type: str
    #: the :mod:`univg.core.boxes` frame the model reads and writes (docs/design.md section 1)
    frame: str
    #: decoder layers and vision blocks, sharded one by one under FSDP
    layer_classes: tuple[str, ...]
    tokens: Tokens
    #: the image processor (torchvision-free) and its settings when no checkpoint brings its own
    image_processor_class: str
    image_processor: dict[str, Any] = field(hash=False)
    #: what ``AutoProcessor`` builds from an exported folder (its ``processor_class``)
    processor_class: str


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2-vl",
            title="Qwen2-VL",
            config_class="Qwen2VLConfig",
            model_class="Qwen2VLForConditionalGeneration",
            model_type="qwen2_vl",
            frame="qwen2-vl",  # integers in [0, 1000)
            layer_classes=(
                "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VLDecoderLayer",
                "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VLVisionBlock",
            ),
            tokens=QWEN_VL_TOKENS,
            image_processor_class=_QWEN2_VL_IMAGES,
            image_processor={},  # the class defaults: patch 14, merge 2, temporal patch 2, CLIP mean/std
            processor_class="Qwen2VLProcessor",
        ),
        Family(
            name="qwen2.5-vl",
            title="Qwen2.5-VL",
            config_class="Qwen2_5_VLConfig",
            model_class="Qwen2_5_VLForConditionalGeneration",
            model_type="qwen2_5_vl",
            frame="pixels",  # absolute pixels of the resized image
            layer_classes=(
                "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VLDecoderLayer",
                "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VLVisionBlock",
            ),
            tokens=QWEN_VL_TOKENS,
            image_processor_class=_QWEN2_VL_IMAGES,
            image_processor={},
            processor_class="Qwen2_5_VLProcessor",
        ),
        Family(
            name="qwen3-vl",
            title="Qwen3-VL",
            config_class="Qwen3VLConfig",
            model_class="Qwen3VLForConditionalGeneration",
            model_type="qwen3_vl",
            # relative coordinates on a 0..1000 grid of the image (QwenLM/Qwen3-VL README, "Precise
            # Object Grounding": "relative position coordinates"): Qwen2-VL's frame
            frame="qwen2-vl",
            layer_classes=(
                "transformers.models.qwen3_vl.modeling_qwen3_vl:Qwen3VLTextDecoderLayer",
                "transformers.models.qwen3_vl.modeling_qwen3_vl:Qwen3VLVisionBlock",
            ),
            # Qwen3-VL's tokenizer has these 14 at the same ids, plus (as Qwen3's) 12 added tokens from
            # 151657 on (<tool_call> ... <think>, </think>) that the offline tokenizer does not hold, and
            # a chat template without a default system prompt (tests/test_family_qwen3_vl.py)
            tokens=QWEN_VL_TOKENS,
            image_processor_class=_QWEN2_VL_IMAGES,
            # its preprocessor_config.json: patch 16 (merge 2, temporal patch 2), mean and std 0.5
            image_processor={"patch_size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
            processor_class="Qwen3VLProcessor",
        ),
    )
}

#: The tokens every family shares: the offline tokenizer's, whose ids the rollout and data code use.
TOKENS = QWEN_VL_TOKENS
assert all(f.tokens == TOKENS for f in FAMILIES.values()), "other token ids need their own tokenizer"

#: The family of each preset.
PRESET_FAMILIES = {
    "tiny": "qwen2-vl",
    "qwen2-vl-2b": "qwen2-vl",
    "qwen2-vl-7b": "qwen2-vl",
    "tiny-qwen2.5-vl": "qwen2.5-vl",
    "qwen2.5-vl-3b": "qwen2.5-vl",
    "qwen2.5-vl-7b": "qwen2.5-vl",
    "tiny-qwen3-vl": "qwen3-vl",
    "qwen3-vl-2b": "qwen3-vl",
    "qwen3-vl-4b": "qwen3-vl",
    "qwen3-vl-8b": "qwen3-vl",
}

#: Hub ids of the released weights for each preset (what users pass as ``checkpoint``).
HUB_IDS = {
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
}

#: Which coordinate frame each preset reads and writes (from its family).
PRESET_FRAMES = {name: FAMILIES[family].frame for name, family in PRESET_FAMILIES.items()}


def resolve_class(name: str) -> type:
    """``"module:Class"``, or a name exported by ``transformers``."""
    module, _, attr = name.rpartition(":")
    return getattr(importlib.import_module(module or "transformers"), attr)


def family_of_config(config: Any) -> Family:
    """The family whose config class ``config`` is (a checkpoint's or a preset's)."""
    for family in FAMILIES.values():
        if type(config).__name__ == family.config_class.rpartition(":")[2]:
            return family
    raise ValueError(
        f"unsupported backbone config {type(config).__name__} (model_type "
        f"{getattr(config, 'model_type', '?')!r}); univg supports {sorted(FAMILIES)}"
    )


# Literal types so that a YAML typo is rejected at parse time with the valid names listed.
PresetName = Literal[
    "tiny",
    "qwen2-vl-2b",
    "qwen2-vl-7b",
    "tiny-qwen2.5-vl",
    "qwen2.5-vl-3b",
    "qwen2.5-vl-7b",
    "tiny-qwen3-vl",
    "qwen3-vl-2b",
    "qwen3-vl-4b",
    "qwen3-vl-8b",
]
assert set(get_args(PresetName)) == set(PRESETS) == set(PRESET_FAMILIES), "PresetName must list every preset"
