"""``make demo``: the paper's pipeline in miniature on a CPU.

base eval -> CoT-SFT (a curriculum: one object first) -> GRPO (phi none) and GRPO-Difficulty
(phi exp) from the same stage-1 checkpoint -> evaluation of each, on seeded synthetic grounding
data, with the real Qwen2-VL architecture (a small preset), the exact tokenizer and the real
output format. Everything goes to ``--out`` (default ``runs/demo``):

    table.md / table.csv   per-task Acc@0.5, mean IoU and AVG per stage (paper Tables 4/5 layout),
                           with a constant-box baseline row
    figure3.png            share of groups with mIoU < 0.3 / 0.3-0.7 / > 0.7 over GRPO steps,
                           with the step's mean reward and the reward probe (:class:`RewardProbe`)
    predictions.png        held-out predictions with boxes drawn (green truth, red prediction)
    summary.json           every number above, the settings, the probe points and the wall times
    <stage>/version_0/     TensorBoard logs, configs, predictions (``tensorboard --logdir runs/demo``)

    python -m univg.demo --out runs/demo --seed 0          # the full run (about 13 minutes)
    python -m univg.demo --out runs/demo_smoke --smoke     # every artefact, tiny budgets (CI)
    python -m univg.demo --stage1 runs/demo/cot_sft/version_0/stage1.ckpt --set grpo_lr=2e-4 --out runs/s2
                                                           # stage 2 alone, other settings
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from univg.backbone import BackboneSpec
from univg.boxes import Qwen2VLFrame, box_iou
from univg.data.datamodules import GroundingDataModule
from univg.data.schema import GroundingSample
from univg.data.synthetic import generate_samples
from univg.metrics import metrics_from_records
from univg.modules import GRPOModule, SFTModule
from univg.rewards import compute_rewards
from univg.rollout import generate, model_inputs

FRAME = Qwen2VLFrame()


@dataclass
class Phase:
    """A stretch of the CoT-SFT curriculum: task types, distractor count, optimiser steps."""

    tasks: list[str]
    steps: int
    distractors: int | list[int] = 0  # a [low, high] range draws the count per sample


@dataclass
class DemoSettings:
    """Every knob of the miniature (the defaults are the measured recipe; see the README)."""

    seed: int = 0
    # model: Qwen2-VL architecture, small; a small text rope_theta so M-RoPE separates a 4x4..8x8
    # token grid (with 1e6 it barely rotates across it and the model collapses to a constant box)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    rope_theta: float = 3.0
    vision_dim: int = 64
    vision_depth: int = 2
    untie: bool = True
    freeze_embeddings: bool = True
    train_vision: bool = True
    # data
    image_size: int = 112
    background: str = "gradient"  # a colour gradient: each patch sees where it is
    object_size: tuple[float, float] = (0.3, 0.55)
    reasoning_style: str = "short"
    eval_tasks: list[str] = field(default_factory=lambda: ["single"])
    eval_n: int = 100
    # stage 1
    phases: list[Phase] = field(default_factory=lambda: [Phase(["single"], 1000)])
    sft_lr: float = 3e-3
    sft_batch: int = 8
    adam_betas: tuple[float, float] = (0.9, 0.98)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    # stage 2
    grpo_tasks: list[str] | None = None
    grpo_phis: tuple[str, ...] = ("none", "exp")
    probe_n: int = 16  # fixed prompts whose sampled reward is measured every probe_every steps (0: off)
    probe_every: int = 5
    grpo_steps: int = 20
    grpo_prompts: int = 8
    group_size: int = 8
    grpo_lr: float = 5e-4
    beta: float = 0.04
    scale_rewards: str = "group"
    loss_type: str = "grpo"
    temperature: float = 1.0
    max_new_tokens: int = 48

    def synthetic(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "reasoning_style": self.reasoning_style,
            "object_size": tuple(self.object_size),
        }

    def backbone(self, freeze_vision: bool) -> BackboneSpec:
        head_dim = self.hidden // self.heads
        half = head_dim // 2
        t = max(1, half // 4)
        h = (half - t) // 2
        overrides = {
            "text_config": {
                "hidden_size": self.hidden,
                "intermediate_size": 2 * self.hidden,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": self.rope_theta,
                    "mrope_section": [t, h, half - t - h],
                },
            },
            "vision_config": {
                "depth": self.vision_depth,
                "embed_dim": self.vision_dim,
                "hidden_size": self.hidden,
            },
            "tie_word_embeddings": not self.untie,
        }
        return BackboneSpec(
            preset="tiny",
            overrides=overrides,
            freeze_vision=freeze_vision,
            freeze_embeddings=self.freeze_embeddings,
        )


def smoke_settings(seed: int = 0) -> DemoSettings:
    """Tiny budgets: every artefact in about a minute (the CI test), numbers meaningless."""
    return DemoSettings(
        seed=seed,
        hidden=64,
        image_size=56,
        eval_n=8,
        phases=[Phase(["single"], 4), Phase(["single", "diff"], 2)],
        sft_batch=4,
        grpo_steps=2,
        grpo_prompts=2,
        group_size=4,
        max_new_tokens=24,
        probe_n=2,
        probe_every=1,
    )


class ListDataModule(GroundingDataModule):
    """In-memory train/test lists in a fixed order (the curriculum is the order)."""

    def __init__(self, train: list[GroundingSample], test: list[GroundingSample], **kwargs: Any) -> None:
        super().__init__(shuffle=False, **kwargs)
        self._lists = {"train": train, "val": None, "test": test}

    def read_split(self, split: str) -> list[GroundingSample] | None:
        return self._lists.get(split)


class StepRecorder(L.Callback):
    """Keeps the per-step GRPO logs (rewards, difficulty shares) for the Figure 3 plot."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        logs = getattr(module, "last_step_logs", None)
        if logs is not None and (not self.steps or self.steps[-1]["step"] != trainer.global_step):
            self.steps.append({"step": trainer.global_step, **{k: float(v) for k, v in logs.items()}})


