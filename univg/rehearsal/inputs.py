"""The rehearsal's inputs: the stand-in checkpoint (the tiny preset after a short warm start,
in the layout of a released Instruct checkpoint) and data files in the formats of the release."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from univg.data.synthetic import generate_samples
from univg.model.presets import FAMILIES, PRESET_FAMILIES

REPO = Path(__file__).resolve().parent.parent.parent
#: The stand-in's preset and its family (whose released checkpoints' layout it is written in).
STAND_IN = "tiny"
_FAMILY = FAMILIES[PRESET_FAMILIES[STAND_IN]]
#: Qwen2-VL-7B-Instruct's generation_config.json (what a released checkpoint brings along).
INSTRUCT_GENERATION_CONFIG = {
    "bos_token_id": _FAMILY.tokens.pad_id,
    "pad_token_id": _FAMILY.tokens.pad_id,
    "do_sample": True,
    "eos_token_id": list(_FAMILY.tokens.end_ids),
    "repetition_penalty": 1.05,
    "temperature": 0.01,
    "top_k": 1,
    "top_p": 0.001,
    "transformers_version": "4.41.2",
}
#: Image sizes of the data: a common photo size and one just under the training pixel limit.
SIZES = ((640, 480), (728, 546))  # 728 x 546 = 397,488 <= 401,408
MAX_PIXELS = 401_408


# --------------------------------------------------------------------------------- inputs
def stand_in_model() -> torch.nn.Module:
    """The tiny preset as built with seed 0 (before :func:`warm_start`)."""
    from univg.model.backbone import BackboneSpec

    torch.manual_seed(0)
    return BackboneSpec(preset=STAND_IN).build()


def write_checkpoint(out: Path, model: torch.nn.Module | None = None) -> Path:
    """``model`` (default: :func:`stand_in_model`) saved as a released Qwen2-VL-Instruct folder of
    the transformers-4.x era."""
    from safetensors.torch import save_file

    from univg.model.tokenizer import load_processor

    out.mkdir(parents=True, exist_ok=True)
    model = stand_in_model() if model is None else model
    cfg = model.config.to_dict()
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {k: v for k, v in text.items() if k not in ("model_type", "architectures", "layer_types")}
    flat.update({k: v for k, v in cfg.items() if k not in ("transformers_version", "dtype")})
    flat.update(
        architectures=[_FAMILY.model_class],
        model_type=_FAMILY.model_type,
        rope_theta=rope["rope_theta"],
        rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]},
        torch_dtype="float32",
        transformers_version="4.41.2",
    )
    (out / "config.json").write_text(json.dumps(flat, indent=2))
    (out / "generation_config.json").write_text(json.dumps(INSTRUCT_GENERATION_CONFIG, indent=2))
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and flat.get("tie_word_embeddings"):
            continue  # tied: stored once, as the release does
        legacy = name.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        state[legacy] = tensor.detach().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    load_processor().save_pretrained(str(out))
    return out


@dataclass
class WarmStart:
    """The supervised warm start of the stand-in (:func:`warm_start`)."""

    boxes_per_prompt: int = 2
    steps: int = 240
    lr: float = 5e-3
    #: the prompts' keys and values are recomputed with the current weights every this many steps
    refresh: int = 20
    #: scale of the embedding rows of the tokens the warm-start text never holds
    unused_scale: float = 1e-3


def answer_text(box: tuple[int, int, int, int]) -> str:
    """An answer in the format the configs' prompts ask for, with a fixed short reasoning."""
    x1, y1, x2, y2 = box
    return f"<think>Found it.</think><answer>({x1}, {y1}), ({x2}, {y2})</answer>"


