"""The Qwen3-VL family, added through the family table (``univg/model/presets.py``): its public
sizes, coordinate frame, image processor, tokens and M-RoPE positions, and SFT, GRPO and an
evaluation on CPU with the ``tiny-qwen3-vl`` preset.

Sources of the facts checked here (public, found offline; none of these files is downloaded):

- Config values: the ``config.json`` of Qwen/Qwen3-VL-2B-Instruct, -4B-Instruct and -8B-Instruct
  (text 2048/6144/28 layers/16 heads, 2560/9728/36/32, 4096/12288/36/32; 8 KV heads, head_dim 128,
  rope_theta 5e6, interleaved mrope_section [24, 20, 20]; vision depth 24 / hidden 1024 / DeepStack
  [5, 11, 17] for 2B and 4B, depth 27 / hidden 1152 / [8, 16, 24] for 8B; patch 16; embeddings
  tied for 2B and 4B, not for 8B), as vendored in public code that loads those checkpoints.
- Parameter counts: the hub's safetensors totals. 8B: ``"safetensors": {"parameters": {"BF16":
  8767123696}, "total": 8767123696}`` (huggingface.co/api/models/Qwen/Qwen3-VL-8B-Instruct, revision
  0c351dd, quoted in a public audit); 2B: 2,127,532,032 (public code asserting
  ``meta["safetensors"]["total"] == 2127532032`` for Qwen/Qwen3-VL-2B-Instruct); 4B: 4,437,815,808
  (a public run's ``total_parameters`` of Qwen3-VL-4B-Instruct; "4.44 billion parameters",
  codersera.com's Qwen3-VL-4B guide). Counted once per tied weight.
- Frame: QwenLM/Qwen3-VL README.md (cookbook table, 2D grounding: "Using relative position
  coordinates"); deepwiki.com/QwenLM/Qwen3-VL section 5.2: "Qwen3-VL outputs coordinates in a
  normalized 0-1000 scale rather than absolute pixel values". Qwen2-VL's frame.
- Image processor: Qwen3-VL's ``preprocessor_config.json``: ``Qwen2VLImageProcessorFast``, patch 16,
  merge 2, temporal patch 2, mean and std 0.5 (``processor_class: Qwen3VLProcessor``).

Tokenizer: the offline one (Qwen2-VL's) is used, and it is not Qwen3-VL's. Compared with the Qwen3
text models' tokenizer files (Qwen3-4B's tokenizer.json and tokenizer_config.json, quoted in public
docs; Qwen3-VL's own files were not available offline, so that they equal Qwen3's is assumed): the
14 special tokens sit at the same ids 151643-151656 (the four the Qwen3-VL config names are checked
below) and the pre-tokenisation regex is the same; the BPE merges were not compared. What differs:
12 more added tokens, not special, at
151657-151668 (``<tool_call>``, ``</tool_call>``, ``<|fim_prefix|>``, ``<|fim_middle|>``,
``<|fim_suffix|>``, ``<|fim_pad|>``, ``<|repo_name|>``, ``<|file_sep|>``, ``<tool_response>``,
``</tool_response>``, ``<think>``, ``</think>``), so text holding them (the answers' ``<think>``) is
several BPE pieces here and one token there; and a chat template that adds no default system prompt
where Qwen2-VL's adds "You are a helpful assistant." (Qwen3-VL-Instruct's exact template: not
checked). A checkpoint's own tokenizer is loaded whenever ``backbone.checkpoint`` is set.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from univg.core.boxes import Box, get_frame
from univg.data import SyntheticDataModule
from univg.model.backbone import (
    BackboneSpec,
    LoRASpec,
    build_from_config,
    count_parameters,
    fsdp_units,
    preset_config,
    vision_tower,
)
from univg.model.presets import HUB_IDS, TOKENS
from univg.model.tokenizer import load_processor
from univg.modules import GRPOModule, SFTModule
from univg.rl.rollout.batch import rope_positions

PRESET = "tiny-qwen3-vl"


@pytest.mark.parametrize(
    "preset, total, vision",
    [
        ("qwen3-vl-2b", 2_127_532_032, 406_957_056),
        ("qwen3-vl-4b", 4_437_815_808, 415_347_712),
        ("qwen3-vl-8b", 8_767_123_696, 576_388_336),
    ],
)
def test_public_sizes_parameter_counts_on_meta(preset, total, vision):
    model = build_from_config(preset_config(preset), device="meta")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert count_parameters(model) == total
    assert count_parameters(vision_tower(model)) == vision
    assert HUB_IDS[preset] == f"Qwen/Qwen3-VL-{preset.rsplit('-', 1)[1].upper()}-Instruct"


def test_family_facts_come_from_the_table(tiny_qwen3):
    spec = BackboneSpec(preset=PRESET)
    family = spec.family
    assert (family.name, family.model_type, family.processor_class) == (
        "qwen3-vl",
        "qwen3_vl",
        "Qwen3VLProcessor",
    )
    # relative coordinates on a 0..1000 grid, the image's size not needed
    assert spec.frame is get_frame("qwen2-vl")
    assert spec.frame.to_model(Box(0.25, 0.5, 0.75, 1.0)) == (250, 500, 750, 999)
    assert spec.frame.from_model((250, 500, 750, 1000)) == Box(0.25, 0.5, 0.75, 1.0)
    # the token ids the model is built with are the offline tokenizer's
    config = tiny_qwen3.config
    assert (config.image_token_id, config.video_token_id) == (
        TOKENS.id(TOKENS.image),
        TOKENS.id(TOKENS.video),
    )
    assert (config.vision_start_token_id, config.vision_end_token_id) == (
        TOKENS.id(TOKENS.vision_start),
        TOKENS.id(TOKENS.vision_end),
    )
    # FSDP shards each decoder layer and vision block of the family
    names = [type(m).__name__ for m in fsdp_units(tiny_qwen3)]
    assert names.count("Qwen3VLTextDecoderLayer") == 2 and names.count("Qwen3VLVisionBlock") == 2


def test_lora_goes_on_the_language_model_only():
    model = BackboneSpec(preset=PRESET, lora=LoRASpec(r=4)).build()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trained) == 2 * 2 * 2  # q_proj and v_proj of 2 layers, A and B each
    assert all("lora_" in n and ".language_model.layers." in n for n in trained)


def test_image_processor_is_the_family_s(qwen3_processor):
    image_processor = qwen3_processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size) == (
        16,
        2,
        2,
    )
    assert list(image_processor.image_mean) == [0.5, 0.5, 0.5] == list(image_processor.image_std)
    out = qwen3_processor.process_images([Image.new("RGB", (56, 56))])
    # 56 x 56 is resized to 64 x 64 (multiples of patch x merge = 32): a 4 x 4 grid of 16-pixel patches
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert out["pixel_values"].shape == (16, 3 * 2 * 16 * 16)


def test_the_command_line_links_the_family_to_the_data():
    """``python -m univg fit --config configs/debug.yaml --model.init_args.backbone.preset
    tiny-qwen3-vl`` gives the data the family's processor and frame."""
    from univg.cli import main

    config = str(Path(__file__).resolve().parent.parent / "configs" / "debug.yaml")
    cli = main(["--config", config, "--model.init_args.backbone.preset", PRESET], run=False)
    assert (cli.datamodule.backbone_family, cli.datamodule.frame) == ("qwen3-vl", "qwen2-vl")
    assert cli.datamodule.processor.image_processor.patch_size == 16