class RewardProbe(L.Callback):
    """Mean reward of G sampled completions on a fixed set of prompts, every ``every`` GRPO steps.

    The training curve's per-step mean depends mostly on which few prompts a step drew; a fixed
    probe set sampled with the same random stream at every probe (common random numbers) isolates
    what the updates did to the policy. The probe draws from its own generator, so it does not
    change the training run's random stream.
    """

    def __init__(self, batch: dict[str, Any], every: int = 10, seed: int = 0) -> None:
        self.batch = batch
        self.every = every
        self.seed = seed
        self.points: list[dict[str, float]] = []

    @torch.no_grad()
    def probe(self, module: Any, step: int) -> dict[str, float]:
        if self.points and self.points[-1]["step"] == step:
            return self.points[-1]
        g = module.group_size
        roll = generate(
            module.model,
            model_inputs(self.batch),
            module.tokenizer,
            **module.sampling_kwargs(),
            generator=torch.Generator().manual_seed(self.seed),
        )
        boxes = self.batch["boxes"].repeat_interleave(g, dim=0).tolist()
        rewards = compute_rewards(module.reward_weights, roll.texts, boxes, frame=module.frame)
        point = {"step": float(step), **{k: float(v.mean()) for k, v in rewards.items()}}
        self.points.append(point)
        if module.logger is not None:
            for k, v in point.items():
                if k != "step":
                    module.logger.experiment.add_scalar(f"probe/reward_{k}", v, step)
        return point

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        self.probe(module, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 or 0 < (trainer.max_steps or 0) <= step:  # every N steps and the last
            self.probe(module, step)


def _trainer(out: Path, name: str, max_steps: int = -1, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1 if max_steps > 0 else 1,
        logger=TensorBoardLogger(save_dir=str(out), name=name, version=0),
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        callbacks=list(callbacks),
        enable_model_summary=False,
    )


def _evaluate(module: Any, data: ListDataModule, out: Path, name: str) -> dict[str, float]:
    trainer = _trainer(out, name)
    trainer.test(module, datamodule=data, verbose=False)
    return dict(module.last_results["test"]["metrics"])


def constant_box_metrics(
    train: Sequence[GroundingSample], test: Sequence[GroundingSample]
) -> dict[str, float]:
    """The mean training box (model frame) predicted for every held-out sample."""
    boxes = torch.tensor([FRAME.to_model(s.box) for s in train], dtype=torch.float32)
    const = [int(round(v)) for v in boxes.mean(0).tolist()]
    records = []
    for s in test:
        iou = box_iou(const, FRAME.to_model(s.box))
        records.append(
            {"task": s.task, "iou": iou, "pred": const, "iou_compatible": iou, "pred_compatible": const}
        )
    return metrics_from_records(records)


def held_out_set(cfg: DemoSettings) -> list[GroundingSample]:
    """The held-out evaluation samples (a seed of their own, disjoint from every training seed)."""
    return generate_samples(
        cfg.eval_n, tasks=cfg.eval_tasks, image_size=cfg.image_size, seed=10_000 + cfg.seed, **cfg.synthetic()
    )


def _sft_train_set(cfg: DemoSettings) -> list[GroundingSample]:
    samples: list[GroundingSample] = []
    for i, ph in enumerate(cfg.phases):
        n = ph.steps * cfg.sft_batch
        d = ph.distractors if isinstance(ph.distractors, int) else tuple(ph.distractors)
        samples += generate_samples(
            n,
            tasks=ph.tasks,
            image_size=cfg.image_size,
            seed=1000 * cfg.seed + 17 * i + 1,
            num_distractors=d,
            **cfg.synthetic(),
        )
    return samples


def run_demo(cfg: DemoSettings, out: str | os.PathLike = "runs/demo") -> dict[str, Any]:
    """Run every stage; return (and write) the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    test = held_out_set(cfg)
    train = _sft_train_set(cfg)
    data_kw = dict(batch_size=cfg.sft_batch, eval_batch_size=50, target_format="cot", seed=cfg.seed)
    sft_data = ListDataModule(train, test, **data_kw)
    rows: dict[str, dict[str, float]] = {"constant box": constant_box_metrics(train, test)}

    # ---- base: the untrained model
    t0 = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    sft = SFTModule(
        backbone=cfg.backbone(freeze_vision=not cfg.train_vision),
        lr=cfg.sft_lr,
        warmup_ratio=cfg.warmup_ratio,
        min_lr_ratio=cfg.min_lr_ratio,
        adam_betas=cfg.adam_betas,
        max_new_tokens=cfg.max_new_tokens,
        run_name="base",
        num_pictures=0,
    )
    rows["base (untrained)"] = _evaluate(sft, sft_data, out, "base")
    times["base_eval"] = time.perf_counter() - t0

    # ---- stage 1: CoT-SFT over the curriculum (one run, one schedule; the data order is the curriculum)
    t0 = time.perf_counter()
    steps = sum(p.steps for p in cfg.phases)
    sft.run_name = "cot_sft"
    trainer = _trainer(out, "cot_sft", max_steps=steps)
    trainer.fit(sft, datamodule=sft_data)
    ckpt = out / "cot_sft" / "version_0" / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)
    times["cot_sft"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sft.num_pictures = 8
    rows["CoT-SFT"] = _evaluate(sft, sft_data, out, "cot_sft_eval")
    times["cot_sft_eval"] = time.perf_counter() - t0

    # ---- stage 2: GRPO (phi none) and GRPO-Difficulty (phi exp) from the same checkpoint
    curves, probes, grpo_rows, grpo_times = run_grpo_stage(cfg, ckpt, test, out)
    rows.update(grpo_rows)
    times.update(grpo_times)
    times["total"] = time.perf_counter() - t_all

    summary = write_outputs(cfg, out, rows, curves, probes, times)
    collect_pictures(out, out / "predictions.png")
    return summary


def write_outputs(
    cfg: DemoSettings,
    out: Path,
    rows: dict[str, dict[str, float]],
    curves: dict[str, list[dict[str, float]]],
    probes: dict[str, list[dict[str, float]]],
    times: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """``summary.json`` (settings, metrics, curves, probe points, seconds), the table and Figure 3."""
    summary = {
        "settings": asdict(cfg),
        **extra,
        "rows": rows,
        "grpo_curves": curves,
        "reward_probe": probes,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_table(rows, cfg.eval_tasks, out)
    plot_figure3(curves, out / "figure3.png", probes)
    return summary


def run_grpo_stage(
    cfg: DemoSettings,
    ckpt: str | os.PathLike,
    test: list[GroundingSample],
    out: Path,
) -> tuple[
    dict[str, list[dict[str, float]]],
    dict[str, list[dict[str, float]]],
    dict[str, dict[str, float]],
    dict[str, float],
]:
    """Stage 2 from a stage-1 checkpoint: a run per phi of ``cfg.grpo_phis`` (default GRPO, phi
    none, and GRPO-Difficulty, phi exp).

    Returns, per run: the per-step logs (Figure 3), the reward-probe points, the held-out metrics,
    and the seconds each part took.
    """
    grpo_tasks = cfg.grpo_tasks or cfg.phases[-1].tasks
    prompts = generate_samples(
        cfg.grpo_steps * cfg.grpo_prompts,
        tasks=grpo_tasks,
        image_size=cfg.image_size,
        seed=7919 + cfg.seed,
        **cfg.synthetic(),
    )
    probe_set = generate_samples(
        cfg.probe_n, tasks=grpo_tasks, image_size=cfg.image_size, seed=20_000 + cfg.seed, **cfg.synthetic()
    )
    curves: dict[str, list[dict[str, float]]] = {}
    probes: dict[str, list[dict[str, float]]] = {}
    rows: dict[str, dict[str, float]] = {}
    times: dict[str, float] = {}
    labels = {"none": "GRPO", "exp": "GRPO-Difficulty"}
    for phi in cfg.grpo_phis:
        label = labels.get(phi, f"GRPO-Difficulty ({phi})")
        t0 = time.perf_counter()
        L.seed_everything(cfg.seed, verbose=False)
        grpo = GRPOModule(
            backbone=cfg.backbone(freeze_vision=True),
            init_checkpoint=str(ckpt),
            lr=cfg.grpo_lr,
            warmup_ratio=0.0,
            schedule="constant",
            group_size=cfg.group_size,
            temperature=cfg.temperature,
            max_completion_length=cfg.max_new_tokens,
            max_new_tokens=cfg.max_new_tokens,
            beta=cfg.beta,
            scale_rewards=cfg.scale_rewards,
            loss_type=cfg.loss_type,
            phi=phi,
            prompts_per_step=cfg.grpo_prompts,
            log_completions_every=10,
            run_name=f"grpo_{phi}",
            num_pictures=8,
        )
        grpo_data = ListDataModule(
            prompts,
            test,
            batch_size=cfg.grpo_prompts,
            eval_batch_size=50,
            train_mode="generate",
            seed=cfg.seed,
        )
        rec = StepRecorder()
        probe = None
        if probe_set:
            probe = RewardProbe(grpo_data.collator("generate")(probe_set), cfg.probe_every, seed=cfg.seed)
        callbacks = [c for c in (rec, probe) if c is not None]
        _trainer(out, f"grpo_{phi}", max_steps=cfg.grpo_steps, callbacks=callbacks).fit(
            grpo, datamodule=grpo_data
        )
        curves[label] = rec.steps
        if probe is not None:
            probes[label] = probe.points
        times[f"grpo_{phi}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows[label] = _evaluate(grpo, grpo_data, out, f"grpo_{phi}_eval")
        times[f"grpo_{phi}_eval"] = time.perf_counter() - t0
    return curves, probes, rows, times


def write_table(rows: dict[str, dict[str, float]], tasks: Sequence[str], out: Path) -> str:
    """Markdown and CSV: a row per stage, Acc@0.5 per task, mean IoU, AVG (unweighted over tasks)."""
    header = ["stage", *[f"{t} Acc@0.5" for t in tasks], "Acc@0.5", "mean IoU", "AVG"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for name, m in rows.items():
        cells = [name, *[f"{100 * m.get(f'acc@0.5/{t}', 0.0):.1f}" for t in tasks]]
        cells += [
            f"{100 * m.get('acc@0.5', 0.0):.1f}",
            f"{100 * m.get('miou', 0.0):.1f}",
            f"{100 * m.get('avg', 0.0):.1f}",
        ]
        table.append(cells)
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    return text


def plot_figure3(
    curves: dict[str, list[dict[str, float]]],
    path: Path,
    probes: dict[str, list[dict[str, float]]] | None = None,
) -> None:
    """Paper Figure 3: share of groups per mIoU band over GRPO steps, one panel per run, with the
    step's mean reward and (when given) the reward on the fixed probe prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = [
        ("difficulty/miou_lt_0.3", "mIoU < 0.3"),
        ("difficulty/miou_0.3_0.7", "0.3-0.7"),
        ("difficulty/miou_gt_0.7", "> 0.7"),
    ]
    # top row: the paper's Figure 3 (shares of groups); bottom row: rewards on their own scale
    fig, axes = plt.subplots(
        2, len(curves), figsize=(5 * len(curves), 6.4), sharex=True, sharey="row", squeeze=False
    )
    for col, (label, steps) in enumerate(curves.items()):
        top, bottom = axes[0][col], axes[1][col]
        xs = [s["step"] for s in steps]
        for key, name in bands:
            top.plot(xs, [s.get(key, 0.0) for s in steps], marker="o", markersize=3, label=name)
        top.set_title(label)
        top.set_ylim(0, 1)
        bottom.plot(
            xs, [s.get("reward/total_mean", 0.0) for s in steps], "k--", linewidth=1, label="step's prompts"
        )
        points = (probes or {}).get(label, [])
        if points:
            bottom.plot(
                [p["step"] for p in points],
                [p["total"] for p in points],
                "ks-",
                markersize=4,
                label="fixed probe prompts",
            )
        bottom.set_xlabel("GRPO step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of groups")
    axes[1][0].set_ylabel("mean reward (IoU + format)")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    axes[1][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def collect_pictures(out: Path, path: Path, per_stage: int = 4) -> None:
    """One sheet of prediction pictures: a row per evaluated stage."""
    from PIL import Image, ImageDraw

    stages = [d for d in sorted(out.glob("*_eval")) if d.is_dir()]
    rows = []
    for d in stages:
        pics = sorted(d.rglob("pictures_test/*.png"))[:per_stage]
        if pics:
            rows.append((d.name.removesuffix("_eval"), [Image.open(p).convert("RGB") for p in pics]))
    if not rows:
        Image.new("RGB", (320, 40), "white").save(path)
        return
    w = max(sum(im.width for im in ims) for _, ims in rows) + 120
    h = sum(max(im.height for im in ims) for _, ims in rows)
    sheet = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for name, ims in rows:
        draw.text((4, y + 4), name, fill="black")
        x = 120
        for im in ims:
            sheet.paste(im, (x, y))
            x += im.width
        y += max(im.height for im in ims)
    sheet.save(path)


def apply_overrides(cfg: DemoSettings, pairs: Sequence[str]) -> DemoSettings:
    """``field=value`` strings onto a copy of the settings, the value parsed as the field's type.

    >>> apply_overrides(DemoSettings(), ["grpo_lr=1e-3", "grpo_prompts=8"]).grpo_prompts
    8
    """
    cfg = copy.deepcopy(cfg)
    names = {f.name for f in fields(cfg)}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {pair!r}: expected field=value with field one of {sorted(names)}")
        current = getattr(cfg, key)
        if isinstance(current, bool):
            value: Any = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float, str)):
            value = type(current)(raw)
        else:
            value = json.loads(raw)
            if isinstance(current, tuple):
                value = tuple(value)
        setattr(cfg, key, value)
    return cfg


def run_stage2(cfg: DemoSettings, ckpt: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Stage 2 only, from an existing stage-1 checkpoint (to study GRPO settings without re-running SFT)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t_all = time.perf_counter()
    curves, probes, rows, times = run_grpo_stage(cfg, ckpt, held_out_set(cfg), out)
    times["total"] = time.perf_counter() - t_all
    return write_outputs(cfg, out, rows, curves, probes, times, stage1_checkpoint=str(ckpt))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m univg.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny budgets: every artefact in about a minute")
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a DemoSettings field"
    )
    p.add_argument(
        "--stage1", metavar="CKPT", help="skip base eval and CoT-SFT: run stage 2 from this stage1.ckpt"
    )
    a = p.parse_args(argv)
    cfg = smoke_settings(a.seed) if a.smoke else DemoSettings(seed=a.seed)
    cfg = apply_overrides(cfg, a.set)
    if a.stage1:
        summary = run_stage2(cfg, a.stage1, a.out)
    else:
        summary = run_demo(cfg, a.out)
    print((Path(a.out) / "table.md").read_text())
    print(f"univg demo: {summary['seconds']['total']:.0f} s; artefacts in {a.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
