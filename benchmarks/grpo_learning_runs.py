"""The two runs :mod:`grpo_learning` compares, each a GRPO fit from the demo's stage-1 checkpoint
with the demo's stage-2 settings and data: ``ours`` (:class:`univg.modules.GRPOModule` through a
Lightning fit, as the demo's stage 2) and ``trl`` (TRL's ``GRPOTrainer``, aligned as
``benchmarks/grpo_learning.py`` lists). Both are measured with the same reward probe and held-out
evaluation; each returns its probe points, per-step logs, final metrics and seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


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
    """The demo's stage-2 ``GRPOModule`` (:func:`univg.demo.stages.grpo_module`), phi none, no pictures."""
    from univg.demo.stages import grpo_module as demo_grpo_module

    return demo_grpo_module(cfg, ckpt, "none", log_completions_every=0, run_name=name, num_pictures=0)


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
    from grpo_step_variants import trl_processor  # benchmarks/ is on sys.path
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
        processing_class=trl_processor(data.processor),
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
