"""Research loop for the miniature demo (issue 11): CoT-SFT then GRPO on synthetic grounding, 2 CPU cores.

A minimal, self-contained pipeline (no Lightning) to find settings that make a tiny Qwen2-VL learn
localisation reliably: base eval -> CoT-SFT (curriculum of phases) -> eval -> GRPO (phi none / exp)
from the same SFT weights -> eval. Uses the real architecture, the exact tokenizer and chat template,
the project's prompts, parser, rewards, rollout and GRPO loss.

Run (one JSON result line appended to --out):
    MALLOC_MMAP_MAX_=0 python experiments/demo_research/miniature.py --seed 0 --out runs/demo_research.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from univg.backbone import build_from_config, preset_config
from univg.boxes import Qwen2VLFrame, box_iou, parse_answer
from univg.data.synthetic import generate_samples
from univg.difficulty import difficulty_weights
from univg.grpo import group_advantages, grpo_loss_terms
from univg.prompts import build_messages, target_text
from univg.rewards import format_reward, iou_reward
from univg.rollout import completion_logprobs, generate
from univg.tokenizer import load_processor

FRAME = Qwen2VLFrame()
IM_END = "<|im_end|>"


def log(*a: Any) -> None:
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------------
# Model


def model_overrides(a: argparse.Namespace) -> dict:
    head_dim = a.hidden // a.heads
    half = head_dim // 2
    # mrope sections (t, h, w) sum to head_dim / 2; give height and width the larger shares
    t = max(1, half // 4)
    h = (half - t) // 2
    w = half - t - h
    return {
        "text_config": {
            "hidden_size": a.hidden,
            "intermediate_size": a.hidden * a.mlp_mult,
            "num_hidden_layers": a.layers,
            "num_attention_heads": a.heads,
            "num_key_value_heads": a.kv_heads,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": a.rope_theta,
                "mrope_section": [t, h, w],
            },
        },
        "vision_config": {
            "depth": a.vision_depth,
            "embed_dim": a.vision_dim,
            "hidden_size": a.hidden,
            "num_heads": a.vision_heads,
            "mlp_ratio": 4,
        },
        "tie_word_embeddings": not a.untie,
    }


def build_model(a: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(a.seed)
    model = build_from_config(preset_config("tiny", model_overrides(a)))
    for p in model.model.visual.parameters():
        p.requires_grad_(not a.freeze_vision)
    if a.untie and a.freeze_embed:
        model.model.language_model.embed_tokens.weight.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------
# Data


def make_samples(n: int, tasks: list[str], seed: int, a: argparse.Namespace, k: Any) -> list:
    return generate_samples(
        n,
        tasks=tasks,
        image_size=a.image_size,
        seed=seed,
        num_distractors=k,
        num_images=a.num_images,
        background=a.background,
        object_size=(a.obj_min, a.obj_max),
        reasoning_style=a.reasoning_style,
    )


def prompt_text(proc: Any, sample: Any) -> str:
    return proc.apply_chat_template(build_messages(sample, "reasoning"), add_generation_prompt=True)


def sft_batch(proc: Any, samples: list) -> dict[str, torch.Tensor]:
    """Right-padded prompt + target ids; labels -100 outside the assistant answer (+ <|im_end|>)."""
    enc = proc([prompt_text(proc, s) for s in samples], [im for s in samples for im in s.images])
    tok = proc.tokenizer
    rows, labels = [], []
    for i, s in enumerate(samples):
        p = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        t = tok(target_text(s, "cot") + IM_END, add_special_tokens=False)["input_ids"]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    T = max(len(r) for r in rows)
    pad = 151643
    ids = torch.full((len(rows), T), pad)
    lab = torch.full((len(rows), T), -100)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        att[i, : len(r)] = 1
    return {
        "input_ids": ids,
        "attention_mask": att,
        "pixel_values": enc["pixel_values"],
        "image_grid_thw": enc["image_grid_thw"],
        "mm_token_type_ids": (ids == 151655).long(),
        "labels": lab,
    }


def sft_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over label positions only; the 151,936-way head runs on those rows only."""
    out = model.model(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        pixel_values=b["pixel_values"],
        image_grid_thw=b["image_grid_thw"],
        mm_token_type_ids=b["mm_token_type_ids"],
        use_cache=False,
    )
    h = out.last_hidden_state[:, :-1]  # [B, T-1, H]; position t predicts token t+1
    tgt = b["labels"][:, 1:]  # [B, T-1]
    sel = tgt != -100
    logits = model.lm_head(h[sel])  # [n_label, V]
    loss = F.cross_entropy(logits.float(), tgt[sel])
    return loss, sel.sum()


