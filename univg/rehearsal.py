"""``make rehearsal``: the paper-scale path, run as a whole in miniature, with GRPO's invariants checked.

Stage 1 (``configs/cot_sft.yaml``) -> stage 2 (``configs/grpo_diff.yaml``) -> evaluation
(``configs/eval/mig_bench.yaml``), each layered with ``configs/fsdp/7b_8gpu.yaml`` exactly as a user
runs them on 8 GPUs. Only these are swapped: the preset (tiny, loaded from a checkpoint folder this
script writes), the devices (2 CPU processes over gloo), the data paths and the step budget (the
size of the data, 1 prompt (8 completions) per process per optimiser step where the config has
2 per GPU,
validation once at the end of stage 1 instead of every 100-500 steps). Precision (bf16 compute under FSDP, fp32 master weights), gradient
checkpointing, schedules, full fine-tuning with a frozen reference, G, lengths and sampling stay as
the configs write them.

Inputs are made here, in the formats of the real release:
- a checkpoint folder in the transformers-4.x layout of ``Qwen/Qwen2-VL-7B-Instruct`` (flat
  ``config.json``, ``model.*`` / ``visual.*`` weight names, its ``generation_config.json`` with
  ``repetition_penalty: 1.05``, ``top_k: 1``, ``top_p: 0.001``, ``temperature: 0.01``);
- ``stage1_cotsft.json`` (MGrounding-style CoT records and single-image COCO records),
  ``stage2_rl.json`` (multi-image records and RefCOCO-style single-image records) and a MIG-Bench
  ``MIG_data.json``, with real-size images (640 x 480, and one near the 401,408-pixel limit).

Then each invariant is printed with its measured value; the exit code is 1 if any fails.

    python -m univg.rehearsal --out runs/rehearsal
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from univg.data.synthetic import generate_samples
from univg.rollout import EOS_IDS

REPO = Path(__file__).resolve().parent.parent
#: Qwen2-VL-7B-Instruct's generation_config.json (what a released checkpoint brings along).
INSTRUCT_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.01,
    "top_k": 1,
    "top_p": 0.001,
    "transformers_version": "4.41.2",
}
#: Image sizes of the data: a common photo size and one just under the training pixel limit.
SIZES = ((640, 480), (728, 546))  # 728 x 546 = 397,488 <= 401,408
#: Bounds of the invariants by the precision of the policy's compute (bf16 under the FSDP config).
BOUNDS = {"kl_max": 1e-6, "ref_logp_absdiff_max": 1e-6, "sampler_gap_max": 0.05, "lr": 1e-12, "phi": 1e-6}


# --------------------------------------------------------------------------------- inputs
def stand_in_model() -> torch.nn.Module:
    """The model the checkpoint folder holds: the tiny preset (seed 0) that answers briefly."""
    from univg.backbone import BackboneSpec

    torch.manual_seed(0)
    model = BackboneSpec(preset="tiny").build()
    answer_briefly(model)
    return model


def write_checkpoint(out: Path) -> Path:
    """The tiny preset saved as a released Qwen2-VL-Instruct folder of the transformers-4.x era."""
    from safetensors.torch import save_file

    from univg.tokenizer import load_processor

    out.mkdir(parents=True, exist_ok=True)
    model = stand_in_model()
    cfg = model.config.to_dict()
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {k: v for k, v in text.items() if k not in ("model_type", "architectures", "layer_types")}
    flat.update({k: v for k, v in cfg.items() if k not in ("transformers_version", "dtype")})
    flat.update(
        architectures=["Qwen2VLForConditionalGeneration"],
        model_type="qwen2_vl",
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
        state[legacy] = tensor.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    load_processor().save_pretrained(str(out))
    return out


#: The end token's logit in :func:`answer_briefly`: about a 15% chance to stop at each sampled token.
EOS_LOGIT = 2.75


@torch.no_grad()
def answer_briefly(model: torch.nn.Module) -> None:
    """Make a random model end its answers after a few tokens, as a released Instruct model does
    (a random one never emits ``<|im_end|>`` and always runs to the 256-token limit, so no
    completion would end, and every rollout would cost the full budget).

    A large value bias in the last attention layer adds the same vector at every position
    (softmax weights sum to 1), so the final hidden state is nearly constant; the end token's
    embedding (tied head) is then set to give it the logit :data:`EOS_LOGIT` there.
    """
    lm = model.model.language_model
    bias = lm.layers[-1].self_attn.v_proj.bias
    bias.copy_(torch.randn_like(bias) * 20.0)
    ids = torch.randint(0, 150_000, (2, 32))
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]  # [2, 32, H]
    direction = hidden.reshape(-1, hidden.shape[-1]).mean(0)  # [H]
    model.get_output_embeddings().weight[EOS_IDS[0]] = direction * (EOS_LOGIT / direction.dot(direction))


def _save(image: Any, path: Path, size: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize(size).convert("RGB").save(path, quality=95)
    return str(path)


def write_data(root: Path, n_stage1: int, n_stage2: int, n_eval: int) -> dict[str, Path]:
    """The three files in the release's formats, with their images under ``root/images``."""
    from univg.data.readers.common import write_records
    from univg.data.readers.cot_sft import cot_record
    from univg.data.readers.stage2_rl import stage2_record
    from univg.prompts import render_prompt

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


