"""The stage-2 probe: per optimiser step, each process's advantages, the gradient norm, and the
sampled tokens' recorded log-probs against the policy's under the configured sampling."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


# --------------------------------------------------------------------------------- stage 2 probe
def configured_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """float32 logits [..., V] of the distribution the sampling settings define: divided by the
    temperature, then every token outside the ``top_k`` largest (0: off) and outside the smallest
    set of most likely tokens holding ``top_p`` of the mass (1.0: off) at ``-inf``.

    Written apart from the rollout engines (transformers' warpers, :func:`univg.rl.rollout.sampling_logits`)
    as the second computation they are compared with.

    >>> configured_logits(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 1.0, 2, 1.0).tolist()
    [[3.0, -inf, 2.0, -inf]]
    >>> configured_logits(torch.tensor([[2.0, 0.0]]), 2.0, 0, 0.5).tolist()
    [[1.0, -inf]]
    """
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        desc, order = torch.sort(x, dim=-1, descending=True)
        probs = desc.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        drop = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order, before >= top_p)
        x = x.masked_fill(drop, float("-inf"))
    return x


class _ConfiguredHead(torch.nn.Module):
    """Stands in for the output head during one forward: the head's logits, then
    :func:`configured_logits` (the head's weight as it is at call time: under FSDP, gathered)."""

    def __init__(self, head: torch.nn.Module, temperature: float, top_k: int, top_p: float) -> None:
        super().__init__()
        self._head = (head,)  # a tuple: not registered, the model's parameters stay as they are
        self.settings = (temperature, top_k, top_p)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return configured_logits(self._head[0](hidden), *self.settings)


@contextmanager
def configured_head(model: torch.nn.Module, temperature: float, top_k: int, top_p: float) -> Iterator[None]:
    """Within the block the model's logits are :func:`configured_logits` of its own."""
    from univg.rl.rollout.batch import _hf_model

    hf = _hf_model(model)
    head = hf.get_output_embeddings()
    name = next(n for n, m in hf.named_modules() if m is head)
    parent, _, attr = name.rpartition(".")
    owner = hf.get_submodule(parent) if parent else hf
    setattr(owner, attr, _ConfiguredHead(head, temperature, top_k, top_p))
    try:
        yield
    finally:
        setattr(owner, attr, head)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a (possibly FSDP2-sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def _gather(obj: Any) -> list[Any]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


class Stage2Probe(Callback):
    """Measures, on every process, what stage 2 does to the policy (``probe.jsonl`` in the log dir).

    At each optimiser step (before the optimiser steps): each process's advantages (mean |A|,
    groups with any non-zero A), the gradient norm over the whole model after the last backward
    and after clipping (the one the optimiser applies), and
    the largest |recorded sampled log-prob - the log-prob of the same token under the policy's
    logits with the configured temperature / top-k / top-p| (:func:`configured_logits`, the policy
    recomputed on the sampled completions before its update). At the end of training: the largest
    |change| and the relative L2 change of the trainable weights since the start of training.
    """

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.unclipped_sq = 0.0  # this process's squared gradient norm after the last backward

    @staticmethod
    def _grad_sq(pl_module: Any) -> float:
        return sum(
            float(_local(p.grad).float().pow(2).sum())
            for p in pl_module.model.parameters()
            if p.grad is not None
        )

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self.unclipped_sq = self._grad_sq(pl_module)

    def _write(self, trainer: Any, record: dict[str, Any]) -> None:
        root = trainer.log_dir  # a collective under DDP/FSDP: every rank asks
        if trainer.is_global_zero and root is not None:
            with open(Path(root) / "probe.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = {
            n: _local(p.detach()).float().clone()
            for n, p in pl_module.model.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def _sampled_absdiff(self, trainer: Any, pl_module: Any, buffer: list[Any]) -> tuple[float, int]:
        from univg.rl.rollout.logprobs import completion_logprobs

        spec = pl_module.sampling
        settings = (float(spec.temperature), int(spec.top_k), float(spec.top_p))
        worst, tokens = 0.0, 0
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            for s in buffer:
                r = s.rollout
                with trainer.precision_plugin.forward_context():
                    with configured_head(model, *settings):
                        expected = completion_logprobs(
                            model,
                            r.prompt,
                            r.completion_ids,
                            r.completion_mask,
                            pl_module.group_size,
                            pl_module.logprob_chunk_size,
                            1.0,
                            shared_prefix=pl_module.shared_prefix(),
                            tiled_head=False,
                        )
                mask = r.completion_mask.bool()
                if r.sampler_logp is None:  # not recorded: the measurement is missing
                    worst = float("nan")
                elif bool(mask.any()):
                    diff = (expected.float() - r.sampler_logp.float())[mask].abs()
                    worst = max(worst, float(diff.max()))
                    tokens += int(mask.sum())
        finally:
            model.train(was_training)
        return worst, tokens

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        buffer = list(getattr(pl_module, "_buffer", []))
        g = pl_module.group_size
        adv = torch.cat([s.advantages.detach().float().cpu() for s in buffer]) if buffer else torch.zeros(0)
        groups = adv.view(-1, g) if adv.numel() else adv.view(0, g)
        absdiff, tokens = self._sampled_absdiff(trainer, pl_module, buffer)
        spec = pl_module.sampling
        texts = [t for s in buffer for t in s.rollout.texts]
        local = {
            "rank": int(trainer.global_rank),
            "adv_abs_mean": float(adv.abs().mean()) if adv.numel() else 0.0,
            "groups": int(groups.shape[0]),
            "groups_nonzero": int((groups.abs().amax(dim=1) > 0).sum()),
            "sampled_absdiff_max": absdiff,
            "sampling": {"temperature": spec.temperature, "top_k": spec.top_k, "top_p": spec.top_p},
            "sampled_tokens": tokens,
            "completions": texts[:2],
        }
        total_sq, unclipped_sq = _sum([self._grad_sq(pl_module), self.unclipped_sq])
        ranks = _gather(local)
        self._write(
            trainer,
            {
                "kind": "step",
                "step": int(trainer.global_step),
                "grad_norm": math.sqrt(total_sq),
                "grad_norm_unclipped": math.sqrt(unclipped_sq),
                "ranks": ranks,
            },
        )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        worst, dsq, wsq, n = 0.0, 0.0, 0.0, 0
        for name, p in pl_module.model.named_parameters():
            if name not in self.start:
                continue
            before = self.start[name]
            delta = _local(p.detach()).float() - before
            if delta.numel():
                worst = max(worst, float(delta.abs().max()))
            dsq += float(delta.pow(2).sum())
            wsq += float(before.pow(2).sum())
            n += delta.numel()
        worst = max(w for w in _gather(worst))
        dsq, wsq, n = _sum([dsq, wsq, float(n)])
        self._write(
            trainer,
            {
                "kind": "weights",
                "max_abs_delta": worst,
                "rel_l2": math.sqrt(dsq / wsq) if wsq > 0 else float("nan"),
                "params": int(n),
            },
        )