# ------------------------------------------------------------------------------------------------
# Eval


@torch.no_grad()
def evaluate(model: torch.nn.Module, proc: Any, samples: list, max_new: int, bs: int = 50) -> dict:
    model.eval()
    ious, parsed, fmt = [], 0, 0
    per_task: dict[str, list[float]] = {}
    texts_out = []
    for i in range(0, len(samples), bs):
        chunk = samples[i : i + bs]
        enc = proc(
            [prompt_text(proc, s) for s in chunk], [im for s in chunk for im in s.images], padding_side="left"
        )
        ro = generate(model, enc, proc.tokenizer, group_size=1, max_new_tokens=max_new, do_sample=False)
        for s, text in zip(chunk, ro.texts):
            coords = parse_answer(text, strict=True)
            iou = box_iou(FRAME.from_model(coords), s.box) if coords is not None else 0.0
            parsed += coords is not None
            fmt += format_reward([text])[0] > 0
            ious.append(iou)
            per_task.setdefault(s.task, []).append(iou)
            texts_out.append(text)
    model.train()
    return {
        "acc50": sum(v >= 0.5 for v in ious) / len(ious),
        "miou": sum(ious) / len(ious),
        "parsed": parsed / len(ious),
        "format": fmt / len(ious),
        "per_task_acc50": {t: round(sum(v >= 0.5 for v in vs) / len(vs), 3) for t, vs in per_task.items()},
        "example": texts_out[0][:200],
    }


def constant_box(train: list, evals: list) -> dict:
    """The mean training box in the 0-1000 frame, answered for every eval sample."""
    q = [FRAME.to_model(s.box) for s in train]
    mean = tuple(int(sum(c[j] for c in q) / len(q)) for j in range(4))
    ious = [box_iou(FRAME.from_model(mean), s.box) for s in evals]
    return {"box": mean, "acc50": sum(v >= 0.5 for v in ious) / len(ious), "miou": sum(ious) / len(ious)}


# ------------------------------------------------------------------------------------------------
# SFT


def parse_phases(spec: str) -> list[dict]:
    """``tasks=single,k=0,steps=600;tasks=single+diff,k=0-1,steps=400`` -> list of phases."""
    phases = []
    for part in spec.split(";"):
        d = dict(kv.split("=") for kv in part.split(","))
        k: Any = d.get("k", "0")
        k = tuple(int(x) for x in k.split("-")) if "-" in k else int(k)
        phases.append({"tasks": d["tasks"].split("+"), "k": k, "steps": int(d["steps"])})
    return phases


def lr_at(step: int, total: int, a: argparse.Namespace) -> float:
    warm = max(1, int(a.warmup * total))
    if step < warm:
        return a.lr * (step + 1) / warm
    if a.schedule == "constant":
        return a.lr
    prog = (step - warm) / max(1, total - warm)
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