def _prompt_batch(processor) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths and image sizes, left padded."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (96, 48), "blue")]
    return processor([text, text.replace("Where", "Now where")], images=images, padding_side="left")


def test_rope_positions_are_the_models_own(tiny_qwen3, qwen3_processor):
    """Qwen3-VL's ``get_rope_index`` (interleaved M-RoPE, vision tokens grouped by ``mm_token_type_ids``)
    serves ``rope_positions`` unchanged: the positions give the logits of the model's own forward, and
    the next token after a prompt sits at ``positions[:, b, -1] + 1``."""
    batch = _prompt_batch(qwen3_processor)
    assert bool((batch["attention_mask"][:, 0] == 0).any())  # one row is padded
    pos = rope_positions(tiny_qwen3, batch)
    assert pos.shape == (3,) + tuple(batch["input_ids"].shape)
    with torch.no_grad():
        own = tiny_qwen3(**batch).logits
        tiny_qwen3.model.rope_deltas = None
        given = tiny_qwen3(**batch, position_ids=pos).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(own[mask], given[mask], atol=1e-5)
    _, deltas = tiny_qwen3.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    next_position = batch["attention_mask"].sum(1) + deltas.squeeze(1)
    assert torch.equal(pos[:, :, -1] + 1, next_position.expand(3, -1))