def warm_start(model: torch.nn.Module, prompts: list[dict[str, Any]], cfg: WarmStart) -> dict[str, float]:
    """Teach the stand-in the answer format on the prompts it will be asked (stage 2's and the
    evaluation's, as their data modules build them: ``prompts``, collated batches of one): Adam
    on the language model (vision frozen), each prompt answered by :func:`answer_text` with boxes
    drawn apart from every stage's data (``cfg.boxes_per_prompt`` of them, so the model learns
    the format and no box), then the end token. Returns the first and last losses and the seconds.

    Made cheap in two ways. Each prompt but its last token is run without gradient and its
    keys/values kept (recomputed with the current weights every ``cfg.refresh`` steps), so a step
    runs only ``[last prompt token, answer]`` and its gradient does not reach the prompt's
    positions. The embedding rows (tied to the head) of every token no prompt or answer holds are
    scaled by ``cfg.unused_scale`` (part of the stand-in: their logits are ~0), so the exact
    151,936-way cross-entropy is taken over the few hundred tokens the text holds plus the rest
    counted at logit 0 (their share of the normaliser, ``log(count)``).
    """
    import copy
    import random

    from transformers import DynamicCache

    from univg.model.tokenizer import load_processor
    from univg.rl.rollout.batch import EOS_IDS, _hf_model, model_inputs, rope_positions

    t0 = time.perf_counter()
    tokenizer = load_processor().tokenizer
    rng = random.Random(44)
    examples = []
    for batch in prompts:
        inputs = model_inputs(batch)
        for _ in range(cfg.boxes_per_prompt):
            x1, y1 = rng.randint(100, 600), rng.randint(100, 600)  # three digits each
            box = (x1, y1, rng.randint(x1 + 50, 999), rng.randint(y1 + 50, 999))
            text = answer_text(box)
            answer = tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS_IDS[0]]
            examples.append((inputs, torch.tensor(answer)))
    embed = model.get_input_embeddings().weight
    vocab = torch.unique(torch.cat([torch.cat([i["input_ids"].flatten(), a]) for i, a in examples]))
    rest = math.log(embed.shape[0] - len(vocab))  # logsumexp of the other tokens' logits at 0
    with torch.no_grad():
        unused = torch.ones(embed.shape[0], dtype=torch.bool)
        unused[vocab] = False
        embed[unused] *= cfg.unused_scale
    config = _hf_model(model).config
    positions = [rope_positions(model, model_inputs(b)) for b in prompts]

    def prefixes() -> list[DynamicCache]:
        out = []
        with torch.no_grad():
            for inputs, pos in zip((model_inputs(b) for b in prompts), positions):
                cache = DynamicCache(config=config)
                head = {
                    k: v[:, :-1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
                    for k, v in inputs.items()
                }
                model.model(**head, position_ids=pos[..., :-1], cache=cache, use_cache=True)
                out.append(cache)
        return out

    was_training = model.training
    model.train()
    frozen = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    cosine = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.steps)))
    losses = []
    caches: list[DynamicCache] = []
    for step in range(cfg.steps):
        if step % cfg.refresh == 0:
            caches = prefixes()
        k = step % len(examples)
        inputs, answer = examples[k]
        j = k // cfg.boxes_per_prompt
        pos, cache = positions[j], copy.deepcopy(caches[j])
        ids = torch.cat([inputs["input_ids"][:, -1:], answer[None, :-1]], dim=1)  # [1, T]
        step_pos = pos[..., -1:] + torch.arange(ids.shape[1]).view(1, 1, -1)  # [3, 1, T]
        att = torch.ones(1, inputs["input_ids"].shape[1] - 1 + ids.shape[1], dtype=torch.long)
        hidden = model.model(
            input_ids=ids, attention_mask=att, position_ids=step_pos, cache=cache, use_cache=True
        ).last_hidden_state[0]
        logits = hidden @ model.get_output_embeddings().weight[vocab].T  # [T, |vocab|]
        lse = torch.logsumexp(torch.cat([logits, logits.new_full((len(logits), 1), rest)], 1), dim=1)
        targets = torch.searchsorted(vocab, answer)
        loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cosine.step()
        losses.append(float(loss.detach()))
    for p in frozen:
        p.requires_grad_(True)
    model.train(was_training)
    tail = losses[-len(examples) :]
    return {"loss_first": losses[0], "loss_last": sum(tail) / len(tail), "seconds": time.perf_counter() - t0}


