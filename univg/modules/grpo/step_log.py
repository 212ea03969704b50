"""What one GRPO optimiser step logs: the loss terms, rewards, difficulty (mIoU shares, phi as the
loss used it), completions and speed (:func:`step_logs`), written once per optimiser step at
x = the step (:class:`StepLog`), with the mIoU histogram and a sample of completions as text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from univg.modules.grpo.scored import ScoredRollout
from univg.rl.difficulty import difficulty_shares


def step_logs(
    buffer: list[ScoredRollout],
    logs: dict[str, float],
    used: list[torch.Tensor],
    group_size: int,
    times: dict[str, float],
) -> dict[str, float]:
    """The values logged for one optimiser step: the loss terms (``logs``), rewards, difficulty
    (mIoU shares of every group; phi as the loss used it, ``used``), completions and speed."""
    rewards = {k: torch.cat([s.counted(s.rewards[k]) for s in buffer]) for k in buffer[0].rewards}
    miou = torch.cat([s.stats["miou_all"] for s in buffer])
    weights = torch.cat([w[::group_size] for w in used])  # [groups]: the weights the loss used
    lengths = torch.cat([s.counted(s.rollout.completion_mask.sum(1).float()) for s in buffer])
    prompt_tokens = sum(int(s.rollout.prompt["attention_mask"].sum()) * group_size for s in buffer)
    step_time = sum(times.values())
    out: dict[str, float] = {f"train/{k}": v for k, v in logs.items()}
    for k, v in rewards.items():
        out[f"reward/{k}_mean"] = float(v.mean())
        out[f"reward/{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
    out.update({f"difficulty/{k}": v for k, v in difficulty_shares(miou).items()})
    out["difficulty/miou_mean"] = float(miou.mean())
    out["difficulty/phi_mean"] = float(weights.mean())
    out["train/zero_variance_frac"] = sum(s.stats["zero_variance_frac"] for s in buffer) / len(buffer)
    for key in ("unparsable", "truncated", "swapped", "clamped", "dropped_groups"):
        out[f"completions/{key}"] = sum(s.stats.get(key, 0.0) for s in buffer)
    out["completions/length_mean"] = float(lengths.mean())
    out["completions/count"] = float(lengths.numel())
    out["perf/seconds_per_step"] = step_time
    for k, v in times.items():
        out[f"perf/{k}_seconds"] = v
    out["perf/tokens_per_second"] = (prompt_tokens + float(lengths.sum())) / max(step_time, 1e-9)
    out["perf/completions_per_second"] = float(lengths.numel()) / max(step_time, 1e-9)
    if torch.cuda.is_available():
        out["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        out["perf/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def completions_markdown(scored: ScoredRollout, group_size: int) -> str:
    """The first prompt's G completions with their rewards, as logged text."""
    return "\n\n".join(
        f"**reward {float(scored.rewards['total'][i]):.2f}** `{t[:500]}`"
        for i, t in enumerate(scored.rollout.texts[:group_size])
    )


class StepLog:
    """Times the phases of the optimiser step being assembled and writes the step's values.

    Args:
        group_size: G, the completions per prompt.
        num_iterations: optimiser steps per rollout batch (mu).
        completions_every: log the first prompt's completions as text every N steps (0 = off).
    """

    def __init__(self, group_size: int, num_iterations: int, completions_every: int) -> None:
        self.group_size = group_size
        self.num_iterations = num_iterations
        self.completions_every = completions_every
        self.times: dict[str, float] = {}  # phase -> seconds of the step being assembled

    def add(self, phase: str, seconds: float) -> None:
        """Count ``seconds`` of ``phase`` (generation, scoring, backward, ...) in the current step."""
        self.times[phase] = self.times.get(phase, 0.0) + seconds

    def values(
        self, buffer: list[ScoredRollout], logs: dict[str, float], used: list[torch.Tensor]
    ) -> dict[str, float]:
        """The step's values (:func:`step_logs`); the phase times start again for the next step."""
        out = step_logs(buffer, logs, used, self.group_size, self.times)
        self.times = {}
        return out

    def write(
        self,
        out: dict[str, float],
        miou: torch.Tensor,
        first: ScoredRollout,
        *,
        global_step: int,
        loggers: Sequence[Any],
        every: int,
    ) -> None:
        """Write ``out`` to ``loggers`` at x = the step's last update (``global_step`` - 1) when
        one of the rollout batch's ``num_iterations`` updates falls on ``every`` (Lightning's
        ``log_every_n_steps``, in optimiser steps), then the mIoU histogram and, every
        ``completions_every`` steps, ``first``'s completions (TensorBoard)."""
        start = global_step - self.num_iterations  # the step this rollout batch's updates began at
        if every and any((start + i + 1) % every == 0 for i in range(self.num_iterations)):
            for logger in loggers:
                logger.log_metrics(out, step=global_step - 1)
        exp = getattr(loggers[0], "experiment", None) if loggers else None
        if exp is not None and hasattr(exp, "add_histogram"):
            exp.add_histogram("difficulty/miou", miou, global_step)
            if self.completions_every and global_step % self.completions_every == 0:
                exp.add_text("completions", completions_markdown(first, self.group_size), global_step)
