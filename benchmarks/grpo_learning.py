"""GRPO learning curves, ours against TRL's ``GRPOTrainer``, from the demo's stage-1 checkpoint.

Both frameworks start from the same CoT-SFT checkpoint (``python -m univg.demo`` writes it to
``runs/demo/cot_sft/version_0/stage1.ckpt``) and train on the demo's stage-2 prompts with the demo's
stage-2 settings (:class:`univg.demo.DemoSettings`: G, temperature, lr, prompts per step, KL beta,
max completion length), plain GRPO (phi none: TRL has no difficulty weight):

- ``ours``: :class:`univg.modules.GRPOModule` through a Lightning fit, as the demo's stage 2 runs it
  (:func:`univg.demo.stages.run_grpo`, with phi none and the training seed apart from the data's).
- ``trl``: TRL 1.16 ``GRPOTrainer`` with completion-only scoring forced and the defaults that differ
  aligned as in ``benchmarks/grpo_step.py`` (loss type grpo, group scaling, fp32, beta, dropout
  off, constant lr, no weight decay, grad-norm clip 1.0, AdamW (0.9, 0.999)), the same end tokens
  (``<|im_end|>``, ``<|endoftext|>``) and suppressed tokens (image, video), the same frozen
  parameters (vision tower and embeddings), the same prompt tokens (univg's processor through
  ``grpo_step``'s adapter) and the same rewards (univg's accuracy + format as TRL reward functions).

What is measured, for both with the same code (TRL's weights are copied into a univg module):

- the reward probe (:class:`univg.demo.probe.RewardProbe`): G sampled completions for the demo's 16
  fixed probe prompts with a fixed random stream, every ``--probe-every`` optimiser steps; the
  curve is its mean IoU (the accuracy reward);
- at the end, the held-out Acc@0.5 and mIoU (greedy; the demo's evaluation set and evaluation);
- wall time of the training (probes excluded) and of the evaluation.

The data (prompts, probe prompts, held-out set) are the demo's for ``--data-seed`` (0: the
checkpoint's); ``--seeds`` are training seeds (the sampling stream of the rollouts), the same
for both frameworks. Each run is a process of its own (numerics pinned as ``python -m univg.demo``
pins them, 2 threads); after each run the JSON is rewritten, and runs already in it with the same
settings are not run again (so a longer job can be resumed or extended by seeds).

Usage::

    python benchmarks/grpo_learning.py                        # 60 steps, seeds 0,1,2 (the full run)
    python benchmarks/grpo_learning.py --steps 20 --seeds 0   # smaller
    python benchmarks/grpo_learning.py --lr 2e-3              # another lr (both frameworks)
    python benchmarks/grpo_learning.py --quick                # smoke: 2 steps of each, tiny sets
    # what fitted the time on a shared 2-core machine: 10 steps, 3 seeds, ours and TRL side by
    # side on one thread each
    python benchmarks/grpo_learning.py --steps 10 --seeds 0,1,2 --threads 1 --jobs 2 \
        --out benchmarks/results/grpo_learning_lr2e-4_10steps.json

Writes ``--out`` (JSON: settings, every run's probe points, per-step logs, metrics and seconds)
and a PNG of the curves beside it (when matplotlib is installed), and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

FRAMEWORKS = ("ours", "trl")
STAGE1 = "runs/demo/cot_sft/version_0/stage1.ckpt"
#: The reward-probe number the curves show: mean IoU of the sampled completions (accuracy reward).
CURVE = "accuracy"


# ------------------------------------------------------------------------------------------ setup
def demo_settings(args: argparse.Namespace) -> Any:
    """The demo's settings (stage 2 of ``--data-seed``) with this run's steps, lr and probe interval."""
    from univg.demo.settings import DemoSettings

    cfg = DemoSettings(seed=args.data_seed)
    changes: dict[str, Any] = {"grpo_steps": args.steps, "probe_every": args.probe_every}
    if args.lr is not None:
        changes["grpo_lr"] = args.lr
    if args.quick:  # numbers meaningless: every code path in well under a minute per run
        changes.update(grpo_prompts=2, group_size=4, probe_n=4, eval_n=8, max_new_tokens=16)
    return dataclasses.replace(cfg, **changes)


def settings_record(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that decides a run's numbers (a stored run is reused only under the same record)."""
    cfg = demo_settings(args)
    keys = (
        "grpo_steps grpo_prompts group_size grpo_lr beta temperature max_new_tokens scale_rewards "
        "loss_type probe_n probe_every eval_n eval_split eval_tasks"
    ).split()
    return {
        "stage1_checkpoint": str(args.stage1),
        "data_seed": args.data_seed,
        "phi": "none",
        "quick": args.quick,
        "threads": args.threads,
        **{k: getattr(cfg, k) for k in keys},
    }


