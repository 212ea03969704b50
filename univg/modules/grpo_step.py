"""What one GRPO optimiser step works with, apart from the module: the scored micro-batch and its
loss, group selection, sums over processes, the run-time invariants and the step's logged values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from univg.rl.difficulty import difficulty_shares
from univg.rl.loss import GRPOLossTerms, group_advantages, grpo_loss_terms, loss_share_size
from univg.rl.rewards import compute_rewards, reward_stats
from univg.rl.rollout import Rollout, images_per_prompt


@dataclass
class ScoredRollout:
    """A rollout with everything the loss needs, computed once without gradient."""

    rollout: Rollout
    rewards: dict[str, torch.Tensor]  # name -> [N]; "total" the weighted sum
    advantages: torch.Tensor  # [N]
    miou: torch.Tensor  # [num_prompts]
    weights: torch.Tensor  # [N] phi of each completion's group
    old_logp: torch.Tensor | None  # [N, C] when num_iterations > 1
    ref_logp: torch.Tensor | None  # [N, C] when beta > 0
    stats: dict[str, Any] = field(default_factory=dict)
    #: [N] bool: the rows that count in the loss and the logs; None = all. The others are padding
    #: groups (:func:`pad_kept_groups`): scored and backpropagated with weight 0, so that every
    #: process makes the same forward and backward passes.
    loss_rows: torch.Tensor | None = None

    def counted(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [N, ...] restricted to the rows that count in the loss."""
        return x if self.loss_rows is None else x[self.loss_rows.to(x.device)]


def score_completions(
    texts: list[str],
    batch: dict[str, Any],
    group_size: int,
    reward_weights: dict[str, float],
    miou_reward: str,
    frame: Any,
    reward_functions: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, Any]]:
    """The rewards of a batch's N completions (name -> [N], "total" the weighted sum), the reward
    whose group mean is mIoU ([N], phi's input) and the parsing statistics."""
    g = group_size
    boxes = batch["boxes"].repeat_interleave(g, dim=0).tolist()  # [N, 4] model frame
    forms = batch.get("answer_formats")  # per prompt: "think" or "box" (RefCOCO single image)
    forms = [f for f in forms for _ in range(g)] if forms is not None else None  # [N]
    sizes = batch.get("frame_sizes")  # per prompt: the resized target image (pixel frames)
    sizes = [s for s in sizes for _ in range(g)] if sizes is not None else None  # [N]
    scoring = dict(frame=frame, answer_formats=forms, sizes=sizes)
    rewards = compute_rewards(reward_weights, texts, boxes, functions=reward_functions, **scoring)
    name = miou_reward
    acc = (
        rewards[name]
        if name in rewards
        else compute_rewards({name: 1.0}, texts, boxes, functions=reward_functions, **scoring)[name]
    )
    return rewards, acc, dict(reward_stats(texts, boxes, **scoring))


def select_groups(
    roll: Rollout, rewards: dict[str, torch.Tensor], advantages: torch.Tensor, keep: torch.Tensor
) -> tuple[Rollout, dict[str, torch.Tensor], torch.Tensor]:
    """Keep only the prompts (groups) where ``keep`` [num_prompts] is true."""
    g = roll.group_size
    rows = keep.repeat_interleave(g)  # [N]
    prompt = select_prompt_rows(roll.prompt, keep)
    new = Rollout(
        prompt,
        roll.completion_ids[rows],
        roll.completion_mask[rows],
        [t for t, k in zip(roll.texts, rows.tolist()) if k],
        roll.truncated[rows],
        g,
    )
    return new, {k: v[rows] for k, v in rewards.items()}, advantages[rows]