# --------------------------------------------------------------------------------- running
@dataclass
class Plan:
    """The step budget: data sizes, and the optimiser steps they give under the configs' batching."""

    procs: int = 2
    stage1_records: int = 12  # batch 1 per device x 2 devices x accumulate 3 -> 2 optimiser steps
    stage2_records: int = 4  # 2 prompts per step (1 per process, G 8 completions each) -> 2 steps
    stage2_prompts_per_step: int = 2
    eval_records: int = 4

    @property
    def stage1_steps(self) -> int:
        return math.ceil(math.ceil(self.stage1_records / self.procs) / 3)

    @property
    def stage2_steps(self) -> int:
        return math.ceil(self.stage2_records / self.stage2_prompts_per_step)


def _cli(stage_config: str, overrides: list[str], log: Path) -> float:
    cmd = [sys.executable, "-m", "univg", stage_config.split()[0], *stage_config.split()[1:], *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if rc != 0:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"univg rehearsal: {stage_config} failed (rc {rc}); see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def _common(ckpt: Path, out: Path, name: str, procs: int) -> list[str]:
    return [
        "--config",
        "configs/fsdp/7b_8gpu.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        str(procs),
        "--trainer.strategy.init_args.process_group_backend",
        "gloo",
        "--model.init_args.backbone.preset",
        "tiny",
        "--model.init_args.backbone.checkpoint",
        str(ckpt),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        "0",
    ]


def _fit_budget() -> list[str]:
    # the step budget: the configs validate every 100-500 steps; here once, at the end of the epoch
    return ["--trainer.val_check_interval", "1.0", "--trainer.num_sanity_val_steps", "0"]


def run(out: Path, plan: Plan, keep: bool = False) -> list[tuple[str, bool, str]]:
    """Write the inputs, run the three stages (``keep``: reuse a stage whose output exists), check."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt = write_checkpoint(out / "Qwen2-VL-tiny-Instruct")
    data = write_data(out / "data", plan.stage1_records, plan.stage2_records, plan.eval_records)
    images = str(out / "data" / "images")
    val = ["--data.init_args.val_file", str(data["mig"]), "--data.init_args.eval_image_root", images]
    s1 = out / "stage1" / "version_0" / "checkpoints" / "last.ckpt"
    s2 = out / "stage2" / "version_0" / "checkpoints" / "last.ckpt"
    timings: dict[str, float] = {}
    if not (keep and s1.exists()):
        timings["stage 1"] = _cli(
            "fit --config configs/cot_sft.yaml",
            _common(ckpt, out, "stage1", plan.procs)
            + _fit_budget()
            + ["--data.init_args.train_file", str(data["stage1"]), "--data.init_args.image_root", images]
            + val,
            out / "stage1.log",
        )
    if not (keep and s2.exists()):
        per_process = plan.stage2_prompts_per_step // plan.procs
        timings["stage 2"] = _cli(
            "fit --config configs/grpo_diff.yaml",
            _common(ckpt, out, "stage2", plan.procs)
            + _fit_budget()
            + ["--model.init_args.init_checkpoint", str(s1), "--model.init_args.check_invariants", "true"]
            # step budget: 1 prompt (G = 8 completions) per process per optimiser step; validation
            # is left to stage 1 (the same evaluation code) and the evaluation run below
            + ["--model.init_args.prompts_per_step", str(plan.stage2_prompts_per_step)]
            + ["--data.init_args.batch_size", str(per_process), "--trainer.limit_val_batches", "0"]
            + ["--data.init_args.train_file", str(data["stage2"]), "--data.init_args.image_root", images]
            + val,
            out / "stage2.log",
        )
    timings["evaluation"] = _cli(
        "test --config configs/eval/mig_bench.yaml",
        _common(ckpt, out, "eval", plan.procs)
        + ["--model.init_args.init_checkpoint", str(s2), "--model.init_args.backbone.dtype", "float32"]
        + ["--data.init_args.test_file", str(data["mig"]), "--data.init_args.image_root", images],
        out / "eval.log",
    )
    checks = check_invariants(out, plan, ckpt)
    for stage, seconds in timings.items():
        print(f"univg rehearsal: {stage} took {seconds:.0f} s")
    return checks


# --------------------------------------------------------------------------------- checks
def _lr_of(ckpt_path: Path) -> tuple[int, float, float]:
    """(scheduler steps taken, lr now, peak lr) from a Lightning checkpoint (file or sharded folder)."""
    path = ckpt_path
    if path.is_dir():  # a sharded FSDP2 checkpoint: the trainer state sits in the metadata file
        path = path / "meta.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    sched = state["lr_schedulers"][0]
    return int(sched["last_epoch"]), float(sched["_last_lr"][0]), float(sched["base_lrs"][0])


def check_invariants(out: Path, plan: Plan, ckpt: Path) -> list[tuple[str, bool, str]]:
    """Each invariant as (name, passed, measured value), printed one per line."""
    from univg.difficulty import phi
    from univg.modules.base import warmup_cosine
    from univg.rewards import iou_reward

    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, measured: str) -> None:
        checks.append((name, bool(ok), measured))
        print(f"univg rehearsal: [{'ok' if ok else 'FAIL'}] {name}: {measured}")

    # the released-layout checkpoint loads into the same model (weights, config, generation config)
    from univg.backbone import BackboneSpec

    built = stand_in_model().eval()
    loaded = BackboneSpec(preset="tiny", checkpoint=str(ckpt)).build().eval()
    ids = torch.tensor([[151644, 872, 198, 9707, 11, 1879, 0]])
    with torch.no_grad():
        diff = float((built(input_ids=ids).logits - loaded(input_ids=ids).logits).abs().max())
    check("4.x checkpoint folder loads as the preset (max |logit diff|)", diff == 0.0, f"{diff:.3g}")

    # stage 1: cosine over its optimiser steps, floor reached after the last one
    steps, lr_now, peak = _lr_of(out / "stage1" / "version_0" / "checkpoints" / "last.ckpt")
    check(
        f"stage 1 schedule: {plan.stage1_steps} optimiser steps, cosine at its floor after the last",
        steps == plan.stage1_steps and abs(lr_now) <= BOUNDS["lr"] * peak,
        f"steps {steps}, lr after the last step {lr_now:.3g} (peak {peak:.3g})",
    )

    # stage 2: the invariants the module measured at every optimiser step
    path = out / "stage2" / "version_0" / "invariants.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    check(
        "stage 2 optimiser steps", len(records) == plan.stage2_steps, f"{len(records)} of {plan.stage2_steps}"
    )
    if records:
        first = records[0]
        check(
            "KL(policy || reference) at the first step",
            first.get("kl_max", 0.0) <= BOUNDS["kl_max"],
            f"max per token {first.get('kl_max', 0.0):.3g} (bound {BOUNDS['kl_max']:g})",
        )
        check(
            "policy vs reference log-probs at the first step",
            first.get("ref_logp_absdiff_max", 0.0) <= BOUNDS["ref_logp_absdiff_max"],
            f"max |delta| {first.get('ref_logp_absdiff_max', 0.0):.3g}",
        )
        gap = max(r.get("sampler_gap_max", float("inf")) for r in records)
        check(
            "scored distribution is the sampled one (max scored - sampled log-prob)",
            gap <= BOUNDS["sampler_gap_max"],
            f"{gap:.3g} nats (bound {BOUNDS['sampler_gap_max']:g} in bf16)",
        )
        # linear to 0 without warm-up (the release's schedule), computed here from the step count
        lr_err = max(
            abs(r["lr"] - r["lr_expected"])
            + abs(r["lr_expected"] - r["lr_peak"] * warmup_cosine(i, plan.stage2_steps, 0, "linear"))
            for i, r in enumerate(records)
        )
        check(
            "stage 2 lr at each optimiser step equals the linear schedule's value",
            lr_err <= 1e-12,
            f"max error {lr_err:.3g}; lrs {[r['lr'] for r in records]}",
        )
        # phi on 2 ranks == the single-process computation over the gathered groups
        worst = 0.0
        for r in records:
            w = phi(r["phi"], torch.tensor(r["miou"]), r["phi_eps"])
            if r["normalize_phi"] and float(w.mean()) > 0:
                w = w / w.mean()
            worst = max(worst, float((w - torch.tensor(r["weights"])).abs().max()))
        check(
            f"phi per group over {records[0]['world_size']} ranks == single-process phi",
            worst <= BOUNDS["phi"],
            f"max |delta| {worst:.3g} over {sum(len(r['miou']) for r in records)} groups",
        )
    # evaluation: the IoU written for each prediction is the reward's IoU of the same completion
    preds = out / "eval" / "version_0" / "predictions_test.jsonl"
    rows = [json.loads(line) for line in preds.read_text().splitlines()] if preds.is_file() else []
    mism = sum(
        abs(iou_reward([r["completion"]], [r["gt"]], strict=True)[0] - (r["iou"] or 0.0)) > 1e-9
        for r in rows
        if r.get("gt")
    )
    check(
        "evaluation IoU == reward IoU on every prediction",
        rows and mism == 0,
        f"{len(rows)} predictions, {mism} differ, {sum(r.get('pred') is not None for r in rows)} parsed",
    )
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m univg.rehearsal", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/rehearsal", help="output folder (inputs, runs, logs)")
    p.add_argument("--procs", type=int, default=2, help="CPU processes (gloo), standing in for GPUs")
    p.add_argument("--keep", action="store_true", help="reuse stages whose checkpoint exists in --out")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    checks = run(Path(args.out).resolve(), Plan(procs=args.procs), keep=args.keep)
    failed = [name for name, ok, _ in checks if not ok]
    print(
        f"univg rehearsal: {len(checks) - len(failed)} of {len(checks)} invariants hold ({time.perf_counter() - t0:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