def _data(**kw) -> SyntheticDataModule:
    spec = BackboneSpec(preset=PRESET)
    return SyntheticDataModule(
        tasks=["single"], image_size=56, frame=spec.frame.name, backbone_family=spec.family.name, **kw
    )


def _trainer(root: Path, max_steps: int, **kw) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.mark.slow
def test_sft_fit_then_evaluation(tmp_path):
    """CoT-SFT steps lower the loss on one batch; a test pass generates and scores every sample."""
    L.seed_everything(0)
    module = SFTModule(backbone=BackboneSpec(preset=PRESET), lr=3e-3, max_new_tokens=4, warmup_ratio=0.0)
    data = _data(num_train=2, num_val=0, num_test=3, batch_size=2, eval_batch_size=3)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(tmp_path, 4, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(module, datamodule=data)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    assert module.backbone.family.name == "qwen3-vl"
    assert type(module.model).__name__ == "Qwen3VLForConditionalGeneration"
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert module.last_results["test"]["metrics"]
    assert all(math.isfinite(v) for v in results.values()), results
    assert any(k.startswith("test/") for k in results)
    assert (tmp_path / "predictions_test.jsonl").is_file()


@pytest.mark.slow
def test_grpo_fit_updates_the_policy(tmp_path):
    """GRPO steps (G 4, 4 new tokens, a KL reference) run and move the trainable weights.

    A toy reward (share of ASCII letters) stands in for IoU, which is 0 for every completion of a
    random model (no box): no advantage, no gradient."""
    from univg.rl.rewards import REWARDS, register_reward

    if "toy_ascii_share" not in REWARDS:

        @register_reward("toy_ascii_share")
        def toy_ascii_share(completions, **kwargs):
            return [sum(c.isascii() and c.isalpha() for c in t) / max(1, len(t)) for t in completions]

    L.seed_everything(0)
    module = GRPOModule(
        backbone=BackboneSpec(preset=PRESET),
        lr=1e-2,
        warmup_ratio=0.0,
        schedule="constant",
        group_size=4,
        max_completion_length=4,
        beta=0.04,
        rewards={"toy_ascii_share": 1.0},
        prompts_per_step=2,
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    logs: list[dict[str, float]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            logs.append(dict(pl_module.last_step_logs))

    data = _data(num_train=4, num_val=0, train_mode="generate", batch_size=2, shuffle=False)
    _trainer(tmp_path, 2, limit_val_batches=0, callbacks=[Record()]).fit(module, datamodule=data)
    assert len(logs) == 2
    assert any(log["reward/total_std"] > 0 for log in logs), logs
    assert all(math.isfinite(v) for log in logs for v in log.values() if isinstance(v, float))
    moved = [
        n for n, p in module.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert moved


@pytest.fixture(scope="module")
def tiny_qwen3():
    torch.manual_seed(0)
    return BackboneSpec(preset=PRESET).build().eval()


@pytest.fixture(scope="module")
def qwen3_processor():
    return load_processor(family=BackboneSpec(preset=PRESET).family)
