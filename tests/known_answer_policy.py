"""The known-answer GRPO tests' policy, reward, held-out measure and training run (shared by
``test_grpo_known_answer.py`` and ``test_grpo_known_answer_lora.py``).

The policy (:func:`make_peaked_checkpoint`) is the tiny preset with its tied embedding scaled by 14
(a random tiny model samples almost uniformly from 151,936 tokens and never ends a completion) and
the ``<|im_end|>`` row set so that the first token is the end token with probability 0.25. The row
points along the mean final hidden state at the prompts' last position (``angle`` 0) or is turned
``angle`` degrees off it towards a fixed random direction orthogonal to it: RMSNorm fixes the final
hidden state's norm, so along the mean state the end token's logit is already at its maximum over
the states' directions, and only the head (the tied embedding) can raise it; turned off it, the
decoder layers can raise it by turning the final state towards the row (what LoRA needs).

The reward is :class:`StopAtOnce`: 1 for an empty completion (the end token drawn first), 0
otherwise; its optimum is to stop at once every time. The observable is independent of the module
and of its logs: the share of completions that end at once, counted from the token ids of 128
completions (8 held-out prompts x 16) sampled from the trained weights with a fixed generator
(:func:`held_out_stops`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve()
EOS = 151645  # <|im_end|>
END_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
MAX_TOKENS = 8
SCALE = 14.0  # the tied embedding is multiplied by it: a peaked policy
GROUP = 8
STEPS = 8
LR = 6e-3


# ------------------------------------------------------------------------------------------ rewards
class StopAtOnce:
    """``sign`` for an empty completion (the end token drawn first), 0 otherwise."""

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        return [self.sign * float(text == "") for text in completions]


class SilentOnRank(StopAtOnce):
    """:class:`StopAtOnce`, except on process ``rank``, where every ``every``-th call scores every
    completion 0 (one reward per group: with ``drop_zero_variance`` that rank keeps no group)."""

    def __init__(self, rank: int = 1, every: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank, self.every, self.calls = rank, every, 0

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        self.calls += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == self.rank and self.calls % self.every == 0:
            return [0.0] * len(completions)
        return super().__call__(completions, **kwargs)


def stop_reward(cls: str = "StopAtOnce", weight: float = 1.0, **init_args: Any) -> dict[str, Any]:
    """The ``rewards`` entry of a plug-in defined in this file."""
    return {"stop": {"class_path": f"{HERE}:{cls}", "init_args": init_args, "weight": weight}}


# ------------------------------------------------------------------------------------------ policy
def prompts(processor: Any, n: int, seed: int) -> dict[str, torch.Tensor]:
    from univg.data import GroundingCollator
    from univg.data.synthetic import generate_samples
    from univg.rl.rollout import model_inputs

    samples = generate_samples(n, tasks=["single"], image_size=56, seed=seed)
    return model_inputs(GroundingCollator(processor, mode="generate")(samples))


def make_peaked_checkpoint(
    path: Path, processor: Any, stop_prob: float = 0.25, seed: int = 0, angle: float = 0.0
) -> Path:
    """A tiny Qwen2-VL checkpoint whose sampled completions repeat a few tokens and that ends at once
    (the end token first) with probability about ``stop_prob``: the tied embedding scaled by 14, the
    end token's row along the mean final hidden state at the prompts' last position, turned
    ``angle`` degrees off it towards a random direction orthogonal to it (seeded by ``seed``), its
    length set by bisection so that the end token's mean probability there is ``stop_prob``."""
    import lightning as L

    from univg.model.backbone import BackboneSpec
    from univg.rl.rollout import generate

    L.seed_everything(seed)
    model = BackboneSpec(preset="tiny").build()
    lm = model.model.language_model
    emb = lm.embed_tokens.weight  # tied with lm_head
    with torch.no_grad():
        emb.mul_(SCALE)
        emb[EOS] = 0.0
    hidden: list[torch.Tensor] = []
    hook = lm.norm.register_forward_hook(lambda mod, args, out: hidden.append(out[:, -1].detach()))
    generate(model, prompts(processor, 16, seed=1000 + seed), processor.tokenizer, max_new_tokens=1)
    hook.remove()
    h = hidden[0]  # [16, H]: the prefill's last position, where the first token is drawn
    with torch.no_grad():
        logits = h @ emb.T  # [16, V]
        logits[:, EOS] = float("-inf")
        others = torch.logsumexp(logits, dim=1)  # [16]
        direction = h.mean(0) / h.mean(0).norm()
        if angle:
            off = torch.randn(h.shape[1], generator=torch.Generator().manual_seed(seed))
            off = off - (off @ direction) * direction
            turn = math.radians(angle)
            direction = math.cos(turn) * direction + math.sin(turn) * off / off.norm()
        along = h @ direction  # [16]
        lo, hi = 0.0, 100.0
        for _ in range(60):
            c = (lo + hi) / 2
            p = torch.sigmoid(c * along - others).mean()  # the end token's probability there
            lo, hi = (c, hi) if p < stop_prob else (lo, c)
        emb[EOS] = c * direction
    model.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------ measures
def completion_length(ids: torch.Tensor) -> torch.Tensor:
    """Tokens before the first end token of each row (``MAX_TOKENS`` when none), from the ids alone."""
    is_end = torch.isin(ids, torch.tensor(END_IDS))
    width = ids.shape[1]
    first = torch.where(is_end, torch.arange(width), width).amin(dim=1)  # [N]
    return first.clamp(max=MAX_TOKENS).float()