def grpo_module(cfg: Any, ckpt: str, name: str) -> Any:
    """The demo's stage-2 ``GRPOModule`` (:func:`univg.demo.stages.run_grpo`), phi none."""
    from univg.modules import GRPOModule

    return GRPOModule(
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
        phi="none",
        prompts_per_step=cfg.grpo_prompts,
        log_completions_every=0,
        run_name=name,
        num_pictures=0,
    )


def demo_data(cfg: Any) -> tuple[Any, Any]:
    """The demo's stage-2 data module (its prompts in order, its held-out set) and the probe batch."""
    from univg.demo.sets import eval_set, probe_set, stage2_prompts
    from univg.demo.stages import ListDataModule

    data = ListDataModule(
        stage2_prompts(cfg),
        eval_set(cfg),
        batch_size=cfg.grpo_prompts,
        eval_batch_size=50,
        train_mode="generate",
        seed=cfg.seed,
    )
    return data, data.collator("generate")(probe_set(cfg))


class TimedProbe:
    """A :class:`univg.demo.probe.RewardProbe` whose probes are timed (to leave them out of the
    training's wall time)."""

    def __init__(self, batch: dict[str, Any], every: int, seed: int) -> None:
        from univg.demo.probe import RewardProbe

        self.seconds = 0.0
        self.cpu_seconds = 0.0
        outer = self

        self.start = time.perf_counter()

        class Timed(RewardProbe):
            def probe(self, module: Any, step: int) -> dict[str, float]:
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    point = super().probe(module, step)
                finally:
                    outer.seconds += time.perf_counter() - t0
                    outer.cpu_seconds += time.process_time() - c0
                outer.tick(f"probe at step {step}: {point}")
                return point

            def on_train_batch_end(self, trainer: Any, module: Any, *a: Any) -> None:
                outer.tick(f"step {trainer.global_step}")
                super().on_train_batch_end(trainer, module, *a)

        self.callback = Timed(batch, every, seed=seed)

    def tick(self, what: str) -> None:
        """A progress line on stderr (the run's log)."""
        print(f"[{time.perf_counter() - self.start:7.1f} s] {what}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ ours
def run_ours(args: argparse.Namespace, seed: int, logdir: Path) -> dict[str, Any]:
    import lightning as L

    from univg.demo.probe import StepRecorder
    from univg.demo.stages import _evaluate, _trainer

    cfg = demo_settings(args)
    data, probe_batch = demo_data(cfg)
    L.seed_everything(seed, verbose=False)  # the rollouts' sampling stream
    module = grpo_module(cfg, args.stage1, f"ours_seed{seed}")
    rec, probe = StepRecorder(), TimedProbe(probe_batch, cfg.probe_every, seed=cfg.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = _trainer(logdir, f"ours_seed{seed}", max_steps=cfg.grpo_steps, callbacks=[rec, probe.callback])
    trainer.fit(module, datamodule=data)
    fit, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    metrics = _evaluate(module, data, logdir, f"ours_seed{seed}_eval")
    return {
        "probe": probe.callback.points,
        "steps": rec.steps,
        "metrics": metrics,
        "optimiser_steps": int(trainer.global_step),
        "seconds": {
            "train": fit - probe.seconds,
            "train_cpu": fit_cpu - probe.cpu_seconds,  # process CPU seconds: less sensitive to load
            "probes": probe.seconds,
            "eval": time.perf_counter() - t0,
        },
    }


# ------------------------------------------------------------------------------------------ TRL
def trl_rows(data: Any, samples: list[Any]) -> list[dict[str, Any]]:
    """TRL dataset rows of the stage-2 prompts: the chat messages and images our collator encodes,
    and what our rewards score against (box in the model frame, answer format, resized size)."""
    from univg.core.prompts import build_messages

    collate = data.collator("generate")
    rows = []
    for s in samples:
        b = collate([s])
        rows.append(
            {
                "prompt": build_messages(s, collate.prompt_template),
                "images": list(s.images),
                "box": b["boxes"][0].tolist(),
                "answer_format": b["answer_formats"][0],
                "frame_size": list(b["frame_sizes"][0]),
            }
        )
    return rows


def trl_rewards(frame: Any) -> list[Any]:
    """univg's accuracy (IoU) and format rewards as TRL reward functions (weight 1 each, as ours)."""
    from univg.rl.rewards import compute_rewards

    def score(
        name: str, completions: list[Any], box: Any, answer_format: Any, frame_size: Any
    ) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        sizes = [tuple(s) for s in frame_size]
        out = compute_rewards({name: 1.0}, texts, box, frame=frame, answer_formats=answer_format, sizes=sizes)
        return out[name].tolist()

    def accuracy(prompts: Any, completions: Any, box: Any, answer_format: Any, frame_size: Any, **_: Any):
        return score("accuracy", completions, box, answer_format, frame_size)

    def format_reward(
        prompts: Any, completions: Any, box: Any, answer_format: Any, frame_size: Any, **_: Any
    ):
        return score("format", completions, box, answer_format, frame_size)

    return [accuracy, format_reward]


def run_trl(args: argparse.Namespace, seed: int, logdir: Path) -> dict[str, Any]:
    import torch
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from grpo_step import _trl_processor  # benchmarks/ is on sys.path: the script's own folder
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from univg.demo.stages import _evaluate
    from univg.rl.rollout import EOS_IDS, SUPPRESS_IDS

    # completion-only scoring: TRL takes its compact path only with Triton (benchmarks/grpo_step.py)
    trl_utils._use_triton = lambda device: True
    cfg = demo_settings(args)
    data, probe_batch = demo_data(cfg)
    # the probe's and the evaluation's module: univg's, holding a copy of TRL's weights when measured
    shell = grpo_module(cfg, args.stage1, f"trl_seed{seed}")
    shell.configure_model()  # the stage-1 checkpoint in univg's model
    model = shell.model
    tmp = tempfile.mkdtemp(prefix="univg_trl_learning_")
    model.generation_config.eos_token_id = list(EOS_IDS)  # TRL's end tokens (and completion mask)
    model.save_pretrained(os.path.join(tmp, "model"))  # a path: TRL builds the beta > 0 reference from it
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    samples = data.read_split("train")
    config = GRPOConfig(
        output_dir=os.path.join(tmp, "out"),
        per_device_train_batch_size=cfg.grpo_prompts * cfg.group_size,
        gradient_accumulation_steps=1,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_new_tokens,
        generation_kwargs={"eos_token_id": list(EOS_IDS), "suppress_tokens": list(SUPPRESS_IDS)},
        temperature=cfg.temperature,
        top_p=1.0,
        top_k=0,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_iterations=1,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        learning_rate=cfg.grpo_lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_steps=cfg.grpo_steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        shuffle_dataset=False,  # the demo's prompt order
        seed=seed,
        model_init_kwargs={"dtype": "float32"},
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=os.path.join(tmp, "model"),
        reward_funcs=trl_rewards(shell.frame),
        args=config,
        train_dataset=Dataset.from_list(trl_rows(data, samples)),  # images stored as PNG: lossless
        processing_class=_trl_processor(data.processor),
    )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    names = dict(policy.named_parameters())
    if set(names) != set(trainable):
        raise RuntimeError(f"TRL's model has other parameters than univg's: {set(names) ^ set(trainable)}")
    for n, p in names.items():  # frozen vision tower and embeddings, as ours
        p.requires_grad_(trainable[n])

    # the prompt tokens TRL trains on must be the ones our collator makes
    checks: dict[str, Any] = {}
    orig = trainer._generate_and_score_completions

    def prepare(inputs: list[dict]) -> dict[str, Any]:
        out = orig(inputs)
        if "prompt_tokens_match" not in checks:
            ours = data.collator("generate")(samples[: cfg.grpo_prompts])
            theirs = [r[m.bool()].tolist() for r, m in zip(out["prompt_ids"], out["prompt_mask"])]
            mine = [r[m.bool()].tolist() for r, m in zip(ours["input_ids"], ours["attention_mask"])]
            checks["prompt_tokens_match"] = theirs[:: cfg.group_size] == mine
        return out

    trainer._generate_and_score_completions = prepare
    probe = TimedProbe(probe_batch, cfg.probe_every, seed=cfg.seed)
    step_logs: list[dict[str, float]] = []

    def measure(step: int) -> None:
        with torch.no_grad():
            model.load_state_dict(policy.state_dict())
        probe.callback.probe(shell, step)

    class Probe(TrainerCallback):
        def on_train_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            measure(state.global_step)

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step
            probe.tick(f"step {step}")
            if step % cfg.probe_every == 0 or step >= cfg.grpo_steps:
                measure(step)

        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            floats = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            step_logs.append({"step": state.global_step, **floats})

    trainer.add_callback(Probe())
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    fit, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    with torch.no_grad():
        model.load_state_dict(policy.state_dict())
    metrics = _evaluate(shell, data, logdir, f"trl_seed{seed}_eval")
    return {
        "probe": probe.callback.points,
        "steps": step_logs,
        "metrics": metrics,
        "optimiser_steps": int(trainer.state.global_step),
        "checks": checks,
        "seconds": {
            "train": fit - probe.seconds,
            "train_cpu": fit_cpu - probe.cpu_seconds,  # process CPU seconds: less sensitive to load
            "probes": probe.seconds,
            "eval": time.perf_counter() - t0,
        },
    }


# ------------------------------------------------------------------------------------------ report
def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def curve(run: dict[str, Any]) -> dict[int, float]:
    return {int(p["step"]): p[CURVE] for p in run["probe"]}


#: The per-step KL to the reference (k3 estimator, mean over completions) in each framework's logs.
KL_KEY = {"ours": "train/kl", "trl": "kl"}


def last_kl(framework: str, run: dict[str, Any]) -> float | None:
    """KL to the reference at the last optimiser step: how far the updates moved the policy."""
    vals = [s[KL_KEY[framework]] for s in run["steps"] if KL_KEY[framework] in s]
    return vals[-1] if vals else None


def table(runs: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    """Markdown: probe IoU per step (mean over seeds, then every seed) with the mean KL to the
    reference at that step, then each run's final numbers."""
    curves = {f: {s: curve(runs[f"{f}/{s}"]) for s in seeds if f"{f}/{s}" in runs} for f in FRAMEWORKS}
    kls = {
        f: {
            s: {int(x["step"]): x[KL_KEY[f]] for x in runs[f"{f}/{s}"]["steps"] if KL_KEY[f] in x}
            for s in curves[f]
        }
        for f in FRAMEWORKS
    }
    steps = sorted({st for c in curves.values() for v in c.values() for st in v})
    head = ["step", "ours mean", "TRL mean"]
    head += [f"ours s{s}" for s in seeds] + [f"TRL s{s}" for s in seeds] + ["KL ours", "KL TRL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(per_seed: dict[int, dict[int, float]], st: int) -> float | None:
        vals = [c[st] for c in per_seed.values() if st in c]
        return statistics.fmean(vals) if vals else None

    for st in steps:
        cells = [str(st), _fmt(mean(curves["ours"], st)), _fmt(mean(curves["trl"], st))]
        cells += [_fmt(curves[f].get(s, {}).get(st)) for f in FRAMEWORKS for s in seeds]
        cells += [_fmt(mean(kls[f], st)) for f in FRAMEWORKS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "| run | probe IoU first -> last (gain) | KL at last step | held-out Acc@0.5 | mIoU "
        "| train s (CPU s) | s/step | eval s |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for f in FRAMEWORKS:
        for s in seeds:
            r = runs.get(f"{f}/{s}")
            if r is None:
                continue
            c = curve(r)
            first, last = c[min(c)], c[max(c)]
            m, sec = r["metrics"], r["seconds"]
            cpu = sec.get("train_cpu", float("nan"))
            lines.append(
                f"| {f} seed {s} | {first:.3f} -> {last:.3f} ({last - first:+.3f}) | {_fmt(last_kl(f, r))} | "
                f"{100 * m['acc@0.5']:.1f} | {100 * m['miou']:.1f} | {sec['train']:.0f} ({cpu:.0f}) | "
                f"{sec['train'] / max(1, r['optimiser_steps']):.1f} | {sec['eval']:.0f} |"
            )
    return "\n".join(lines) + "\n"


#: Probe points averaged for a run's end value: the last one, and the last three (the probe is noisy
#: from one point to the next, so the second reading is the steadier one).
TAILS = (1, 3)


def gain(run: dict[str, Any], tail: int = 1) -> float:
    """The run's end value (mean of its last ``tail`` probe points) minus its first probe point."""
    c = curve(run)
    steps = sorted(c)
    return statistics.fmean(c[s] for s in steps[-tail:]) - c[steps[0]]


def verdict(runs: dict[str, dict[str, Any]], seeds: list[int], tail: int = 1) -> str:
    """The claim the curves test, in words: does each framework learn (every seed's gain > 0), and
    is ours within the seed spread of TRL (|mean gain difference| <= the larger seed sd)? A gain is
    the mean of a run's last ``tail`` probe points minus its first.

    >>> def run(*ious):
    ...     return {"probe": [{"step": 10.0 * i, "accuracy": v} for i, v in enumerate(ious)]}
    >>> runs = {"ours/0": run(0.40, 0.44, 0.46), "ours/1": run(0.40, 0.42, 0.44),
    ...         "trl/0": run(0.40, 0.45, 0.47), "trl/1": run(0.40, 0.41, 0.43)}
    >>> print(verdict(runs, [0, 1], tail=2))
    ours: gain +0.040 +- 0.014 (seeds 0, 1: +0.050, +0.030); learns: every seed's gain > 0
    trl: gain +0.040 +- 0.028 (seeds 0, 1: +0.060, +0.020); learns: every seed's gain > 0
    ours - TRL: +0.000, within the seed spread (sd 0.028): as fast as TRL per optimiser step
    >>> print(verdict({**runs, "ours/1": run(0.40, 0.40, 0.39)}, [0, 1]).splitlines()[0])
    ours: gain +0.025 +- 0.049 (seeds 0, 1: +0.060, -0.010); does not learn on every seed
    """
    lines, means, sds = [], {}, []
    for f in FRAMEWORKS:
        have = [s for s in seeds if f"{f}/{s}" in runs]
        if not have:
            continue
        gains = [gain(runs[f"{f}/{s}"], tail) for s in have]
        means[f] = statistics.fmean(gains)
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        sds.append(sd)
        learns = (
            "learns: every seed's gain > 0" if all(g > 0 for g in gains) else "does not learn on every seed"
        )
        each = ", ".join(f"{g:+.3f}" for g in gains)
        seeds_text = ", ".join(map(str, have))
        lines.append(f"{f}: gain {means[f]:+.3f} +- {sd:.3f} (seeds {seeds_text}: {each}); {learns}")
    if len(means) == 2:
        diff, spread = means["ours"] - means["trl"], max(sds)
        within = abs(diff) <= spread
        lines.append(
            f"ours - TRL: {diff:+.3f}, "
            + (
                f"within the seed spread (sd {spread:.3f}): as fast as TRL per optimiser step"
                if within
                else f"outside the seed spread (sd {spread:.3f}): {'faster' if diff > 0 else 'slower'} than TRL"
            )
        )
    return "\n".join(lines)


def figure(runs: dict[str, dict[str, Any]], seeds: list[int], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure", file=sys.stderr)
        return None
    fig, (ax, ax_kl) = plt.subplots(1, 2, figsize=(10, 4.2))
    for f, colour in zip(FRAMEWORKS, ("tab:blue", "tab:orange")):
        done = [runs[f"{f}/{s}"] for s in seeds if f"{f}/{s}" in runs]
        if not done:
            continue
        label = "ours (GRPOModule)" if f == "ours" else "TRL GRPOTrainer"
        cs = [curve(r) for r in done]
        for c in cs:
            ax.plot(sorted(c), [c[k] for k in sorted(c)], color=colour, alpha=0.35, lw=1)
        common = sorted(set.intersection(*(set(c) for c in cs)))
        ax.plot(
            common, [statistics.fmean(c[k] for c in cs) for k in common], color=colour, lw=2.2, label=label
        )
        for i, r in enumerate(done):
            pts = [(x["step"], x[KL_KEY[f]]) for x in r["steps"] if KL_KEY[f] in x]
            ax_kl.plot(*zip(*pts), color=colour, alpha=0.7, lw=1.2, label=label if i == 0 else None)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("reward probe: mean sampled IoU")
    ax_kl.set_xlabel("optimiser step")
    ax_kl.set_ylabel("KL to the reference (k3, per step)")
    fig.suptitle(title, fontsize=9)
    for a in (ax, ax_kl):
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ main
def provenance() -> dict[str, Any]:
    """The code that ran: the commit and the files changed beside it (a shared checkout)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip("\n")

    return {"git_commit": git("rev-parse", "HEAD"), "git_changed": git("status", "--short").splitlines()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--lr", type=float, default=None, help="learning rate of both (default: the demo's)")
    p.add_argument("--probe-every", type=int, default=5, help="reward probe every N optimiser steps")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, from ours,trl")
    p.add_argument("--stage1", default=STAGE1, help="the demo's stage-1 checkpoint")
    p.add_argument("--data-seed", type=int, default=0, help="the demo seed whose prompts and sets are used")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON (default benchmarks/results/grpo_learning_lr<lr>.json)"
    )
    p.add_argument(
        "--logdir", type=Path, default=Path("runs/grpo_learning"), help="Lightning logs, predictions"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads per run (2: the demo's pinned numerics; 1 splits reductions otherwise)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at once (2: ours and TRL of a seed side by side)"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 2 steps of each, tiny sets, seed 0")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p


def worker(args: argparse.Namespace) -> int:
    from univg.demo.numerics import THREAD_ENV, pin_environment

    pin_environment("avx2")  # before torch loads (as python -m univg.demo): AVX2 kernels, 2 threads
    os.environ.update({k: str(args.threads) for k in THREAD_ENV})  # unless --threads says otherwise
    import torch

    from univg.demo.numerics import pinned_torch

    logdir = args.logdir / ("quick" if args.quick else f"lr{demo_settings(args).grpo_lr:g}")
    with pinned_torch("avx2") as numerics:
        torch.set_num_threads(args.threads)
        numerics["threads"] = torch.get_num_threads()
        run = (run_ours if args.worker == "ours" else run_trl)(args, args.seed, logdir)
    import lightning
    import transformers
    import trl

    versions = {m.__name__: m.__version__ for m in (torch, lightning, transformers, trl)}
    print("RESULT " + json.dumps({**run, "numerics": numerics, "versions": versions}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.steps, args.probe_every, args.seeds = 2, 2, "0"
    if args.worker:
        return worker(args)
    if not Path(args.stage1).exists():
        raise SystemExit(f"{args.stage1} not found: run `python -m univg.demo --seed 0` first (its stage 1)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    frameworks = [f for f in args.frameworks.split(",") if f]
    if set(frameworks) - set(FRAMEWORKS):
        raise SystemExit(f"--frameworks: choose from {FRAMEWORKS}")
    settings = settings_record(args)
    if args.out is None:  # the smoke test's numbers are meaningless: not beside the results
        lr = f"grpo_learning_lr{settings['grpo_lr']:g}.json"
        args.out = args.logdir / "quick.json" if args.quick else Path("benchmarks/results") / lr
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs: dict[str, Any] = stored.get("runs", {}) if stored.get("settings") == settings else {}
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    if args.quick:
        base.append("--quick")
    # OMP_WAIT_POLICY passive: threads sleep at a barrier instead of spinning (a shared machine);
    # it changes no result (the thread count decides how reductions split)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    todo = [(f, s) for s in seeds for f in frameworks if f"{f}/{s}" not in runs]
    for key in sorted(set(runs) & {f"{f}/{s}" for s in seeds for f in frameworks}):
        print(f"[{key}: in {args.out}, same settings: not run again]", file=sys.stderr)
    lock = threading.Lock()
    prov = provenance()  # at launch

    def launch(f: str, seed: int) -> None:
        key, t0 = f"{f}/{seed}", time.perf_counter()
        cmd = [sys.executable, __file__, *base, "--worker", f, "--seed", str(seed)]
        log = args.logdir / f"{args.out.stem}_{f}_seed{seed}.log"  # the run's progress (stderr)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as err:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stdout[-4000:] + log.read_text()[-8000:])
            raise RuntimeError(f"run {key} failed (exit {proc.returncode}); its log: {log}")
        run = json.loads(lines[-1][len("RESULT ") :])
        with lock:
            runs[key] = {**run, "wall_seconds": time.perf_counter() - t0, "concurrent_runs": args.jobs}
            print(f"[{key}: {time.perf_counter() - t0:.0f} s wall]", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps({"settings": settings, "provenance": prov, "runs": runs}, indent=1)
            )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # in order: ours and TRL of a seed together
        for fut in [pool.submit(launch, f, s) for f, s in todo]:
            fut.result()
    done = sorted({int(k.split("/")[1]) for k in runs})
    print(
        "settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f"; seeds run: {','.join(map(str, done))}"
    )
    print(table(runs, done), end="")
    for tail in TAILS:
        print(f"\nverdict, gain to the mean of the last {tail} probe point(s):\n{verdict(runs, done, tail)}")
    title = (
        f"GRPO from the demo's CoT-SFT checkpoint (thin: one seed, thick: mean): lr {settings['grpo_lr']:g}, "
        f"G {settings['group_size']}, {settings['grpo_prompts']} prompts/step, beta {settings['beta']}, "
        f"{settings['threads']} thread(s), seeds {','.join(map(str, done))}"
    )
    png = figure(runs, done, args.out.with_suffix(".png"), title)
    print(f"raw: {args.out}" + (f"; figure: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