def pad_kept_groups(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keep as many groups as the process that keeps the most, so that no process skips a pass.

    Under DDP and FSDP every forward (FSDP's all-gathers) and backward (the gradient reduction) is a
    collective: a process that kept fewer groups after dropping zero-variance ones would make fewer
    or no passes and the others would wait forever. The missing groups are taken from the dropped
    ones, in order. Returns the groups to score ``[num_prompts]`` and which of them are padding (None
    when there is none; always None in one process).

    >>> pad_kept_groups(torch.tensor([False, True]))  # one process: nothing to match
    (tensor([False,  True]), None)
    """
    if not _distributed():
        return keep, None
    kept = int(keep.sum())
    most = int(world_max(float(kept)))
    if kept >= most:
        return keep, None
    dropped = (~keep).nonzero().flatten()[: most - kept]
    padding = torch.zeros_like(keep)
    padding[dropped] = True
    return keep | padding, padding


def select_prompt_rows(prompt: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of the prompts where ``keep`` [B] is true (rows and their images)."""
    out = {k: v[keep] for k, v in prompt.items() if k not in ("pixel_values", "image_grid_thw")}
    if "pixel_values" in prompt:
        counts = images_per_prompt(prompt["input_ids"])
        grid = prompt["image_grid_thw"]
        patches = grid.prod(1).tolist()
        img_keep, pix_keep = [], []
        i = 0
        for b, c in enumerate(counts):
            for _ in range(c):
                img_keep.append(bool(keep[b]))
                pix_keep.extend([bool(keep[b])] * int(patches[i]))
                i += 1
        out["pixel_values"] = prompt["pixel_values"][torch.tensor(pix_keep, dtype=torch.bool)]
        out["image_grid_thw"] = grid[torch.tensor(img_keep, dtype=torch.bool)]
    return out


# --------------------------------------------------------------------------------- across processes
def rollout_loss_terms(
    scored: ScoredRollout,
    logp: torch.Tensor,
    weights: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    *,
    beta: float,
    eps_low: float,
    eps_high: float,
    loss_type: str,
    max_len: int,
    importance_sampling_level: str,
) -> GRPOLossTerms:
    """The GRPO(-Difficulty) loss of one scored micro-batch given the policy's log-probs ``logp``
    [N, C] (``weights`` and ``advantages``, when given, are of the rows that count in the loss,
    :attr:`ScoredRollout.loss_rows`; the rest are :func:`univg.rl.loss.grpo_loss_terms`'s settings).

    Padding rows are scored but enter the loss with weight 0, so their backward still runs."""
    r = scored.rollout
    counted = scored.counted
    if scored.loss_rows is not None and not bool(scored.loss_rows.any()):
        zero = (logp * 0.0).sum()  # the passes of a process that holds only padding
        return GRPOLossTerms(zero, zero.detach(), *(torch.zeros((), device=logp.device),) * 4)
    old, ref = scored.old_logp, scored.ref_logp
    terms = grpo_loss_terms(
        counted(logp),
        None if old is None else counted(old),
        None if ref is None else counted(ref),
        counted(scored.advantages) if advantages is None else advantages,
        counted(scored.weights) if weights is None else weights,
        counted(r.completion_mask),
        beta=beta,
        eps_low=eps_low,
        eps_high=eps_high,
        loss_type=loss_type,
        max_len=max_len,
        importance_sampling_level=importance_sampling_level,
    )
    if scored.loss_rows is not None:  # the padding rows' passes are backpropagated too
        terms.loss = terms.loss + (logp * 0.0).sum()
    return terms


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_sum(values: list[float]) -> list[float]:
    """Element-wise sums over every process (the values themselves in a single process)."""
    if not _distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def world_max(value: float) -> float:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def gather(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def step_std(totals: torch.Tensor) -> float:
    """Unbiased std of every reward of the optimiser step, over all processes."""
    n, s1, s2 = world_sum(
        [float(totals.numel()), float(totals.double().sum()), float((totals.double() ** 2).sum())]
    )
    if n < 2:
        return 0.0
    return math.sqrt(max(0.0, (s2 - s1 * s1 / n) / (n - 1)))


def measure_invariants(inv: dict[str, float], s: ScoredRollout, logp: torch.Tensor, beta: float) -> None:
    """Fold one micro-batch's first-iteration measurements into ``inv`` (maxima over tokens):
    ``kl_max`` policy vs reference (0 at the first step: the reference is the initial policy),
    ``ratio_dev_max`` |ratio - 1| (0 before the first update of a batch), ``sampler_gap_max``
    scored minus sampled log-prob (<= 0 up to rounding: top-k / top-p only raise the sampled one)
    and ``sampler_absdiff_max`` (untruncated sampling: the two agree)."""
    mask = s.rollout.completion_mask.bool()
    if not bool(mask.any()):
        return

    def fold(key: str, value: torch.Tensor) -> None:
        inv[key] = max(inv.get(key, float("-inf")), float(value[mask].max()))

    if s.ref_logp is not None and beta > 0:
        delta = s.ref_logp - logp
        fold("kl_max", torch.exp(delta) - delta - 1.0)
        fold("ref_logp_absdiff_max", delta.abs())
    if s.old_logp is not None:
        fold("ratio_dev_max", (torch.exp(logp - s.old_logp) - 1.0).abs())
    sampled = s.rollout.sampler_logp
    if sampled is not None:
        fold("sampler_gap_max", logp - sampled)
        fold("sampler_absdiff_max", (logp - sampled).abs())


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


def group_pairs(
    buffer: list[ScoredRollout], used: list[torch.Tensor], group_size: int
) -> list[tuple[float, float]]:
    """(mIoU, weight used) of every group of the step, gathered from all processes in rank order."""
    local = [
        (float(m), float(w))
        for s, ws in zip(buffer, used)
        for m, w in zip(s.miou.tolist(), ws[::group_size].tolist())
    ]
    return [pair for part in gather(local) for pair in part]


def invariants_record(
    inv: dict[str, float], groups: list[tuple[float, float]], **settings: Any
) -> dict[str, Any]:
    """One line of ``invariants.jsonl``: the step's measurements (maxima over every process), the
    phi settings and every group's mIoU and weight (``groups``, from :func:`group_pairs`)."""
    inv = {k: world_max(v) if k.endswith("_max") else v for k, v in inv.items()}
    step = settings.pop("step")
    world_size = settings.pop("world_size")
    return {
        "step": step,
        **inv,
        **settings,
        "miou": [m for m, _ in groups],
        "weights": [w for _, w in groups],
        "world_size": world_size,
    }


def completions_markdown(scored: ScoredRollout, group_size: int) -> str:
    """The first prompt's G completions with their rewards, as logged text."""
    return "\n\n".join(
        f"**reward {float(scored.rewards['total'][i]):.2f}** `{t[:500]}`"
        for i, t in enumerate(scored.rollout.texts[:group_size])
    )


def step_advantages(buffer: list[ScoredRollout], group_size: int, scale: str) -> list[torch.Tensor | None]:
    """Each micro-batch's advantages under the "batch" scale (of the rows that count in the loss):
    divided by the std of every reward of the optimiser step on every process (TRL's generation
    batch). None (the scored ones) otherwise."""
    if scale != "batch":
        return [None] * len(buffer)
    std = step_std(torch.cat([s.stats["total_all"] for s in buffer]))
    return [
        s.counted(group_advantages(s.rewards["total"], group_size, "batch", batch_std=std)).to(
            s.advantages.device
        )
        for s in buffer
    ]


def step_sizes(buffer: list[ScoredRollout], loss_type: str) -> list[float]:
    """Each micro-batch's size in the loss normalisation: tokens (bnpo, dapo) or sequences (grpo,
    dr_grpo); :func:`univg.rl.loss.loss_share_size`."""
    return [loss_share_size(s.counted(s.rollout.completion_mask), loss_type) for s in buffer]


class SamplerState:
    """Checkpoint hooks that keep the sampler's RNG, so a resumed run draws the same completions
    as an uninterrupted one."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["univg_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["univg_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("univg_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
