"""The layout of a GRPO batch (docs/design.md section 4): ``num_prompts`` groups of ``G = group_size``
completions laid out prompt by prompt, ``[prompt0 x G, prompt1 x G, ...]``, so ``N = num_prompts * G``.

Every per-group statistic (advantages in :mod:`univg.rl.loss`, mIoU and phi in :mod:`univg.rl.difficulty`)
reads a ``[N]`` tensor through :func:`grouped`, so the layout is checked in one place.
"""

from __future__ import annotations

import torch


def grouped(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N]`` -> ``[num_prompts, G]`` float, after checking the layout.

    >>> grouped(torch.tensor([1, 2, 3, 4]), 2).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    if values.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(values.shape)}")
    if group_size < 1 or values.numel() % group_size != 0:
        raise ValueError(
            f"{values.numel()} rewards cannot be split into groups of group_size={group_size}; "
            "the batch must hold whole groups laid out [prompt0 x G, prompt1 x G, ...]"
        )
    return values.float().view(-1, group_size)
