"""Stage 1: supervised fine-tuning on the assistant turn (CoT-SFT or plain SFT).

CoT-SFT and plain SFT are the same module: the data's ``target_format`` ("cot" or "answer") decides
what the labels hold. The loss is next-token cross-entropy on the labelled (assistant) tokens only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from univg.modules.base import GroundingModule
from univg.rl.rollout import model_inputs

IGNORE = -100


def answer_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over tokens whose label is not -100, and that token count.

    The head runs only from the earliest labelled position of the batch on: prompts (hundreds of
    image tokens) never go through the 151,936-way head. Those positions are passed as an index
    tensor rather than a slice, which saved about 25-30% of a forward and backward of the demo's
    model (measured in isolation; the gradients are bit-identical).
    """
    labels = batch["labels"]  # [B, L], -100 outside the assistant turn
    labelled = labels != IGNORE
    n_tokens = int(labelled.sum())
    if n_tokens == 0:
        raise ValueError("a training batch has no labelled tokens (check the collator's mode='train')")
    first = int(labelled.float().argmax(dim=1)[labelled.any(dim=1)].min())  # earliest label position
    # positions first-1 .. L-2 predict tokens first .. L-1; an index tensor (not a count and a
    # slice of the logits) so backward never builds a zero-filled [B, L - first + 1, V] gradient
    keep = torch.arange(first - 1, labels.shape[1] - 1, device=labels.device)
    out = model(**model_inputs(batch), use_cache=False, logits_to_keep=keep)
    logits = out.logits.float()  # [B, L - first, V], position t predicts token t + 1
    target = labels[:, first:]  # [B, L - first]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    return loss, n_tokens


class SFTModule(GroundingModule):
    """Stage-1 cold start: CoT-SFT (``<think>…</think><answer>…</answer>`` targets) or plain SFT.

    Defaults follow docs/design.md section 5: lr 5e-6, cosine with 1.5% warm-up, vision tower frozen;
    the total batch of 24 comes from the data module's batch size x ``accumulate_grad_batches``.
    """

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, n_tokens = answer_loss(self.model, batch)
        bs = int(batch["input_ids"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/answer_tokens", float(n_tokens), batch_size=bs)
        self.log("train/seq_len", float(batch["input_ids"].shape[1]), batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.grad is not None], self.max_grad_norm
            )
            self.log("train/grad_norm", norm)
        self.log("train/lr", optimizer.param_groups[0]["lr"])
