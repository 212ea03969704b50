"""Backbone presets, freezing, LoRA, gradient checkpointing, quantisation, FSDP units."""

from __future__ import annotations

import pytest
import torch

from univg.model.backbone import (
    BackboneSpec,
    LoRASpec,
    build_from_config,
    count_parameters,
    fsdp_units,
    language_model,
    preset_config,
    vision_tower,
)
from univg.model.presets import HUB_IDS


@pytest.mark.parametrize(
    "preset, total, vision",
    [
        # published sizes: Qwen2-VL-2B 2.2B (tied embedding), 7B 8.3B; vision tower 675M-class
        ("qwen2-vl-2b", 2_208_985_600, 665_271_296),
        ("qwen2-vl-7b", 8_291_375_616, 675_759_104),
        # published sizes of Qwen2.5-VL-3B-Instruct and -7B-Instruct (the hub's safetensors totals)
        ("qwen2.5-vl-3b", 3_754_622_976, None),
        ("qwen2.5-vl-7b", 8_292_166_656, None),
    ],
)
def test_public_presets_parameter_counts_on_meta(preset, total, vision):
    model = build_from_config(preset_config(preset), device="meta")
    assert count_parameters(model) == total
    if vision is not None:
        assert count_parameters(vision_tower(model)) == vision
    assert preset in HUB_IDS


def test_tiny_preset_shape():
    cfg = preset_config("tiny")
    assert cfg.text_config.num_hidden_layers == 2 and cfg.vision_config.depth == 2
    assert cfg.image_token_id == 151655 and cfg.vision_start_token_id == 151652
    model = build_from_config(cfg, device="meta")
    # a few million parameters besides the 151,936 x 64 tied embedding
    assert count_parameters(model) - 151936 * 64 < 5_000_000


def test_overrides_and_mrope_check():
    cfg = preset_config("tiny", {"text_config": {"rope_parameters": {"rope_theta": 3.0}}})
    assert cfg.text_config.rope_parameters["rope_theta"] == 3.0
    assert cfg.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    with pytest.raises(ValueError, match="mrope_section"):
        preset_config("tiny", {"text_config": {"hidden_size": 128}})


def test_unknown_preset_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone preset 'qwen9'"):
        BackboneSpec(preset="qwen9")
    with pytest.raises(ValueError, match="dtype"):
        BackboneSpec(dtype="float8")
    with pytest.raises(ValueError, match="quantization"):
        BackboneSpec(quantization="3bit")
    with pytest.raises(ValueError, match="needs real weights"):
        BackboneSpec(quantization="4bit").build()


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "stage1" / "hf"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        BackboneSpec(checkpoint=str(missing)).build()


def test_freeze_vision_counts():
    frozen = BackboneSpec(freeze_vision=True).build()
    full = BackboneSpec(freeze_vision=False).build()
    n_vision = count_parameters(vision_tower(full))
    assert count_parameters(full, trainable_only=True) == count_parameters(full)
    assert count_parameters(frozen, trainable_only=True) == count_parameters(frozen) - n_vision
    assert not any(p.requires_grad for p in vision_tower(frozen).parameters())


def test_lora_target_that_matches_no_projection_is_an_error():
    """peft skipped unmatched names silently: ``lm_head`` added no adapter and the run trained only
    the others (the trainable count did not change)."""
    with pytest.raises(ValueError, match=r"lora.target_modules \['lm_head'\]: no such projection") as err:
        BackboneSpec(lora=LoRASpec(target_modules=["q_proj", "lm_head"])).build()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in str(err.value)  # the choices, as the model has them


def test_lora_trains_only_adapters_on_the_language_model():
    model = BackboneSpec(lora=LoRASpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"])).build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all("language_model.layers" in n for n in trainable)
    # 2 layers x (q: 64->64, v: 64->32) with r=4: A is [4, in], B is [out, 4]
    expected = 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))
    assert count_parameters(model, trainable_only=True) == expected
    # disabling adapters gives exactly the base model
    ids = torch.randint(0, 1000, (1, 8))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert not torch.allclose(with_adapter, base)
    assert language_model(model) is model.get_base_model().model.language_model


