"""Stage 2: GRPO with difficulty-aware weighting (GRPO-Difficulty), and pure RL from the base model.

One optimiser step = ``prompts_per_step`` prompts (16 by default) whatever the micro-batch size:
each training batch is rolled out (G completions per prompt, scored, advantages and phi per group)
and buffered; when the buffer holds a step's prompts the module runs ``num_iterations`` (mu)
optimiser steps over it, accumulating gradients across the buffered micro-batches. With mu = 1
the ratio is 1 and pi_old = pi_theta detached (no extra pass).
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from univg.difficulty import PHI_NAMES, PhiName, difficulty_shares, phi
from univg.grpo import (
    LOSS_TYPES,
    SCALES,
    GRPOLossTerms,
    LossType,
    ScaleRewards,
    group_advantages,
    group_miou,
    grpo_loss_terms,
    zero_variance_groups,
)
from univg.modules.base import GroundingModule
from univg.rewards import compute_rewards, get_reward, reward_stats
from univg.rollout import (
    Rollout,
    completion_logprobs,
    generate,
    images_per_prompt,
    model_inputs,
    shared_prefix_allowed,
)

ACCURACY = "accuracy"  # the reward whose group mean is mIoU (docs/design.md section 4)


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


class GRPOModule(GroundingModule):
    """GRPO / GRPO-Difficulty (``phi``) on a Qwen2-VL backbone. docs/design.md section 4 is the spec.

    Args:
        group_size: G completions per prompt.
        temperature, top_p, top_k: sampling (top_k 0 = off). The release sampled with
            ``GenerationConfig(do_sample=True, temperature=1)``, so transformers' default ``top_k=50``
            applied: the paper configs set ``top_k: 50``; 0 samples the full vocabulary.
        max_completion_length: max new tokens per completion.
        beta: KL coefficient (k3 estimator to the reference); 0 skips the reference pass.
        eps_low, eps_high: clipping range of the ratio.
        num_iterations: mu, optimiser steps per rollout batch (> 1 keeps a real pi_old).
        phi: difficulty weight "none" (plain GRPO), "exp" (paper default), "square", "neglog".
        phi_eps: epsilon of neglog.
        normalize_phi: rescale phi to mean 1 over the step's groups.
        loss_type: "grpo", "bnpo" or "dr_grpo".
        scale_rewards: advantage scaling "group", "batch" or "none".
        drop_zero_variance: drop groups whose rewards are all equal (A = 0) from the loss.
        rewards: reward name -> weight (``univg.rewards`` registry; the release's own variants are
            ``accuracy_release`` and ``format_release``).
        miou_reward: the reward whose group mean is a prompt's mIoU (phi's input); with the release's
            rewards, ``accuracy_release``.
        prompts_per_step: prompts per optimiser step across all processes (gradient accumulation).
        logprob_chunk_size: rows per log-prob forward (bounds the [rows, C, V] logits); None = all.
        log_completions_every: log a sample of completions as text every N optimiser steps (0 = off).
        check_invariants: measure GRPO's run-time invariants every optimiser step and log them
            (``invariants/*``, and one JSON line per step in ``<log dir>/invariants.jsonl``): KL and
            ratio at the first step, sampled vs scored log-probs, the lr against the schedule, the
            difficulty weights used. Costs a log-softmax per sampled token; ``make rehearsal`` uses it.
        vllm: sample rollouts with vLLM (GPU only): keyword arguments of
            :class:`univg.engines.VLLMEngine` (``model_name_or_path`` defaults to
            ``backbone.checkpoint``); built on first use, weights pushed after each optimiser step.
            None (default) samples with ``univg.rollout.generate``.
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
        scale_rewards: ScaleRewards = "group",
        drop_zero_variance: bool = False,
        rewards: dict[str, float] | None = None,
        miou_reward: str = ACCURACY,
        prompts_per_step: int = 16,
        logprob_chunk_size: int | None = None,
        log_completions_every: int = 50,
        check_invariants: bool = False,
        vllm: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        if phi not in PHI_NAMES:
            raise ValueError(f"unknown phi {phi!r}; choose one of {PHI_NAMES}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
        if scale_rewards not in SCALES:
            raise ValueError(f"unknown scale_rewards {scale_rewards!r}; choose one of {SCALES}")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 for group-normalised advantages, got {group_size}")
        if max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.automatic_optimization = False
        self.group_size = group_size
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_completion_length = max_completion_length
        self.beta = beta
        self.eps_low = eps_low
        self.eps_high = eps_high
        self.num_iterations = num_iterations
        self.phi_name = phi
        self.phi_eps = phi_eps
        self.normalize_phi = normalize_phi
        self.loss_type = loss_type
        self.scale_rewards = scale_rewards
        self.drop_zero_variance = drop_zero_variance
        self.reward_weights = dict(rewards) if rewards else {ACCURACY: 1.0, "format": 1.0}
        get_reward(miou_reward)  # an unknown name fails here, naming the registered rewards
        self.miou_reward = miou_reward
        self.prompts_per_step = prompts_per_step
        self.logprob_chunk_size = logprob_chunk_size
        self.log_completions_every = log_completions_every
        self.check_invariants = check_invariants
        if vllm is not None:
            from univg.engines import VLLMEngine

            VLLMEngine.check_kwargs(vllm)  # a typo fails here, not after the first rollout batch
        self.vllm = dict(vllm) if vllm is not None else None
        self._vllm_engine: Any = None
        self.ref_model: torch.nn.Module | None = None
        self._buffer: list[ScoredRollout] = []
        self._times: dict[str, float] = {}

    # ----------------------------------------------------------------------------- model
    @property
    def uses_lora(self) -> bool:
        return self.backbone.lora is not None

    def configure_model(self) -> None:
        super().configure_model()
        # The reference is the initial policy. With LoRA it is the base model with adapters off
        # (no second copy); otherwise a frozen copy, kept in the checkpoint so resume is exact.
        if self.beta > 0 and not self.uses_lora and self.ref_model is None:
            self.ref_model = copy.deepcopy(self.model).eval()
            self.ref_model.requires_grad_(False)

    @contextmanager
    def reference(self):
        """The reference policy as a context: adapters disabled (LoRA) or the frozen copy."""
        if self.uses_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.ref_model

    def train(self, mode: bool = True) -> GRPOModule:
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()  # never in train mode (dropout), never updated
        return self

    # ----------------------------------------------------------------------------- rollout
    @property
    def vllm_engine(self) -> Any:
        """The vLLM rollout engine when ``vllm`` is set (None otherwise), built on first use: not at
        construction, so such configs can be printed and checked on a machine without vLLM."""
        if self.vllm is None:
            return None
        if self._vllm_engine is None:
            from univg import engines

            kw = dict(self.vllm)
            kw.setdefault("model_name_or_path", self.backbone.checkpoint)
            if kw["model_name_or_path"] is None:
                raise ValueError(
                    "vllm: set vllm.model_name_or_path or backbone.checkpoint (vLLM loads the architecture, "
                    "tokenizer and processor from a checkpoint, then takes the policy's weights)"
                )
            self._vllm_engine = engines.VLLMEngine(**kw)
            # the policy is not the checkpoint vLLM loaded (init_checkpoint, a resumed run)
            self._vllm_engine.sync_weights(self.model)
        return self._vllm_engine

    def micro_batches_per_step(self, batch_size: int) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        per_step = batch_size * world
        if self.prompts_per_step % per_step:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} must be a multiple of the prompts per micro-batch "
                f"across processes ({batch_size} x {world} = {per_step})"
            )
        return self.prompts_per_step // per_step

    def optimizer_steps_total(self) -> int:
        """Optimiser steps of the fit: under manual optimisation Lightning's estimate counts
        micro-batches, while a step here takes ``prompts_per_step`` prompts and runs
        ``num_iterations`` updates (a last partial step per epoch included)."""
        if self._trainer is None:
            return 1
        trainer = self.trainer
        batches = trainer.num_training_batches  # per process and epoch, limit_train_batches applied
        loader = trainer.train_dataloader
        batch_size = getattr(loader, "batch_size", None) if loader is not None else None
        if not batch_size or not math.isfinite(batches):
            return super().optimizer_steps_total()
        per_epoch = math.ceil(int(batches) / self.micro_batches_per_step(int(batch_size)))
        total = per_epoch * max(1, trainer.max_epochs or 1) * self.num_iterations
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        return max(1, total)

    def shared_prefix(self) -> bool:
        """Whether log-probs share each prompt's prefix across its G rows. Decided once for the policy,
        old-policy and reference passes alike, by what the gradient pass allows (not under gradient
        checkpointing or FSDP): the three must be scored by the same arithmetic, or KL and the ratio
        measure the difference between two computations (bf16) instead of between two policies."""
        return shared_prefix_allowed(self.model)

    def sampling_kwargs(self) -> dict[str, Any]:
        """How rollouts are sampled (keyword arguments of :func:`univg.rollout.generate`)."""
        return dict(
            group_size=self.group_size,
            max_new_tokens=self.max_completion_length,
            do_sample=True,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )

    @torch.no_grad()
    def score(self, batch: dict[str, Any]) -> ScoredRollout:
        """Sample G completions per prompt and compute rewards, advantages, phi, old/ref log-probs."""
        g = self.group_size
        t0 = time.perf_counter()
        sampling = self.sampling_kwargs()
        if self.vllm is None:
            roll = generate(
                self.model,
                model_inputs(batch),
                self.tokenizer,
                **sampling,
                record_logprobs=self.check_invariants,
            )
        else:
            roll = self.vllm_engine.generate(model_inputs(batch), self.tokenizer, **sampling)
        t1 = time.perf_counter()
        boxes = batch["boxes"].repeat_interleave(g, dim=0).tolist()  # [N, 4] model frame
        forms = batch.get("answer_formats")  # per prompt: "think" or "box" (RefCOCO single image)
        forms = [f for f in forms for _ in range(g)] if forms is not None else None  # [N]
        sizes = batch.get("frame_sizes")  # per prompt: the resized target image (pixel frames)
        sizes = [s for s in sizes for _ in range(g)] if sizes is not None else None  # [N]
        scoring = dict(frame=self.frame, answer_formats=forms, sizes=sizes)
        rewards = compute_rewards(self.reward_weights, roll.texts, boxes, **scoring)
        name = self.miou_reward
        acc = (
            rewards[name]
            if name in rewards
            else compute_rewards({name: 1.0}, roll.texts, boxes, **scoring)[name]
        )
        total = rewards["total"]  # [N]
        advantages = group_advantages(total, g, self.scale_rewards)  # [N]
        miou = group_miou(acc, g)  # [num_prompts], per group, never over the micro-batch
        w_group = phi(self.phi_name, miou, self.phi_eps)  # [num_prompts], no gradient
        stats: dict[str, Any] = dict(reward_stats(roll.texts, boxes, **scoring))
        stats["total_all"] = total  # every group's rewards, for a step-wide "batch" scale
        zero_var = zero_variance_groups(total, g)  # [num_prompts]
        stats["zero_variance_frac"] = float(zero_var.float().mean())
        stats["truncated"] = float(roll.truncated.float().sum())
        if self.drop_zero_variance and bool(zero_var.any()):
            keep = ~zero_var
            stats["dropped_groups"] = float(zero_var.sum())
            roll, rewards, advantages, miou_kept, w_group = _select_groups(
                roll, rewards, advantages, miou, w_group, keep
            )
        else:
            miou_kept = miou
        weights = w_group.repeat_interleave(g)  # [N]
        device = roll.completion_ids.device
        ref_logp = old_logp = None
        if roll.completion_ids.shape[0] and (self.beta > 0 or self.num_iterations > 1):
            if self.num_iterations > 1:
                old_logp = self.logprobs(self.model, roll)
            if self.beta > 0:
                with self.reference() as ref:
                    ref_logp = self.logprobs(ref, roll)
        t2 = time.perf_counter()
        self._times["generation"] = self._times.get("generation", 0.0) + t1 - t0
        self._times["scoring"] = self._times.get("scoring", 0.0) + t2 - t1
        stats["miou_all"] = miou  # kept as a tensor for the histogram
        return ScoredRollout(
            roll, rewards, advantages.to(device), miou_kept, weights.to(device), old_logp, ref_logp, stats
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
            self.temperature,
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
        (``logp`` [N, C]: the policy's log-probs when already computed)."""
        r = scored.rollout
        if logp is None:
            logp = self.logprobs(self.model, r)  # [N, C]
        return grpo_loss_terms(
            logp,
            scored.old_logp,
            scored.ref_logp,
            scored.advantages if advantages is None else advantages,
            scored.weights if weights is None else weights,
            r.completion_mask,
            beta=self.beta,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            loss_type=self.loss_type,
            max_len=self.max_completion_length,
        )

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        per_step = self.micro_batches_per_step(int(batch["input_ids"].shape[0]))
        self._buffer.append(self.score(batch))
        if len(self._buffer) >= per_step:
            self.optimise(self._buffer)
            self._buffer = []

    def on_train_epoch_end(self) -> None:
        if self._buffer:  # a last partial step: train on it rather than drop its prompts
            self.print(f"univg: last optimiser step of the epoch uses {len(self._buffer)} micro-batch(es)")
            self.optimise(self._buffer)
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
        advantages: list[torch.Tensor | None] = [None] * len(buffer)
        if self.scale_rewards == "batch":
            std = _step_std(torch.cat([s.stats["total_all"] for s in buffer]))
            advantages = [
                group_advantages(s.rewards["total"], g, "batch", batch_std=std).to(s.advantages.device)
                for s in buffer
            ]
        weights: list[torch.Tensor | None] = [None] * len(buffer)
        if self.normalize_phi:
            allw = torch.cat([s.weights for s in buffer])
            total, count = _world_sum([float(allw.sum()), float(allw.numel())])
            mean = total / count if count else 0.0
            if mean > 0:  # all-zero weights (every group solved under square): nothing to rescale
                weights = [s.weights / mean for s in buffer]
        used = [s.weights if w is None else w for s, w in zip(buffer, weights)]
        # each micro-batch's share of the step: sequences (grpo, dr_grpo) or tokens (bnpo), all ranks
        sizes = [
            float(s.rollout.completion_mask.sum())
            if self.loss_type == "bnpo"
            else float(s.rollout.completion_ids.shape[0])
            for s in buffer
        ]
        (step_size,) = _world_sum([sum(sizes)])
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
                    _measure_invariants(inv, s, logp.detach(), self.beta)
            if self.max_grad_norm > 0:
                params = [p for p in self.model.parameters() if p.grad is not None]
                if params:
                    logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
        self._times["backward"] = time.perf_counter() - t0
        if self.vllm is not None:  # once per rollout batch: the next rollouts sample the updated policy
            t1 = time.perf_counter()
            self.vllm_engine.sync_weights(self.model)
            self._times["weight_sync"] = time.perf_counter() - t1
        self._log_step(buffer, logs, opt, used, inv if check else None)

    def _log_step(
        self,
        buffer: list[ScoredRollout],
        logs: dict[str, float],
        opt: Any,
        used: list[torch.Tensor],
        invariants: dict[str, float] | None = None,
    ) -> None:
        rewards = {k: torch.cat([s.rewards[k] for s in buffer]) for k in buffer[0].rewards}
        miou = torch.cat([s.stats["miou_all"] for s in buffer])
        g = self.group_size
        weights = torch.cat([w[::g] for w in used])  # [groups]: the weights the loss used
        lengths = torch.cat([s.rollout.completion_mask.sum(1).float() for s in buffer])
        prompt_tokens = sum(int(s.rollout.prompt["attention_mask"].sum()) * self.group_size for s in buffer)
        step_time = sum(self._times.values())
        out: dict[str, float] = {f"train/{k}": v for k, v in logs.items()}
        for k, v in rewards.items():
            out[f"reward/{k}_mean"] = float(v.mean())
            out[f"reward/{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        out.update({f"difficulty/{k}": v for k, v in difficulty_shares(miou).items()})
        out["difficulty/miou_mean"] = float(miou.mean())
        out["difficulty/phi_mean"] = float(weights.mean())
        for key in ("zero_variance_frac",):
            out[f"train/{key}"] = sum(s.stats[key] for s in buffer) / len(buffer)
        for key in ("unparsable", "truncated", "swapped", "clamped", "dropped_groups"):
            out[f"completions/{key}"] = sum(s.stats.get(key, 0.0) for s in buffer)
        out["completions/length_mean"] = float(lengths.mean())
        out["completions/count"] = float(lengths.numel())
        out["perf/seconds_per_step"] = step_time
        for k, v in self._times.items():
            out[f"perf/{k}_seconds"] = v
        out["perf/tokens_per_second"] = (prompt_tokens + float(lengths.sum())) / max(step_time, 1e-9)
        out["perf/completions_per_second"] = float(lengths.numel()) / max(step_time, 1e-9)
        if torch.cuda.is_available():
            out["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            import resource

            out["perf/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["train/lr"] = float(opt.param_groups[0]["lr"])
        if invariants is not None:
            self._record_invariants(buffer, used, invariants, out)
        self.log_dict(out, on_step=True, prog_bar=False, batch_size=len(miou))
        self.log("reward", out["reward/total_mean"], prog_bar=True, on_step=True, batch_size=len(miou))
        self.last_step_logs = out
        self._times = {}
        exp = getattr(self.logger, "experiment", None) if self._trainer is not None else None
        if exp is not None and hasattr(exp, "add_histogram"):
            exp.add_histogram("difficulty/miou", miou, self.global_step)
            every = self.log_completions_every
            if every and self.global_step % every == 0:
                r = buffer[0].rollout
                text = "\n\n".join(
                    f"**reward {float(buffer[0].rewards['total'][i]):.2f}** `{t[:500]}`"
                    for i, t in enumerate(r.texts[: self.group_size])
                )
                exp.add_text("completions", text, self.global_step)

    def _record_invariants(
        self,
        buffer: list[ScoredRollout],
        used: list[torch.Tensor],
        inv: dict[str, float],
        out: dict[str, float],
    ) -> None:
        """Log the step's invariants and append them, with every group's mIoU and weight gathered
        from all processes, to ``invariants.jsonl`` (rank 0)."""
        g = self.group_size
        local = [
            (float(m), float(w))
            for s, ws in zip(buffer, used)
            for m, w in zip(s.miou.tolist(), ws[::g].tolist())
        ]
        groups = [pair for part in _gather(local) for pair in part]
        inv = {k: _world_max(v) if k.endswith("_max") else v for k, v in inv.items()}
        out.update({f"invariants/{k}": v for k, v in inv.items()})
        record = {
            "step": int(self.global_step) - self.num_iterations,  # the step the lr was used at
            **inv,
            "phi": self.phi_name,
            "phi_eps": self.phi_eps,
            "normalize_phi": self.normalize_phi,
            "miou": [m for m, _ in groups],
            "weights": [w for _, w in groups],
            "world_size": self.trainer.world_size if self._trainer is not None else 1,
        }
        root = self.trainer.log_dir if self._trainer is not None else None
        if root is not None and (self._trainer is None or self.trainer.is_global_zero):
            with open(Path(root) / "invariants.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------------- resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The sampler's RNG, so a resumed run draws the same completions as an uninterrupted one.
        checkpoint["univg_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["univg_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("univg_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _select_groups(
    roll: Rollout,
    rewards: dict[str, torch.Tensor],
    advantages: torch.Tensor,
    miou: torch.Tensor,
    w_group: torch.Tensor,
    keep: torch.Tensor,
) -> tuple[Rollout, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
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
    return new, {k: v[rows] for k, v in rewards.items()}, advantages[rows], miou[keep], w_group[keep]


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
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _world_sum(values: list[float]) -> list[float]:
    """Element-wise sums over every process (the values themselves in a single process)."""
    if not _distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def _world_max(value: float) -> float:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


def _gather(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _step_std(totals: torch.Tensor) -> float:
    """Unbiased std of every reward of the optimiser step, over all processes."""
    n, s1, s2 = _world_sum(
        [float(totals.numel()), float(totals.double().sum()), float((totals.double() ** 2).sum())]
    )
    if n < 2:
        return 0.0
    return math.sqrt(max(0.0, (s2 - s1 * s1 / n) / (n - 1)))


def _measure_invariants(inv: dict[str, float], s: ScoredRollout, logp: torch.Tensor, beta: float) -> None:
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