def sft(model: torch.nn.Module, proc: Any, a: argparse.Namespace, evals: list, res: dict) -> None:
    phases = parse_phases(a.phases)
    total = sum(p["steps"] for p in phases)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.98), fused=True)
    step, t0 = 0, time.time()
    curve = []
    for pi, ph in enumerate(phases):
        data = make_samples(ph["steps"] * a.batch, ph["tasks"], 1000 * a.seed + 17 * pi + 1, a, ph["k"])
        run = 0.0
        for j in range(ph["steps"]):
            if time.time() - t0 > a.sft_budget_s:
                log(f"sft: time budget hit at step {step}")
                res["sft_steps_done"] = step
                return
            b = sft_batch(proc, data[j * a.batch : (j + 1) * a.batch])
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, a)
            loss, _ = sft_loss(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.clip:
                torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            run = loss.item() if j == 0 else 0.95 * run + 0.05 * loss.item()
            step += 1
            if step % a.log_every == 0:
                log(f"sft step {step}/{total} phase {pi} loss {run:.3f} {time.time() - t0:.0f}s")
                curve.append((step, round(run, 4), round(time.time() - t0, 1)))
            if a.eval_every and step % a.eval_every == 0:
                r = evaluate(model, proc, evals[: a.mid_eval_n], a.max_new)
                log(
                    f"  mid-eval step {step}: acc50 {r['acc50']:.3f} miou {r['miou']:.3f} parsed {r['parsed']:.2f}"
                )
                curve.append((step, "eval", round(r["acc50"], 3), round(r["miou"], 3)))
    res["sft_steps_done"] = step
    res["sft_curve"] = curve


# ------------------------------------------------------------------------------------------------
# GRPO


def grpo(model: torch.nn.Module, proc: Any, a: argparse.Namespace, phi_name: str, res: dict) -> None:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if p.requires_grad and "visual" not in n]
    opt = torch.optim.AdamW(params, lr=a.grpo_lr, weight_decay=0.0, fused=True)
    tasks = parse_phases(a.phases)[-1]["tasks"] if not a.grpo_tasks else a.grpo_tasks.split("+")
    k = parse_phases(a.phases)[-1]["k"]
    data = make_samples(a.grpo_steps * a.grpo_prompts, tasks, 7919 + a.seed, a, k)
    t0 = time.time()
    hist = []
    for step in range(a.grpo_steps):
        if time.time() - t0 > a.grpo_budget_s:
            log(f"grpo: time budget hit at step {step}")
            break
        chunk = data[step * a.grpo_prompts : (step + 1) * a.grpo_prompts]
        enc = proc(
            [prompt_text(proc, s) for s in chunk], [im for s in chunk for im in s.images], padding_side="left"
        )
        ro = generate(
            model,
            enc,
            proc.tokenizer,
            group_size=a.G,
            max_new_tokens=a.grpo_max_new,
            do_sample=True,
            temperature=a.temperature,
        )
        gt = [FRAME.to_model(s.box) for s in chunk for _ in range(a.G)]
        r_acc = torch.tensor(iou_reward(ro.texts, gt))
        r_fmt = torch.tensor(format_reward(ro.texts))
        r = r_acc + r_fmt
        adv = group_advantages(r, a.G)
        w = difficulty_weights(r_acc, a.G, phi_name)
        with torch.no_grad():
            ref_lp = completion_logprobs(ref, ro.prompt, ro.completion_ids, ro.completion_mask, a.G)
        lp = completion_logprobs(model, ro.prompt, ro.completion_ids, ro.completion_mask, a.G)
        terms = grpo_loss_terms(lp, None, ref_lp, adv, w, ro.completion_mask, beta=a.beta)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        if a.clip:
            torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        hist.append((round(r.mean().item(), 4), round(r_acc.mean().item(), 4), round(r_fmt.mean().item(), 3)))
        if step % 5 == 0:
            log(
                f"grpo[{phi_name}] step {step} reward {r.mean():.3f} acc {r_acc.mean():.3f} fmt {r_fmt.mean():.2f} "
                f"kl {terms.kl:.4f} len {ro.completion_mask.sum(1).float().mean():.1f} {time.time() - t0:.0f}s"
            )
    res[f"grpo_{phi_name}_steps"] = len(hist)
    res[f"grpo_{phi_name}_time_s"] = round(time.time() - t0, 1)
    res[f"grpo_{phi_name}_reward"] = [h[0] for h in hist]
    n = max(1, len(hist) // 4)
    res[f"grpo_{phi_name}_reward_first_last_quarter"] = (
        round(sum(h[0] for h in hist[:n]) / n, 4),
        round(sum(h[0] for h in hist[-n:]) / n, 4),
    )


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/demo_research.jsonl")
    ap.add_argument("--tag", default="")
    # model
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--mlp_mult", type=int, default=2)
    ap.add_argument("--rope_theta", type=float, default=3.0)
    ap.add_argument("--vision_dim", type=int, default=64)
    ap.add_argument("--vision_depth", type=int, default=2)
    ap.add_argument("--vision_heads", type=int, default=2)
    ap.add_argument("--untie", type=int, default=1)
    ap.add_argument("--freeze_embed", type=int, default=1)
    ap.add_argument("--freeze_vision", type=int, default=0)
    # data
    ap.add_argument("--image_size", type=int, default=112)
    ap.add_argument("--background", default="gradient")
    ap.add_argument("--num_images", type=int, default=None)
    ap.add_argument("--reasoning_style", default="short")
    ap.add_argument("--obj_min", type=float, default=0.2)
    ap.add_argument("--obj_max", type=float, default=0.45)
    ap.add_argument("--phases", default="tasks=single,k=0,steps=600")
    ap.add_argument("--eval_n", type=int, default=100)
    ap.add_argument("--mid_eval_n", type=int, default=50)
    ap.add_argument("--eval_every", type=int, default=0)
    ap.add_argument("--max_new", type=int, default=48)
    # sft
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min_lr_ratio", type=float, default=0.1)
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--warmup", type=float, default=0.03)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sft_budget_s", type=float, default=300)
    ap.add_argument("--log_every", type=int, default=25)
    # grpo
    ap.add_argument("--grpo_steps", type=int, default=0)
    ap.add_argument("--grpo_budget_s", type=float, default=120)
    ap.add_argument("--grpo_prompts", type=int, default=4)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--grpo_lr", type=float, default=2e-4)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--grpo_max_new", type=int, default=48)
    ap.add_argument("--grpo_tasks", default="")
    ap.add_argument("--phis", default="none,exp")
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    res: dict[str, Any] = {
        "tag": a.tag,
        "args": vars(a),
        "malloc_mmap_max": os.environ.get("MALLOC_MMAP_MAX_"),
    }
    T0 = time.time()
    proc = load_processor()
    model = build_model(a)
    model.train()
    res["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    res["trainable_M"] = round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2)
    last = parse_phases(a.phases)[-1]
    evals = make_samples(a.eval_n, last["tasks"], 99_991 + a.seed, a, last["k"])
    train_ref = make_samples(500, last["tasks"], 5 + a.seed, a, last["k"])
    res["constant"] = constant_box(train_ref, evals)
    t = time.time()
    res["base"] = evaluate(model, proc, evals, a.max_new)
    res["base_eval_s"] = round(time.time() - t, 1)
    log("base", res["base"]["acc50"], res["base"]["miou"], "constant", res["constant"])
    t = time.time()
    sft(model, proc, a, evals, res)
    res["sft_s"] = round(time.time() - t, 1)
    t = time.time()
    res["sft"] = evaluate(model, proc, evals, a.max_new)
    res["sft_eval_s"] = round(time.time() - t, 1)
    log("sft", res["sft"])
    if a.grpo_steps:
        state = copy.deepcopy(model.state_dict())
        for phi_name in a.phis.split(","):
            model.load_state_dict(state)
            grpo(model, proc, a, phi_name, res)
            res[f"grpo_{phi_name}"] = evaluate(model, proc, evals, a.max_new)
            log(f"grpo {phi_name}", res[f"grpo_{phi_name}"])
    res["total_s"] = round(time.time() - T0, 1)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")
    log("total", res["total_s"])
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