def test_gradient_checkpointing_flag_and_same_gradients():
    torch.manual_seed(0)
    a = BackboneSpec(gradient_checkpointing=False).build()
    b = BackboneSpec(gradient_checkpointing=True).build()
    b.load_state_dict(a.state_dict())
    assert b.is_gradient_checkpointing and not a.is_gradient_checkpointing
    ids = torch.randint(0, 1000, (2, 10))
    for m in (a, b):
        m.train()
        m(input_ids=ids, labels=ids).loss.backward()
    ga = a.model.language_model.layers[0].mlp.up_proj.weight.grad
    gb = b.model.language_model.layers[0].mlp.up_proj.weight.grad
    assert torch.allclose(ga, gb, atol=1e-6)


def test_fsdp_units_are_decoder_layers_and_vision_blocks():
    model = BackboneSpec().build()
    names = [type(m).__name__ for m in fsdp_units(model)]
    assert names.count("Qwen2VLDecoderLayer") == 2 and names.count("Qwen2VLVisionBlock") == 2


def test_qwen25_family_from_the_preset_table(tmp_path):
    spec = BackboneSpec(preset="tiny-qwen2.5-vl")
    assert spec.frame.name == "pixels" and BackboneSpec().frame.name == "qwen2-vl"
    model = spec.build()
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    names = [type(m).__name__ for m in fsdp_units(model)]
    assert names.count("Qwen2_5_VLDecoderLayer") == 2 and names.count("Qwen2_5_VLVisionBlock") == 4
    # a checkpoint is loaded by its own class, and must be of the preset's family
    model.save_pretrained(tmp_path / "q25")
    loaded = BackboneSpec(preset="tiny-qwen2.5-vl", checkpoint=str(tmp_path / "q25")).build()
    assert type(loaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    with pytest.raises(ValueError, match=r"Qwen2_5_VLConfig model but backbone.preset 'tiny'.*qwen2.5-vl-7b"):
        BackboneSpec(preset="tiny", checkpoint=str(tmp_path / "q25")).build()


def test_backbone_facts_live_in_the_family_table_only():
    """No module but :mod:`univg.model.presets` writes a backbone's token ids or transformers class
    names in code (docstrings may show them)."""
    import ast
    import re
    from pathlib import Path

    import univg
    from univg.model.presets import FAMILIES

    ids = {
        i
        for f in FAMILIES.values()
        for i in (
            *f.tokens.end_ids,
            f.tokens.pad_id,
            f.tokens.id(f.tokens.image),
            f.tokens.id(f.tokens.video),
        )
    }
    names = re.compile(r"Qwen\d\w*VL\w*(ForConditionalGeneration|Config|Processor\w*)\b")
    root = Path(univg.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "model" / "presets.py":
            continue
        tree = ast.parse(path.read_text())
        docs = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in docs:
                value = node.value
                if (type(value) is int and value in ids) or (isinstance(value, str) and names.search(value)):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {value!r}")
            elif isinstance(node, (ast.ImportFrom, ast.Import)):
                found += [
                    f"{path.relative_to(root)}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if names.search(a.name)
                ]
    assert not found, found


def test_bf16_dtype():
    model = BackboneSpec(dtype="bfloat16").build()
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.slow
def test_4bit_qlora_loads_and_trains_twice(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    torch.manual_seed(0)
    BackboneSpec().build().save_pretrained(tmp_path)
    model = BackboneSpec(checkpoint=str(tmp_path), quantization="4bit", lora=LoRASpec()).build()
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14  # 7 per layer
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in vision_tower(model).modules())
    ids = torch.randint(0, 1000, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        model(input_ids=ids)  # a no_grad forward must not break the next training step (CPU trap)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_freeze_embeddings_with_an_untied_head():
    model = BackboneSpec(freeze_embeddings=True, overrides={"tie_word_embeddings": False}).build()
    assert not language_model(model).embed_tokens.weight.requires_grad
    assert model.lm_head.weight.requires_grad  # untied: the head still trains
    assert model.lm_head.weight.data_ptr() != language_model(model).embed_tokens.weight.data_ptr()
