"""Callbacks that record the runs: SFT losses, the per-step GRPO logs, the fixed-prompt reward probe."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from univg.rl.rewards import compute_rewards
from univg.rl.rollout import generate, model_inputs


class LossRecorder(L.Callback):
    """Every training step's loss (the most rounding-sensitive numbers a run has: ``summary.json``
    keeps them, so a numerics change shows even where the smoke budget's metrics are all zero)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


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
