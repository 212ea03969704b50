"""The backbone table: each preset's config values, and each family's transformers classes,
coordinate frame and FSDP units (:mod:`univg.model.backbone` builds from it; nothing else branches on
the backbone).

A preset names a model size of a family: ``tiny`` / ``tiny-qwen2.5-vl`` for tests and the demo,
the others carry the public checkpoints' config values (a randomly initialised model of the same
shape; :data:`HUB_IDS` names the released weights).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Family:
    """What a backbone family fixes: transformers classes, the coordinate frame it writes, FSDP units.

    Class names are resolved lazily (``"module:Class"`` or a ``transformers`` top-level name) so that
    importing univg does not import every model.
    """

    config_class: str
    model_class: str
    #: the :mod:`univg.core.boxes` frame the model reads and writes (docs/design.md section 1)
    frame: str
    #: decoder layers and vision blocks, sharded one by one under FSDP
    layer_classes: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "qwen2-vl": Family(
        "Qwen2VLConfig",
        "Qwen2VLForConditionalGeneration",
        "qwen2-vl",  # integers in [0, 1000)
        (
            "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VLDecoderLayer",
            "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VLVisionBlock",
        ),
    ),
    "qwen2.5-vl": Family(
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        "pixels",  # absolute pixels of the resized image
        (
            "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VLDecoderLayer",
            "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VLVisionBlock",
        ),
    ),
}

#: The family of each preset.
PRESET_FAMILIES = {
    "tiny": "qwen2-vl",
    "qwen2-vl-2b": "qwen2-vl",
    "qwen2-vl-7b": "qwen2-vl",
    "tiny-qwen2.5-vl": "qwen2.5-vl",
    "qwen2.5-vl-3b": "qwen2.5-vl",
    "qwen2.5-vl-7b": "qwen2.5-vl",
}

#: Hub ids of the released weights for each preset (what users pass as ``checkpoint``).
HUB_IDS = {
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
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
    "tiny", "qwen2-vl-2b", "qwen2-vl-7b", "tiny-qwen2.5-vl", "qwen2.5-vl-3b", "qwen2.5-vl-7b"
]
assert set(get_args(PresetName)) == set(PRESETS) == set(PRESET_FAMILIES), "PresetName must list every preset"