def warm_start_prompts(stage2: Path, mig: Path, image_root: Path) -> list[dict[str, Any]]:
    """Stage 2's and the evaluation's prompts, each a batch of one, as their data modules (with
    the configs' settings) collate them."""
    from univg.data.datasets import MIGBenchDataModule, Stage2RLDataModule

    s2 = Stage2RLDataModule(train_file=str(stage2), image_root=str(image_root), max_pixels=MAX_PIXELS)
    ev = MIGBenchDataModule(
        test_file=str(mig), image_root=str(image_root), prompt_template="reasoning", max_pixels=MAX_PIXELS
    )
    out = []
    for dm, samples in ((s2, s2.train_samples), (ev, ev.test_samples)):
        collate = dm.collator("generate")
        out.extend(collate([s]) for s in samples)
    return out


def _save(image: Any, path: Path, size: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize(size).convert("RGB").save(path, quality=95)
    return str(path)


def write_data(root: Path, n_stage1: int, n_stage2: int, n_eval: int) -> dict[str, Path]:
    """The three files in the release's formats, with their images under ``root/images``."""
    from univg.core.prompts import render_prompt
    from univg.data.readers.cot_sft import cot_record
    from univg.data.readers.stage2_rl import stage2_record
    from univg.data.readers.writing import write_records

    images = root / "images"
    paths = {
        "stage1": root / "stage1_cotsft.json",
        "stage2": root / "stage2_rl.json",
        "mig": root / "MIG_data.json",
    }

    def image_paths(sample: Any, folder: str, k: int) -> list[str]:
        out = []
        for i, img in enumerate(sample.images):
            size = SIZES[(k + i) % len(SIZES)]
            out.append(_save(img, images / folder / f"{sample.id}_{i}.jpg", size))
        return [os.path.relpath(p, images) for p in out]

    # stage 1: multi-image CoT records, every third one a single-image COCO record with a bare box
    stage1 = []
    for k, s in enumerate(
        generate_samples(n_stage1, tasks=["refer_grounding", "single"], image_size=112, seed=11)
    ):
        if k % 3 == 2:
            s.images = s.images[:1]
            s.target_index, s.reasoning, s.prompt_template = 0, None, "refcoco_single"
            s.images = image_paths(s, "coco/train2014", k)
            rec = cot_record(s, target_format="answer")
            x1, y1, x2, y2 = (int(c * 1000) for c in s.box.as_tuple())
            rec["messages"][1]["content"] = f"({x1}, {y1}), ({x2}, {y2})"
        else:
            s.images = image_paths(s, "mg", k)
            rec = cot_record(s, target_format="cot")
        stage1.append(rec)
    # stage 2: question with <image> placeholders, answer in the 0-1000 frame
    stage2 = []
    for k, s in enumerate(
        generate_samples(n_stage2, tasks=["refer_grounding", "single"], image_size=112, seed=22)
    ):
        coco = k % 2 == 1
        if coco:
            s.images, s.target_index = s.images[:1], 0
        s.question = render_prompt("refcoco_single" if coco else "plain", s.question)
        s.images = image_paths(s, "coco/train2014" if coco else "mg2", k)
        stage2.append(stage2_record(s))
    # evaluation: MIG-Bench records (answers as [0, 1] floats of the target image)
    mig = []
    for k, s in enumerate(
        generate_samples(n_eval, tasks=["refer_grounding", "common_object"], image_size=112, seed=33)
    ):
        mig.append(
            {
                "task": s.task,
                "images": [f"./{p}" for p in image_paths(s, "mig", k)],
                "question": s.question,
                "answer": [round(c, 4) for c in s.box.as_tuple()],
                "additional_info": s.meta.get("additional_info", ""),
                "need_format": True,
            }
        )
    for key, records in (("stage1", stage1), ("stage2", stage2), ("mig", mig)):
        write_records(records, paths[key])
    return paths


@dataclass
class Plan:
    """The step budget: data sizes, and the optimiser steps they give under the configs' batching."""

    procs: int = 2
    stage1_records: int = 12  # batch 1 per device x 2 devices x accumulate 3 -> 2 optimiser steps
    stage2_records: int = 4  # 2 prompts per step (1 per process, G 8 completions each) -> 2 steps
    stage2_prompts_per_step: int = 2
    eval_records: int = 4
    warm: WarmStart = field(default_factory=WarmStart)

    @property
    def stage1_steps(self) -> int:
        return math.ceil(math.ceil(self.stage1_records / self.procs) / 3)

    @property
    def stage2_steps(self) -> int:
        return math.ceil(self.stage2_records / self.stage2_prompts_per_step)