def end_inclusive_mask(ids: torch.Tensor) -> torch.Tensor:
    """1 on each row's tokens up to and including its first end token, from the ids alone."""
    return (torch.arange(ids.shape[1])[None] <= completion_length(ids)[:, None]).long()


def sample(model: torch.nn.Module, inputs: dict, tokenizer: Any, seed: int = 123, group: int = 16) -> Any:
    from univg.rl.rollout import generate

    return generate(
        model, inputs, tokenizer, group_size=group, max_new_tokens=MAX_TOKENS, do_sample=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def held_out_stops(model: torch.nn.Module, inputs: dict, tokenizer: Any) -> tuple[float, float]:
    """Share of completions sampled from ``model`` that end at once (no token before the end
    token), counted from the ids, and its standard error."""
    at_once = (completion_length(sample(model, inputs, tokenizer).completion_ids) == 0).float()
    share = float(at_once.mean())
    return share, (share * (1 - share) / at_once.numel()) ** 0.5


#: The held-out prompts' seed (the training prompts use seed 0).
HELD_OUT_SEED = 777


def held_out_prompts(processor: Any) -> dict[str, torch.Tensor]:
    """The 8 held-out prompts every known-answer measure samples."""
    return prompts(processor, 8, seed=HELD_OUT_SEED)


def load_policy(checkpoint: Path) -> torch.nn.Module:
    """The tiny policy of ``checkpoint``, in eval mode."""
    from univg.model.backbone import BackboneSpec

    return BackboneSpec(preset="tiny", checkpoint=str(checkpoint)).build().eval()


def starting_share(initial: torch.nn.Module, held_out: dict, tokenizer: Any) -> tuple[float, float]:
    """The initial policy's held-out share of completions that end at once and its standard
    error, checked to leave room to rise and to fall."""
    share, sem = held_out_stops(initial, held_out, tokenizer)
    assert 0.15 < share < 0.35, share
    return share, sem


def report(start: tuple[float, float], model: torch.nn.Module, held_out: dict, tokenizer: Any) -> float:
    """The trained policy's held-out stop share, printed beside the start's."""
    end, end_sem = held_out_stops(model, held_out, tokenizer)
    print(f"held-out stop share {start[0]:.3f} -> {end:.3f} (sem {end_sem:.3f})")
    return end


def kl_to(model: torch.nn.Module, reference: torch.nn.Module, inputs: dict, tokenizer: Any) -> float:
    """KL(model || reference) per completion, estimated on completions sampled from ``model``: the
    mean over completions of the summed log-ratio of their tokens (up to the first end token)."""
    from univg.rl.rollout import completion_logprobs

    r = sample(model, inputs, tokenizer, seed=321)
    mask = end_inclusive_mask(r.completion_ids)
    with torch.no_grad():
        lp = completion_logprobs(model, r.prompt, r.completion_ids, mask, 16, shared_prefix=False)
        lp0 = completion_logprobs(reference, r.prompt, r.completion_ids, mask, 16, shared_prefix=False)
    return float(((lp - lp0) * mask).sum(1).mean())


# ------------------------------------------------------------------------------------------ training
def record_steps() -> Any:
    """A callback keeping what the module logged at each optimiser step (its own view, secondary)."""
    import lightning as L

    class Record(L.Callback):
        def __init__(self) -> None:
            self.steps: dict[int, dict[str, float]] = {}

        def on_train_batch_end(self, trainer, module, *args) -> None:
            logs = getattr(module, "last_step_logs", None)
            if logs is not None:
                self.steps[trainer.global_step] = {k: float(v) for k, v in logs.items()}

    return Record()


def train(
    checkpoint: Path,
    processor: Any,
    *,
    steps: int = STEPS,
    seed: int = 0,
    batch_size: int = 2,
    backbone: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] = (),
    trainer_kwargs: dict[str, Any] | None = None,
    **module_kwargs: Any,
) -> tuple[Any, list[dict[str, float]]]:
    """Seeded GRPO on ``steps`` optimiser steps of 2 prompts (``batch_size`` per micro-batch) from
    the peaked checkpoint; returns the trained module and the module's per-step logs."""
    import lightning as L

    from univg.data import SyntheticDataModule
    from univg.model.backbone import BackboneSpec
    from univg.modules import GRPOModule

    L.seed_everything(seed)
    settings: dict[str, Any] = dict(
        lr=LR, warmup_ratio=0.0, schedule="constant", group_size=GROUP, max_completion_length=MAX_TOKENS,
        beta=0.0, phi="none", prompts_per_step=2, log_completions_every=0, rewards=stop_reward(),
    )  # fmt: skip
    settings.update(module_kwargs)
    spec = BackboneSpec(preset="tiny", checkpoint=str(checkpoint), **(backbone or {}))
    module = GRPOModule(backbone=spec, **settings)
    module._tokenizer = processor.tokenizer  # the checkpoint's tokenizer is this one; not reloaded per run
    data = SyntheticDataModule(
        num_train=steps * settings["prompts_per_step"], num_val=0, tasks=["single"],
        image_size=56, train_mode="generate", batch_size=batch_size, shuffle=False, seed=seed,
    )  # fmt: skip
    data._processor = processor
    record = record_steps()
    trainer = L.Trainer(
        **{
            "max_steps": steps, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "callbacks": [record, *callbacks], **(trainer_kwargs or {}),
        }
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module, [record.steps[k] for k in sorted(record.steps)]


def assert_logged_rise(logs: list[dict[str, float]], steps: int = STEPS) -> None:
    """The module's own view agrees in direction (its log; secondary to the held-out measure)."""
    rewards = [s["reward/total_mean"] for s in logs]
    assert len(rewards) == steps and sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
