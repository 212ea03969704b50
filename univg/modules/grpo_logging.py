"""How a GRPO optimiser step is logged: the step's values (TensorBoard scalars, the mIoU
histogram, a sample of completions) and, with ``check_invariants``, the run-time invariants
(``invariants/*`` and one JSON line per step in ``<log dir>/invariants.jsonl``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from univg.modules.grpo_step import (
    ScoredRollout,
    completions_markdown,
    group_pairs,
    invariants_record,
    step_logs,
)


class StepLogging:
    """Logging of :class:`~univg.modules.GRPOModule`'s optimiser steps (a mixin: it reads the
    module's settings, logger and trainer)."""

    def _log_step(
        self,
        buffer: list[ScoredRollout],
        logs: dict[str, float],
        opt: Any,
        used: list[torch.Tensor],
        invariants: dict[str, float] | None = None,
    ) -> None:
        out = step_logs(buffer, logs, used, self.group_size, self._times)
        out["train/lr"] = float(opt.param_groups[0]["lr"])
        if self._refill is not None:
            out.update(self._refill.pop_logs())
        if invariants is not None:
            self._record_invariants(buffer, used, invariants, out)
        miou = torch.cat([s.stats["miou_all"] for s in buffer])  # every group of the step
        # Written to the loggers once, at x = the optimiser step (0-based), as automatic optimisation
        # logs; through self.log_dict Lightning re-flushed the values at every later micro-batch and
        # counted micro-batches on the x axis. log_every_n_steps counts optimiser steps.
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        first = int(self.global_step) - self.num_iterations  # the step this rollout batch's updates began at
        if every and any((first + i + 1) % every == 0 for i in range(self.num_iterations)):
            for logger in self.loggers:
                logger.log_metrics(out, step=int(self.global_step) - 1)
        self.log("reward", out["reward/total_mean"], prog_bar=True, logger=False, batch_size=len(miou))
        self.last_step_logs = out
        self._times = {}
        exp = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if exp is not None and hasattr(exp, "add_histogram"):
            exp.add_histogram("difficulty/miou", miou, self.global_step)
            every = self.log_completions_every
            if every and self.global_step % every == 0:
                exp.add_text(
                    "completions", completions_markdown(buffer[0], self.group_size), self.global_step
                )

    def _record_invariants(
        self,
        buffer: list[ScoredRollout],
        used: list[torch.Tensor],
        inv: dict[str, float],
        out: dict[str, float],
    ) -> None:
        """Log the step's invariants and append them, with every group's mIoU and weight gathered
        from all processes, to ``invariants.jsonl`` (rank 0)."""
        trainer = self.trainer if self._trainer is not None else None
        record = invariants_record(
            inv,
            group_pairs(buffer, used, self.group_size),
            step=int(self.global_step) - self.num_iterations,  # the step the lr was used at
            phi=self.phi_name,
            phi_eps=self.phi_eps,
            normalize_phi=self.normalize_phi,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        out.update({f"invariants/{k}": record[k] for k in inv})
        # trainer.log_dir is a collective (a broadcast) under DDP/FSDP: every rank asks, once
        root = trainer.log_dir if trainer is not None else None
        if root is not None and trainer.is_global_zero:
            with open(Path(root) / "invariants.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
