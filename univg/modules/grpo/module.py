"""Stage 2: GRPO with difficulty-aware weighting (GRPO-Difficulty), and pure RL from the base model.

One optimiser step = ``prompts_per_step`` prompts (16 by default) whatever the micro-batch size:
each training batch is rolled out (G completions per prompt by the rollout engine, scored,
advantages and phi per group) and buffered; when the buffer holds a step's prompts the module runs
``num_iterations`` (mu) optimiser steps over it, accumulating gradients across the buffered
micro-batches. With mu = 1 the ratio is 1 and pi_old = pi_theta detached (no extra pass). The
step's parts live beside this module: a scored micro-batch and its groups (:mod:`.scored`), the
step's loss (:mod:`.step_loss`), dynamic sampling (:mod:`.dynamic_sampling`), the run-time
invariants (:mod:`.invariants`) and the logged values (:mod:`.step_log`); the fit's length in
steps is :mod:`univg.modules.schedule`'s.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from univg.distributed.collectives import world_sum
from univg.engines import RolloutEngine, SharedPrefill
from univg.modules.base import GroundingModule
from univg.modules.grpo.dynamic_sampling import DynamicSampling, Refill
from univg.modules.grpo.invariants import measure_invariants, record_invariants
from univg.modules.grpo.reference import ReferencePolicy
from univg.modules.grpo.rng_state import SamplerState
from univg.modules.grpo.scored import ScoredRollout, groups_to_score, score_completions, select_groups
from univg.modules.grpo.step_log import StepLog
from univg.modules.grpo.step_loss import rollout_loss_terms, step_advantages, step_sizes
from univg.modules.schedule import grpo_optimizer_steps, micro_batches_per_step
from univg.rl.difficulty import PHI_NAMES, PhiName, group_weights, step_weights
from univg.rl.loss import (
    IMPORTANCE_LEVELS,
    LOSS_TYPES,
    SCALES,
    GRPOLossTerms,
    ImportanceLevel,
    LossType,
    ScaleRewards,
    group_advantages,
    zero_variance_groups,
)
from univg.rl.reward_plugins import RewardEntry, resolve_rewards
from univg.rl.rewards import get_reward
from univg.rl.rollout import Rollout, SamplingSpec, completion_logprobs, model_inputs, shared_prefix_allowed

ACCURACY = "accuracy"  # the reward whose group mean is mIoU (docs/design.md section 4)


class GRPOModule(ReferencePolicy, SamplerState, GroundingModule):
    """GRPO / GRPO-Difficulty (``phi``) on a Qwen2-VL backbone. docs/design.md section 4 is the spec.

    Args:
        group_size: G completions per prompt.
        temperature, top_p, top_k: sampling (top_k 0 = off). The release sampled with
            ``GenerationConfig(do_sample=True, temperature=1)``, so transformers' default ``top_k=50``
            applied: the paper configs set ``top_k: 50``; 0 samples the full vocabulary.
        max_completion_length: max new tokens per completion. These five are held together as
            :attr:`sampling` (a :class:`~univg.rl.rollout.SamplingSpec`), which every engine samples by.
        beta: KL coefficient (k3 estimator to the reference); 0 skips the reference pass.
        eps_low, eps_high: clipping range of the ratio.
        num_iterations: mu, optimiser steps per rollout batch (> 1 keeps a real pi_old).
        phi: difficulty weight "none" (plain GRPO), "exp" (paper default), "square", "neglog" or
            "power" (the release's code: 1.05 - mIoU).
        phi_eps: epsilon of neglog.
        normalize_phi: rescale phi to mean 1 over the step's groups.
        loss_type: "grpo", "bnpo", "dr_grpo" or "dapo" (token mean over the optimiser step; the
            same normalisation as univg's "bnpo", see :func:`univg.rl.loss.loss_share_size`).
        importance_sampling_level: "token" (GRPO) or "sequence" (GSPO: one length-normalised ratio
            per completion, clipped once).
        scale_rewards: advantage scaling "group", "batch" or "none".
        drop_zero_variance: drop groups whose rewards are all equal (A = 0) from the loss.
        dynamic_sampling: ``{max_tries: N}`` drops zero-variance groups and refills the step with
            fresh prompts (DAPO; :mod:`univg.modules.grpo.dynamic_sampling`); None (default) is off.
        rewards: reward name -> weight (``univg.rl.rewards`` registry; the release's own variants are
            ``accuracy_release`` and ``format_release``), or name -> plug-in ``{class_path,
            init_args, weight}`` (a reward defined outside univg, :mod:`univg.rl.reward_plugins`).
        miou_reward: the reward whose group mean is a prompt's mIoU (phi's input); with the release's
            rewards, ``accuracy_release``.
        prompts_per_step: prompts per optimiser step across all processes (gradient accumulation).
        logprob_chunk_size: rows per log-prob forward (bounds one forward's activations; the head
            scores tokens in tiles, so [rows, C, V] logits exist only for a head that is not a
            plain linear layer); None = all.
        log_completions_every: log a sample of completions as text every N optimiser steps (0 = off).
        check_invariants: measure GRPO's run-time invariants every optimiser step and log them
            (``invariants/*``, and one JSON line per step in ``<log dir>/invariants.jsonl``): KL and
            ratio at the first step, sampled vs scored log-probs, the lr against the schedule, the
            difficulty weights used. Costs a log-softmax per sampled token; ``make rehearsal`` uses it.
        engine: the rollout engine, by ``class_path`` (:mod:`univg.engines`): None is
            ``SharedPrefill`` (our decoder), or ``HFGenerate`` (transformers) or ``VLLMEngine`` (GPU).
    """

    def __init__(
        self,
        lr: float = 1e-6,
        group_size: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_completion_length: int = 256,
        beta: float = 0.04,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        num_iterations: int = 1,
        phi: PhiName = "exp",
        phi_eps: float = 0.02,
        normalize_phi: bool = False,
        loss_type: LossType = "grpo",
        importance_sampling_level: ImportanceLevel = "token",
        scale_rewards: ScaleRewards = "group",
        drop_zero_variance: bool = False,
        dynamic_sampling: DynamicSampling | None = None,
        rewards: dict[str, RewardEntry] | None = None,
        miou_reward: str = ACCURACY,
        prompts_per_step: int = 16,
        logprob_chunk_size: int | None = None,
        log_completions_every: int = 50,
        check_invariants: bool = False,
        engine: RolloutEngine | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        # The Literal types reject a typo at parse time (CLI); these checks serve Python callers.
        for knob, value, choices in (
            ("phi", phi, PHI_NAMES),
            ("loss_type", loss_type, LOSS_TYPES),
            ("importance_sampling_level", importance_sampling_level, IMPORTANCE_LEVELS),
            ("scale_rewards", scale_rewards, SCALES),
        ):
            if value not in choices:
                raise ValueError(f"unknown {knob} {value!r}; choose one of {choices}")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 for group-normalised advantages, got {group_size}")
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.automatic_optimization = False
        self.sampling = SamplingSpec(group_size, max_completion_length, temperature, top_p, top_k)
        self.beta = beta
        self.eps_low = eps_low
        self.eps_high = eps_high
        self.num_iterations = num_iterations
        self.phi_name = phi
        self.phi_eps = phi_eps
        self.normalize_phi = normalize_phi
        self.loss_type = loss_type
        self.importance_sampling_level = importance_sampling_level
        self.scale_rewards = scale_rewards
        self.drop_zero_variance = drop_zero_variance
        if isinstance(dynamic_sampling, dict):
            dynamic_sampling = DynamicSampling(**dynamic_sampling)
        self.dynamic_sampling = dynamic_sampling
        self._refill = Refill(dynamic_sampling) if dynamic_sampling is not None else None
        # unknown names and bad plug-ins fail here, naming the registered rewards
        self.reward_weights, self.reward_functions = resolve_rewards(
            rewards or {ACCURACY: 1.0, "format": 1.0}
        )
        if miou_reward not in self.reward_functions:  # scored for phi only, not in the total
            self.reward_functions[miou_reward] = get_reward(miou_reward)  # unknown: names the registered
        self.miou_reward = miou_reward
        self.prompts_per_step = prompts_per_step
        self.logprob_chunk_size = logprob_chunk_size
        self.log_completions_every = log_completions_every
        self.check_invariants = check_invariants
        self.engine: RolloutEngine = engine if engine is not None else SharedPrefill()
        self.engine.attach(self.backbone)
        self._engine_synced = False
        self.ref_model: torch.nn.Module | None = None
        self._buffer: list[ScoredRollout] = []
        self._planned_steps_drawn = 0.0
        self.step_log = StepLog(group_size, num_iterations, log_completions_every)

    # ----------------------------------------------------------------------------- sampling settings
    @property
    def group_size(self) -> int:
        return self.sampling.group_size

    @property
    def max_completion_length(self) -> int:
        return self.sampling.max_new_tokens

    def sampling_kwargs(self) -> dict[str, Any]:
        """How rollouts are sampled, as keyword arguments of :func:`univg.rl.rollout.generate`."""
        return self.sampling.generate_kwargs()

    # ----------------------------------------------------------------------------- rollout
    def micro_batches_per_step(self, batch_size: int) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return micro_batches_per_step(self.prompts_per_step, batch_size, world)

    def optimizer_steps_total(self) -> int:
        """Optimiser steps of the fit (:func:`~univg.modules.schedule.grpo_optimizer_steps`)."""
        if self._trainer is None:
            return 1
        return grpo_optimizer_steps(self.trainer, self.micro_batches_per_step, self.num_iterations)

    def lr_multiplier(self, step: int) -> float:
        """The schedule at optimiser step ``step``. Under dynamic sampling a step draws as many
        micro-batches as it needs to fill, so the fit makes fewer steps than planned: the schedule then
        runs over the data drawn (in plain steps' worth) or the steps made, whichever is further, and
        reaches its end with whichever ends the fit."""
        if self._refill is None or self._trainer is None:
            return super().lr_multiplier(step)
        return super().lr_multiplier(max(step, self._planned_steps_drawn))

    def shared_prefix(self) -> bool:
        """Whether log-probs share each prompt's prefix across its G rows. Decided once for the policy,
        old-policy and reference passes alike, by what the gradient pass allows (not under gradient
        checkpointing or FSDP): the three must be scored by the same arithmetic, or KL and the ratio
        measure the difference between two computations (bf16) instead of between two policies."""
        return shared_prefix_allowed(self.model)

    def rollout(self, batch: dict[str, Any]) -> Rollout:
        """G completions per prompt from the rollout engine (an engine holding its own copy of the
        policy gets the policy's weights before its first rollout)."""
        self.check_context(batch, self.max_completion_length)
        if self.engine.holds_weights and not self._engine_synced:
            self.engine.sync_weights(self.model)  # the policy is not the checkpoint the engine loaded
            self._engine_synced = True
        inputs = model_inputs(batch)
        return self.engine.generate(
            self.model, inputs, self.tokenizer, self.sampling, record_logprobs=self.check_invariants
        )

    @torch.no_grad()
    def score(self, batch: dict[str, Any]) -> ScoredRollout:
        """Sample G completions per prompt and compute rewards, advantages, phi, old/ref log-probs."""
        g = self.group_size
        t0 = time.perf_counter()
        roll = self.rollout(batch)
        t1 = time.perf_counter()
        rewards, acc, stats = score_completions(
            roll.texts, batch, g, self.reward_weights, self.miou_reward, self.frame, self.reward_functions
        )
        total = rewards["total"]  # [N]
        advantages = group_advantages(total, g, self.scale_rewards)  # [N]
        zero_var = zero_variance_groups(total, g)  # [num_prompts]
        # mIoU per group (never over the micro-batch), the groups kept, phi of the kept ones
        drop = self.drop_zero_variance or self.dynamic_sampling is not None
        difficulty = group_weights(acc, g, self.phi_name, self.phi_eps, drop=zero_var if drop else None)
        stats["prompts_drawn"] = int(zero_var.numel())
        stats["total_all"] = total  # every group's rewards, for a step-wide "batch" scale
        stats["zero_variance_frac"] = float(zero_var.float().mean())
        stats["truncated"] = float(roll.truncated.float().sum())
        keep, weights, loss_rows = groups_to_score(difficulty.keep, difficulty.weights, g, pad=drop)
        if not bool(keep.all()):
            roll, rewards, advantages = select_groups(roll, rewards, advantages, keep)
        if not bool(difficulty.keep.all()):
            stats["dropped_groups"] = float((~difficulty.keep).sum())
        weights = weights.repeat_interleave(g)  # [N]
        device = roll.completion_ids.device
        ref_logp = old_logp = None
        if roll.completion_ids.shape[0] and (self.beta > 0 or self.num_iterations > 1):
            if self.num_iterations > 1:
                old_logp = self.logprobs(self.model, roll)
            if self.beta > 0:
                with self.reference() as ref:
                    ref_logp = self.logprobs(ref, roll)
        self.step_log.add("generation", t1 - t0)
        self.step_log.add("scoring", time.perf_counter() - t1)
        stats["miou_all"] = difficulty.miou  # kept as a tensor for the histogram
        kept_miou, weights = difficulty.kept_miou, weights.to(device)
        return ScoredRollout(
            roll, rewards, advantages.to(device), kept_miou, weights, old_logp, ref_logp, stats, loss_rows
        )

    def logprobs(self, model: torch.nn.Module, roll: Rollout) -> torch.Tensor:
        """Per-token log-probs [N, C] of a rollout's completions under ``model`` (policy, old policy
        or reference: one path for all three, :meth:`shared_prefix`)."""
        return completion_logprobs(
            model,
            roll.prompt,
            roll.completion_ids,
            roll.completion_mask,
            self.group_size,
            self.logprob_chunk_size,
            self.sampling.temperature,
            shared_prefix=self.shared_prefix(),
        )

    def loss_terms(
        self,
        scored: ScoredRollout,
        weights: torch.Tensor | None = None,
        advantages: torch.Tensor | None = None,
        logp: torch.Tensor | None = None,
    ) -> GRPOLossTerms:
        """The GRPO(-Difficulty) loss of one scored micro-batch under the current policy
        (:func:`~univg.modules.grpo.step_loss.rollout_loss_terms`; ``logp`` [N, C]: the policy's
        log-probs when already computed)."""
        if logp is None:
            logp = self.logprobs(self.model, scored.rollout)  # [N, C]
        return rollout_loss_terms(
            scored,
            logp,
            weights,
            advantages,
            beta=self.beta,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            loss_type=self.loss_type,
            max_len=self.max_completion_length,
            importance_sampling_level=self.importance_sampling_level,
        )

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        per_step = self.micro_batches_per_step(int(batch["input_ids"].shape[0]))
        scored = self.score(batch)
        batches = self.trainer.num_training_batches if self._trainer is not None else math.inf
        self._buffer.append(scored)
        if math.isfinite(batches):  # the schedule's position under dynamic sampling (lr_multiplier)
            drawn = self.current_epoch * int(batches) + batch_idx + 1
            self._planned_steps_drawn = drawn / per_step * self.num_iterations
        # the epoch's last micro-batch ends a partial step here, where Lightning lets it be logged
        last = batch_idx + 1 >= batches
        if self._refill is None:
            full = len(self._buffer) >= per_step or last
        else:  # dynamic sampling: draw until the step holds its prompts with reward variance
            drawn = scored.stats["prompts_drawn"]
            kept = int(scored.miou.numel())  # the kept groups, not padding (pad_kept_groups)
            full = self._refill.add(drawn, kept, per_step, self.prompts_per_step, world_sum, last)
        if full:
            if len(self._buffer) < per_step and self._refill is None:
                self.print(
                    f"univg: last optimiser step of the epoch uses {len(self._buffer)} micro-batch(es)"
                )
            self.optimise(self._buffer)
            self._buffer = []

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # One step on every axis is one optimiser step. Under manual optimisation Lightning's logging
        # step counts micro-batches (a step of 2 logged at x = 1, 3, 5 while its checkpoint said
        # step=3); it is kept here at the optimiser steps made, as with automatic optimisation: the
        # step's values go to x = global_step - 1, and log_every_n_steps counts optimiser steps.
        if self._trainer is not None:
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = max(0, self.global_step - 1)

    def on_train_epoch_end(self) -> None:
        # only when the epoch's length is unknown (an iterable dataset) or max_steps stopped it
        if self._buffer:
            prompts = sum(s.stats["prompts_drawn"] for s in self._buffer)
            self.print(f"univg: {prompts} prompt(s) scored after the last optimiser step were not trained on")
            self._buffer = []

    def optimise(self, buffer: list[ScoredRollout]) -> None:
        """``num_iterations`` optimiser steps over the buffered rollouts (gradient accumulation).

        Everything that is a statistic of the step is taken over the whole step on every process:
        the "batch" reward scale, ``normalize_phi``, and the loss normalisation (each micro-batch's
        loss is weighted by its share of the step's sequences, or tokens for ``bnpo``, so that
        1 micro-batch of 4 prompts and 4 micro-batches of 1 prompt give the same update).
        """
        opt = self.optimizers()
        sched = self.lr_schedulers()
        g = self.group_size
        world = self.trainer.world_size if self._trainer is not None else 1
        advantages = step_advantages(buffer, g, self.scale_rewards)  # None: as scored
        # the weights the loss uses (and the log shows): phi, normalised over the step when asked
        used = step_weights([s.counted(s.weights) for s in buffer], self.normalize_phi, world_sum)
        sizes = step_sizes(buffer, self.loss_type)  # sequences (grpo, dr_grpo) or tokens (bnpo)
        (step_size,) = world_sum([sum(sizes)])
        check = self.check_invariants
        inv: dict[str, float] = {}
        if check:
            inv = {
                "lr": float(opt.param_groups[0]["lr"]),
                "lr_expected": self.lr * self.lr_multiplier(self.global_step),
                "lr_peak": self.lr,
            }
        t0 = time.perf_counter()
        for it in range(self.num_iterations):
            logs: dict[str, float] = {}
            for k, s in enumerate(buffer):
                n = int(s.rollout.completion_ids.shape[0])
                if n == 0:
                    continue
                share = sizes[k] / max(step_size, 1.0)
                logp = self.logprobs(self.model, s.rollout)  # [N, C]
                terms = self.loss_terms(s, used[k], advantages[k], logp)
                # DDP and FSDP average gradients over processes: scale back to a sum over the step
                self.manual_backward(terms.loss * share * world)
                for key, v in terms.as_dict().items():
                    logs[key] = logs.get(key, 0.0) + float(v.detach()) * share * world
                if check and it == 0:
                    measure_invariants(inv, s, logp.detach(), self.beta)
            if self.max_grad_norm > 0:
                params = [p for p in self.model.parameters() if p.grad is not None]
                if params:
                    logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
        self.step_log.add("backward", time.perf_counter() - t0)
        if self.engine.holds_weights:  # once per rollout batch: the next rollouts sample the updated policy
            t1 = time.perf_counter()
            self.engine.sync_weights(self.model)
            self.step_log.add("weight_sync", time.perf_counter() - t1)
        self.log_step(buffer, logs, float(opt.param_groups[0]["lr"]), used, inv if check else None)

    def log_step(
        self,
        buffer: list[ScoredRollout],
        logs: dict[str, float],
        lr: float,
        used: list[torch.Tensor],
        invariants: dict[str, float] | None = None,
    ) -> None:
        """Log the optimiser step just made (:class:`~univg.modules.grpo.step_log.StepLog`) and,
        with ``check_invariants``, its invariants (``invariants/*`` and ``invariants.jsonl``)."""
        trainer = self._trainer
        out = self.step_log.values(buffer, logs, used)
        out["train/lr"] = lr
        if self._refill is not None:
            out.update(self._refill.pop_logs())
        if invariants is not None:
            step = int(self.global_step) - self.num_iterations  # the step the lr was used at
            phi = dict(phi=self.phi_name, phi_eps=self.phi_eps, normalize_phi=self.normalize_phi)
            out.update(record_invariants(invariants, buffer, used, self.group_size, step, trainer, **phi))
        miou = torch.cat([s.stats["miou_all"] for s in buffer])  # every group of the step
        every = trainer.log_every_n_steps if trainer is not None else 1
        loggers = self.loggers if trainer is not None else []
        self.step_log.write(
            out, miou, buffer[0], global_step=int(self.global_step), loggers=loggers, every=every
        )
        self.log("reward", out["reward/total_mean"], prog_bar=True, logger=False, batch_size=len(miou))
        self.last_step_logs = out


__all__ = ["ACCURACY", "GRPOModule"]
