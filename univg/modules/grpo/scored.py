"""A scored micro-batch of GRPO: its rollout with rewards, advantages, phi and the old/reference
log-probs, and the selection of its groups (dropping zero-variance ones, padding so that every
process makes the same passes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from univg.distributed.collectives import is_distributed, world_max
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
    if not is_distributed():
        return keep, None
    kept = int(keep.sum())
    most = int(world_max(float(kept)))
    if kept >= most:
        return keep, None
    dropped = (~keep).nonzero().flatten()[: most - kept]
    padding = torch.zeros_like(keep)
    padding[dropped] = True
    return keep | padding, padding


def groups_to_score(
    keep: torch.Tensor, weights: torch.Tensor, group_size: int, pad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The groups a process scores after dropping (``keep`` [num_prompts]; ``weights``: phi of the
    kept ones): with ``pad``, as many as the process that keeps the most (:func:`pad_kept_groups`),
    the padding groups with weight 0. Returns the groups to score, their weights and which of
    their N rows count in the loss (None: all).

    >>> groups_to_score(torch.tensor([True, False]), torch.tensor([2.0]), 2, pad=True)
    (tensor([ True, False]), tensor([2.]), None)
    """
    if not pad:
        return keep, weights, None
    scored, padding = pad_kept_groups(keep)
    if padding is None:
        return keep, weights, None
    all_weights = torch.zeros(scored.shape, dtype=weights.dtype)
    all_weights[keep] = weights
    return scored, all_weights[scored], (~padding)[scored].repeat_interleave(group_size)  # rows: [N]


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
