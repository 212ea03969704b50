"""Export: a run's checkpoint (full, LoRA, FSDP-sharded) becomes a folder plain transformers loads,
with the same logits as the project's model on a fixed two-image prompt; the Hub push is mocked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from univg.data.readers.mig_bench import MIG_TASKS
from univg.evaluation.tables import write_run_results

ROOT = Path(__file__).resolve().parents[1]


def debug_fit(root: Path, *extra: str) -> tuple[Path, Path]:
    """One optimiser step of configs/debug.yaml through the CLI: (checkpoint, run directory)."""
    from univg.cli import main

    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/debug.yaml"),
            f"--trainer.logger.init_args.save_dir={root}",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.num_train=4",
            *extra,
        ]
    )
    run = root / "debug" / "version_0"
    (ckpt,) = run.glob("checkpoints/*.ckpt")
    return ckpt, run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    ckpt, run = debug_fit(tmp_path_factory.mktemp("full"))
    # an evaluation's results beside the run: the model card shows them in the paper's layout
    accs = {t: 0.05 * (i + 1) for i, t in enumerate(MIG_TASKS)}
    result = {"run": "debug", "benchmark": "mig_bench", "stage": "test", "skipped": {}}
    result["metrics"] = {"count": 10.0, **{f"acc@0.5/{t}": a for t, a in accs.items()}}
    write_run_results(result, run / "mig_bench")
    return ckpt, run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    return debug_fit(
        tmp_path_factory.mktemp("lora"),
        "--model.init_args.backbone.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}",
    )


def project_model(ckpt: Path, run: Path) -> torch.nn.Module:
    """The model as the suite itself loads a checkpoint (init_checkpoint), LoRA adapters active."""
    from univg.model.run_config import backbone_of, read_config
    from univg.modules import SFTModule

    spec = backbone_of(read_config(run / "config.yaml"), run / "config.yaml")
    module = SFTModule(backbone=spec, init_checkpoint=str(ckpt))
    module.configure_model()
    return module.model.eval()


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)) for _ in range(2)]


MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "image"},
            {"type": "text", "text": "Find the object of the first image in the second image."},
        ],
    }
]


def project_logits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    from univg.model.tokenizer import load_processor

    processor = load_processor()
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    batch = processor(text, images())
    with torch.no_grad():
        return batch["input_ids"], model(**batch).logits


def transformers_logits(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Only transformers: its model class, tokenizer and image processor read from the folder."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    pixels = image_processor(images=images(), return_tensors="pt")
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    # what Qwen2VLProcessor does: one <|image_pad|> per merged patch of each image
    parts = text.split("<|image_pad|>")
    merge = image_processor.merge_size**2
    counts = [int(g.prod()) // merge for g in pixels["image_grid_thw"]]
    text = parts[0] + "".join("<|image_pad|>" * n + p for n, p in zip(counts, parts[1:]))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    mm = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        out = model(
            input_ids=ids,
            pixel_values=pixels["pixel_values"],
            image_grid_thw=pixels["image_grid_thw"],
            mm_token_type_ids=mm,
        )
    return ids, out.logits


def assert_same_logits(folder: Path, model: torch.nn.Module, atol: float = 0.0) -> None:
    ids_a, ours = project_logits(model)
    ids_b, theirs = transformers_logits(folder)
    assert torch.equal(ids_a, ids_b)
    assert ours.shape == theirs.shape and ours.shape[1] > 20
    torch.testing.assert_close(theirs, ours, atol=atol, rtol=0 if atol == 0 else 1e-5)


def test_full_checkpoint_exports_and_loads_with_the_same_logits(full_run, tmp_path):
    from univg.export import main

    ckpt, run = full_run
    out = tmp_path / "hf"
    assert main([str(ckpt), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert_same_logits(out, project_model(ckpt, run))
    # the decoding is written out in full, and transformers reads it back as written
    from transformers import GenerationConfig

    written = json.loads((out / "generation_config.json").read_text())
    assert written["do_sample"] is False and written["max_new_tokens"] == 256
    assert written["repetition_penalty"] == 1.0 and written["num_beams"] == 1
    gen = GenerationConfig.from_pretrained(out)
    assert (gen.do_sample, gen.max_new_tokens, gen.eos_token_id) == (False, 256, [151645, 151643])
    # the chat template travels with the tokenizer; the processor is marked as Qwen2-VL's
    from transformers import AutoTokenizer

    assert "<|vision_start|><|image_pad|><|vision_end|>" in AutoTokenizer.from_pretrained(out).chat_template
    assert json.loads((out / "preprocessor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    # the model card: the run's config and its MIG-Bench row beside the paper's Table 1
    card = (out / "README.md").read_text()
    assert "class_path: univg.modules.SFTModule" in card and "preset: tiny" in card
    assert "| debug | 5.00 | 10.00 |" in card and "| UniVG-R1 (paper) | 71.97 |" in card
    assert "pipeline_tag: image-text-to-text" in card


@pytest.mark.slow
def test_lora_checkpoint_merges_and_loads_with_the_same_logits(lora_run, tmp_path):
    from univg.export import export_checkpoint, load_state_dict

    ckpt, run = lora_run
    assert any("lora_A" in k for k in load_state_dict(ckpt))
    with pytest.raises(ValueError, match="--merge-lora"):  # a preset's base exists only in the checkpoint
        export_checkpoint(ckpt, tmp_path / "adapter")
    out = export_checkpoint(ckpt, tmp_path / "hf", merge_lora=True)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("lora" in k or "base_layer" in k for k in f.keys())
    model = project_model(ckpt, run)  # peft model, adapters active (merging rounds differently)
    assert hasattr(model, "peft_config")
    assert_same_logits(out, model, atol=1e-4)


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_exports_like_the_single_file(full_run, tmp_path):
    import torch.distributed.checkpoint as dcp

    from univg.export import export_checkpoint

    ckpt, run = full_run
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    # the layout FSDP2 under Lightning's ModelParallelStrategy writes: DCP shards + meta.pt
    sharded_run = tmp_path / "run"
    folder = sharded_run / "checkpoints" / "last.ckpt"
    dcp.save({"state_dict": state["state_dict"]}, checkpoint_id=folder)
    torch.save({"epoch": state["epoch"], "global_step": state["global_step"]}, folder / "meta.pt")
    shutil.copy(run / "config.yaml", sharded_run / "config.yaml")
    assert folder.is_dir() and (folder / ".metadata").is_file()
    out = export_checkpoint(folder, tmp_path / "hf")
    assert_same_logits(out, project_model(ckpt, run))


def test_push_to_hub_uploads_the_folder_through_a_mocked_api(full_run, tmp_path, monkeypatch):
    import huggingface_hub

    from univg.export import main

    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            pass

        def create_repo(self, **kwargs):  # noqa: ANN003
            calls.append(("create_repo", kwargs))
            return f"https://huggingface.co/{kwargs['repo_id']}"

        def upload_folder(self, **kwargs):  # noqa: ANN003
            files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", {**kwargs, "files": files}))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt, _ = full_run
    out = tmp_path / "hf"
    assert main([str(ckpt), "--out", str(out), "--push-to-hub", "me/univg-debug", "--private"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == {
        "repo_id": "me/univg-debug",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    upload = calls[1][1]
    assert upload["repo_id"] == "me/univg-debug" and Path(upload["folder_path"]) == out
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert name in upload["files"], name


def test_bad_inputs_name_the_problem(full_run, tmp_path, capsys):
    from univg.export import main

    ckpt, _ = full_run
    assert main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    lone = tmp_path / "lone.ckpt"
    shutil.copy(ckpt, lone)  # no config.yaml beside or above it
    assert main([str(lone), "--out", str(tmp_path / "o")]) == 2
    assert "pass the run's config with --config" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert (
        main([str(tmp_path / "folder"), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "x")]) == 2
    )
    assert "x does not exist" in capsys.readouterr().err


def test_a_non_empty_out_is_refused_unless_overwrite_which_replaces_it_whole(full_run, tmp_path, capsys):
    """An export into a used folder must not mix old and new files: a stale adapter_config.json would
    make a full export load as an adapter."""
    from univg.export import main

    ckpt, _ = full_run
    out = tmp_path / "o"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    assert main([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "adapter_config.json").read_text() == "{}"  # nothing lost
    assert main([str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no partial or old folder left


@pytest.mark.slow
def test_lora_run_on_a_base_checkpoint_exports_as_a_peft_adapter(tmp_path_factory, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    from univg.export import export_checkpoint
    from univg.model.backbone import BackboneSpec
    from univg.model.tokenizer import load_processor

    base = tmp_path / "base"  # a local "Hub" checkpoint the LoRA run starts from
    torch.manual_seed(0)
    BackboneSpec().build().save_pretrained(base)
    load_processor().save_pretrained(base)
    ckpt, run = debug_fit(
        tmp_path_factory.mktemp("lora_base"),
        f"--model.init_args.backbone.checkpoint={base}",
        "--model.init_args.backbone.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}",
    )
    out = export_checkpoint(ckpt, tmp_path / "adapter")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base) and (out / "adapter_model.safetensors").is_file()
    assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()
    model = PeftModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(base), out).eval()
    _, theirs = project_logits(model)
    _, ours = project_logits(project_model(ckpt, run))
    torch.testing.assert_close(theirs, ours, atol=0, rtol=0)


def test_without_torchvision_the_export_says_in_one_line_what_autoprocessor_needs(
    full_run, tmp_path, capsys, monkeypatch
):
    import univg.export as export

    ckpt, _ = full_run
    monkeypatch.setattr(export, "torchvision_available", lambda: False)
    assert export.main([str(ckpt), "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"wrote {tmp_path / 'a'}"
    (note,) = [line for line in captured.err.splitlines() if line.startswith("univg export:")]
    assert note.startswith(
        f"univg export: note: AutoProcessor.from_pretrained({tmp_path / 'a'}) needs torchvision"
    )
    assert "pip install torchvision" in note and "AutoTokenizer and AutoImageProcessor" in note
    # what the note and the model card offer instead loads in plain transformers without torchvision
    from transformers import AutoImageProcessor, AutoTokenizer

    card = (tmp_path / "a" / "README.md").read_text()
    assert 'AutoImageProcessor.from_pretrained("THIS_FOLDER")' in card and "pip install torchvision" in card
    assert AutoTokenizer.from_pretrained(tmp_path / "a").chat_template
    assert AutoImageProcessor.from_pretrained(tmp_path / "a").merge_size == 2

    monkeypatch.setattr(export, "torchvision_available", lambda: True)
    assert export.main([str(ckpt), "--out", str(tmp_path / "b")]) == 0
    assert "univg export:" not in capsys.readouterr().err  # AutoProcessor loads it there: no note


def test_torchvision_available_matches_what_autoprocessor_finds(full_run, tmp_path):
    from transformers import AutoProcessor

    from univg.export import export_checkpoint, torchvision_available

    out = export_checkpoint(full_run[0], tmp_path / "hf")
    if torchvision_available():
        assert AutoProcessor.from_pretrained(out).image_processor is not None
    else:  # the project's CPU environment: the note's reason is the real one
        with pytest.raises(ImportError, match="Torchvision"):
            AutoProcessor.from_pretrained(out)


def test_a_failed_push_to_hub_is_one_line_and_keeps_the_written_folder(
    full_run, tmp_path, capsys, monkeypatch
):
    """Offline (or no token): one line, exit 2, the folder written and the command to push it later."""
    from huggingface_hub import HfApi

    import univg.export as export

    def offline(self, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise ConnectionError("Max retries exceeded with url: /api/repos/create\n(and 70 more lines)")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    monkeypatch.delenv("UNIVG_DEBUG", raising=False)
    ckpt, _ = full_run
    out = tmp_path / "a"
    assert export.main([str(ckpt), "--out", str(out), "--push-to-hub", "me/model"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("univg export")]
    assert err == [
        f"univg export: error: --push-to-hub me/model: ConnectionError: Max retries exceeded with url: "
        f"/api/repos/create ({out} is written; push it later with: hf upload me/model {out})"
    ]
    assert (out / "config.json").is_file()
