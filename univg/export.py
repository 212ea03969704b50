"""A trained run as a Hugging Face model folder (and, optionally, a Hub repository).

``python -m univg.export CKPT --out DIR [--overwrite] [--merge-lora] [--push-to-hub REPO_ID] [--private]``
(also ``python -m univg export ...``) reads a univg Lightning checkpoint: a single ``.ckpt`` file
(full fine-tune or LoRA) or a sharded FSDP2 checkpoint folder (``torch.distributed.checkpoint``),
and writes what ``transformers``, vLLM, lmms-eval and the release's scripts load:

- ``model.safetensors`` (or shards + index) and ``config.json`` in the layout the backbone family's
  model class (:mod:`univg.model.presets`) reads with ``from_pretrained`` (a LoRA run merged into its base with
  ``--merge-lora``; without it, the peft adapter beside a base checkpoint named by the run);
- ``generation_config.json`` stating the evaluation decoding of the paper explicitly (greedy,
  256 new tokens, no repetition penalty), so a server does not fall back to its own sampling;
- the tokenizer (with its chat template) and the image processor the run used;
- ``README.md``: a model card with the training config (the run's saved ``config.yaml``) and the
  run's evaluation results in the paper's table layout, beside the paper's rows.

The backbone (preset, overrides, LoRA) is read from the ``config.yaml`` that LightningCLI saved in
the run's directory (found beside or above the checkpoint), or from ``--config``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from univg.core.boxes import get_frame
from univg.core.errors import UsageError, usage_status
from univg.core.help_text import with_examples
from univg.model.backbone import DTYPES, BackboneSpec, apply_lora, preset_config
from univg.model.checkpoint_io import replace_folder
from univg.model.presets import Family, resolve_class
from univg.model.run_config import backbone_of, read_config, run_directory
from univg.model.tokenizer import load_processor


class ExportError(UsageError, ValueError):
    """An export that cannot be done as asked (checkpoint, config, --out, --dtype); one line."""


PAPER = "UniVG-R1 (arXiv 2505.14231)"


def evaluation_decoding() -> dict[str, Any]:
    """The decoding every evaluation of the suite (and the paper) uses, as ``generation_config`` keys.

    Greedy, one beam, no repetition penalty; the budget is ``GroundingModule``'s ``max_new_tokens``
    default (the paper's 256), read from its signature so it is stated once.

    >>> d = evaluation_decoding()
    >>> d["do_sample"], d["num_beams"], d["max_new_tokens"], d["repetition_penalty"]
    (False, 1, 256, 1.0)
    """
    from univg.modules.base import GroundingModule

    budget = inspect.signature(GroundingModule.__init__).parameters["max_new_tokens"].default
    return {
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": int(budget),
        "repetition_penalty": 1.0,
        # greedy ignores these; stated so a server that switches sampling on gets the paper's values
        "temperature": 1.0,
        "top_p": 1.0,
    }


def load_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The policy's weights (``model.*`` keys, prefix removed) of a checkpoint file or sharded folder.

    A GRPO checkpoint's ``ref_model.*`` and the optimiser state are left out.
    """
    if ckpt.is_dir():
        if not (ckpt / ".metadata").is_file():
            raise ExportError(
                f"{ckpt}: a folder but not a sharded checkpoint (no .metadata of torch.distributed.checkpoint)"
            )
        from univg.model.consolidate import consolidate_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            state = torch.load(consolidate_checkpoint(ckpt, Path(tmp) / "full.ckpt"), map_location="cpu")
    elif ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    else:
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (a .ckpt file or a sharded folder)")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ExportError(f"{ckpt}: not a Lightning checkpoint (no state_dict)")
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ExportError(f"{ckpt}: holds no 'model.*' weights (keys: {list(state)[:5]} ...)")
    return weights


def hf_config(spec: BackboneSpec) -> Any:
    """The config of the run's backbone: the base checkpoint's own, or the preset's."""
    if spec.checkpoint is None:
        return preset_config(spec.preset, spec.overrides)
    from transformers import AutoConfig

    from univg.model.tokenizer import resolve_checkpoint

    return AutoConfig.from_pretrained(resolve_checkpoint(spec.checkpoint))


def build_model(spec: BackboneSpec, weights: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """The run's model (peft-wrapped for a LoRA run) holding exactly ``weights`` (strict)."""
    config = hf_config(spec)
    config._attn_implementation = spec.attn_implementation
    try:  # every weight is overwritten below: skip the (for 7B, minutes-long) random init
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model: nn.Module = resolve_class(spec.family.model_class)(config)
    model = model.to(spec.torch_dtype)
    if spec.lora is not None:
        model = apply_lora(model, spec.lora)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        lora = "with" if spec.lora is not None else "without"
        raise ExportError(
            f"{source}: the weights do not match the run's backbone ({spec.preset}, {lora} LoRA): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if tied:
        model.tie_weights()
    return model.eval()


# ----------------------------------------------------------------------------- the model card
def find_results(run_dir: Path | None, extra: Sequence[str | os.PathLike] = ()) -> list[dict[str, Any]]:
    """The run's ``results_test.json`` files (searched under its directory) and any ``extra`` ones."""
    files = sorted(run_dir.rglob("results_test.json")) if run_dir is not None else []
    files += [Path(p) for p in extra]
    out = []
    for f in files:
        try:
            out.append(json.loads(Path(f).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise ExportError(f"{f}: cannot read evaluation results ({err})") from err
    return out


def results_markdown(results: list[dict[str, Any]]) -> str:
    """The results in the paper's layouts (one table per layout), beside the paper's rows."""
    from univg.evaluation.tables import layout_of, merge_tables

    parts = []
    for layout in ("mig", "zeroshot", "refcoco"):
        mine = [r for r in results if layout_of(r.get("benchmark", "")) == layout]
        if mine:
            parts.append(merge_tables(mine, layout)[0].replace("## ", "### ", 1))
    return "\n".join(parts)


def model_card(
    spec: BackboneSpec,
    run_config: str | None,
    results: list[dict[str, Any]],
    source: Path,
    merged_lora: bool,
    decoding: dict[str, Any],
) -> str:
    family = spec.family
    model_class = family.model_class.rpartition(":")[2]
    base = spec.checkpoint or f"univg preset {spec.preset!r} (random init)"
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags:"]
    front += ["- visual-grounding", f"- {family.model_type}", "- univg"]
    if spec.checkpoint and "/" in spec.checkpoint and not Path(spec.checkpoint).exists():
        front.append(f"base_model: {spec.checkpoint}")
    front.append("---")
    how = "LoRA adapters merged into the base weights" if merged_lora else "full weights"
    lines = [
        *front,
        "",
        "# Reasoning-guided visual grounding (univg export)",
        "",
        f"A {family.title} model trained with univg, a PyTorch Lightning reproduction of {PAPER}.",
        f"Base: {base}. Exported from `{source.name}` ({how}).",
        "",
        "Given an instruction and one or more images, it answers with one box in the target image:",
        "",
        "    <think>reasoning</think><answer>(x1, y1), (x2, y2)</answer>",
        "",
        f"Coordinates are {get_frame(family.frame).summary}.",
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import AutoImageProcessor, AutoTokenizer, {model_class}",
        "",
        f'model = {model_class}.from_pretrained("THIS_FOLDER")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")  # chat template included',
        'image_processor = AutoImageProcessor.from_pretrained("THIS_FOLDER")',
        "```",
        "",
        f"`AutoProcessor.from_pretrained` gives both as one {family.title} processor where torchvision is"
        " installed (transformers 5 builds the processor's video part with it: `pip install torchvision`);"
        " `vllm serve THIS_FOLDER` serves it.",
        "",
        "## Decoding",
        "",
        "`generation_config.json` states the evaluation decoding of the paper: "
        + ", ".join(f"`{k}={v}`" for k, v in decoding.items() if k in evaluation_decoding())
        + ".",
        "",
        "## Evaluation",
        "",
    ]
    if results:
        lines += [results_markdown(results)]
    else:
        lines += ["No `results_test.json` was found with the run; evaluate with `python -m univg test`."]
    lines += ["", "## Training configuration", ""]
    if run_config:
        lines += ["The run's resolved LightningCLI config:", "", "```yaml", run_config.rstrip(), "```"]
    else:
        lines += ["The run's `config.yaml` was not found beside the checkpoint."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- export
def write_generation_config(out: Path, tokenizer: Any, decoding: dict[str, Any], family: Family) -> None:
    """``generation_config.json`` with every decoding setting written out (not only non-defaults)."""
    pad, *end = tokenizer.convert_tokens_to_ids([family.tokens.pad, *family.tokens.end])
    config = {**decoding, "bos_token_id": pad, "eos_token_id": end, "pad_token_id": pad}
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")


#: What a user without torchvision needs to know about an exported folder, in one line.
NO_TORCHVISION = (
    "AutoProcessor.from_pretrained({folder}) needs torchvision, which is not installed here "
    "(transformers 5 builds the Qwen-VL video processors with it): pip install torchvision (the build "
    "matching your torch), or load AutoTokenizer and AutoImageProcessor from {folder} separately "
    "(its README.md shows how)"
)


def torchvision_available() -> bool:
    """Whether ``torchvision`` can be imported (``AutoProcessor`` needs it for the Qwen-VL families)."""
    return importlib.util.find_spec("torchvision") is not None


def processor_note(folder: str | os.PathLike) -> str | None:
    """The one line to print after an export where ``AutoProcessor`` cannot load the folder (no
    torchvision); None where it can."""
    return None if torchvision_available() else NO_TORCHVISION.format(folder=folder)


def write_processor(out: Path, spec: BackboneSpec) -> Any:
    """Tokenizer (chat template included) and image processor of the run, marked as one processor of
    the backbone's family so that ``AutoProcessor`` builds it (as for the public checkpoints)."""
    processor = load_processor(spec.checkpoint, family=spec.family)
    processor.save_pretrained(out)
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        path = out / name
        data = json.loads(path.read_text())
        data["processor_class"] = spec.family.processor_class
        path.write_text(json.dumps(data, indent=2) + "\n")
    return processor.tokenizer


def export_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    merge_lora: bool = False,
    config: str | os.PathLike | None = None,
    results: Sequence[str | os.PathLike] = (),
    dtype: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the Hugging Face model folder of a univg checkpoint; returns ``out``.

    Args:
        ckpt: a ``.ckpt`` file or a sharded FSDP2 checkpoint folder.
        out: the folder to write. It is written beside its place and renamed into it when complete,
            so a failed export leaves nothing there; a non-empty ``out`` is refused (files of an
            earlier export, e.g. a stale ``adapter_config.json``, would mix with the new ones)
            unless ``overwrite``, which replaces it whole.
        merge_lora: merge a LoRA run's adapters into its base weights (a plain Qwen2-VL); without it
            a LoRA run is written as a peft adapter of the base checkpoint it names.
        config: the run's ``config.yaml``; default the one LightningCLI saved beside the checkpoint.
        results: extra ``results_test.json`` files for the model card (evaluations run elsewhere).
        dtype: save in this dtype ("bfloat16", ...); default the run's.
        push_to_hub: upload the folder to this Hub repository (created if missing).
        private: create the Hub repository private.
        overwrite: replace a non-empty ``out``.
    """
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} is not empty: choose another folder, or --overwrite to replace it")
    if not ckpt.exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (a .ckpt file or a sharded folder)")
    run_dir = run_directory(ckpt)
    config_path = Path(config) if config is not None else (run_dir / "config.yaml" if run_dir else None)
    if config_path is None:
        raise FileNotFoundError(
            f"no config.yaml beside or above {ckpt}: pass the run's config with --config "
            "(LightningCLI saves it in the run directory)"
        )
    if not config_path.is_file():
        raise FileNotFoundError(f"run config {config_path} does not exist")
    run_config = config_path.read_text()
    spec = backbone_of(read_config(config_path), config_path)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ExportError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        spec.dtype = dtype  # type: ignore[assignment]
    if spec.quantization is not None:
        raise ExportError(
            f"{config_path}: a {spec.quantization}-quantised run cannot be exported (its base weights are "
            "stored quantised); train without quantization to export"
        )
    is_lora = spec.lora is not None
    if is_lora and not merge_lora and spec.checkpoint is None:
        raise ExportError(
            f"{ckpt}: a LoRA run on the random-init preset {spec.preset!r}: its base weights exist only in "
            "this checkpoint, so export it with --merge-lora"
        )
    model = build_model(spec, load_state_dict(ckpt), ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if is_lora and merge_lora:
            model = model.merge_and_unload()
        if is_lora and not merge_lora:
            model.peft_config["default"].base_model_name_or_path = spec.checkpoint
            model.save_pretrained(partial, safe_serialization=True)  # adapter_config.json + adapter weights
        else:
            model.save_pretrained(partial, safe_serialization=True)
        decoding = evaluation_decoding()
        tokenizer = write_processor(partial, spec)
        write_generation_config(partial, tokenizer, decoding, spec.family)
        card = model_card(
            spec, run_config, find_results(run_dir, results), ckpt, is_lora and merge_lora, decoding
        )
        (partial / "README.md").write_text(card)
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if push_to_hub:
        push_folder(out, push_to_hub, private=private)
    return out


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` to it; returns the repository URL.

    Credentials come from ``huggingface_hub`` (``HF_TOKEN`` or ``hf auth login``).
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload model exported with univg",
        )
    except Exception as err:  # offline, no token, no rights: the folder is written, say so in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(
            f"--push-to-hub {repo_id}: {type(err).__name__}: {first} ({folder} is written; "
            f"push it later with: hf upload {repo_id} {folder})"
        ) from err
    return str(url)


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m univg.export",
        description="Export a univg checkpoint as a Hugging Face model folder.",
        **with_examples(
            "python -m univg.export runs/grpo_diff/version_0/checkpoints/last.ckpt --out exports/univg-r1",
            "python -m univg.export runs/lora/version_0/checkpoints/last.ckpt --out exports/lora --merge-lora",
        ),
    )
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded FSDP2 checkpoint folder")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--merge-lora", action="store_true", help="merge LoRA adapters into the base weights")
    parser.add_argument(
        "--config", default=None, help="the run's config.yaml (default: found beside the checkpoint)"
    )
    parser.add_argument("--results", nargs="*", default=[], help="results_test.json files for the model card")
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="save in this dtype (default the run's)"
    )
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO_ID", help="upload to this Hub repository"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(
            args.checkpoint,
            args.out,
            merge_lora=args.merge_lora,
            config=args.config,
            results=args.results,
            dtype=args.dtype,
            push_to_hub=args.push_to_hub,
            private=args.private,
            overwrite=args.overwrite,
        )
    except Exception as err:  # bad input, an unwritable --out, a failed push: one line, status 2
        return usage_status("univg export", err)
    print(f"wrote {out}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    note = processor_note(out)
    if note is not None:
        print(f"univg export: note: {note}", file=sys.stderr)
    return 0


__all__ = [
    "NO_TORCHVISION",
    "evaluation_decoding",
    "export_checkpoint",
    "load_state_dict",
    "main",
    "processor_note",
    "push_folder",
    "torchvision_available",
]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
