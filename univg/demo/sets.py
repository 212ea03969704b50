"""The demo's data: every set is a seed of the synthetic generator of its own.

Seeds per demo seed ``s``: stage-1 phases ``1000 s + 17 i + 1``, stage-2 prompts ``7919 + s``,
held-out ``10_000 + s``, probe prompts ``20_000 + s``, validation ``30_000 + s``.
"""

from __future__ import annotations

from univg.core.sample_types import GroundingSample
from univg.data.synthetic import generate_samples
from univg.demo.settings import DemoSettings

HELD_OUT_SEED = 10_000
VALIDATION_SEED = 30_000


def held_out_set(cfg: DemoSettings) -> list[GroundingSample]:
    """The held-out evaluation samples (a seed of their own, disjoint from every training seed)."""
    return generate_samples(
        cfg.eval_n,
        tasks=cfg.eval_tasks,
        image_size=cfg.image_size,
        seed=HELD_OUT_SEED + cfg.seed,
        **cfg.synthetic(),
    )


def validation_set(cfg: DemoSettings) -> list[GroundingSample]:
    """Like the held-out set, from another seed: stage-2 settings are chosen on this one."""
    return generate_samples(
        cfg.eval_n,
        tasks=cfg.eval_tasks,
        image_size=cfg.image_size,
        seed=VALIDATION_SEED + cfg.seed,
        **cfg.synthetic(),
    )


def eval_set(cfg: DemoSettings) -> list[GroundingSample]:
    """The set every stage is scored on: ``cfg.eval_split``."""
    return held_out_set(cfg) if cfg.eval_split == "held_out" else validation_set(cfg)


def sft_train_set(cfg: DemoSettings) -> list[GroundingSample]:
    """Stage-1 samples in curriculum order (phase after phase, ``steps x sft_batch`` each)."""
    samples: list[GroundingSample] = []
    for i, ph in enumerate(cfg.phases):
        n = ph.steps * cfg.sft_batch
        d = ph.distractors if isinstance(ph.distractors, int) else tuple(ph.distractors)
        samples += generate_samples(
            n,
            tasks=ph.tasks,
            image_size=cfg.image_size,
            seed=1000 * cfg.seed + 17 * i + 1,
            num_distractors=d,
            **cfg.synthetic(),
        )
    return samples


def stage2_prompts(cfg: DemoSettings) -> list[GroundingSample]:
    """The stage-2 prompts, ``grpo_steps x grpo_prompts``: GRPO samples completions for them,
    continued CoT-SFT trains on their CoT targets."""
    return generate_samples(
        cfg.grpo_steps * cfg.grpo_prompts,
        tasks=cfg.grpo_tasks or cfg.phases[-1].tasks,
        image_size=cfg.image_size,
        seed=7919 + cfg.seed,
        **cfg.synthetic(),
    )


def probe_set(cfg: DemoSettings) -> list[GroundingSample]:
    """The reward probe's fixed prompts (:class:`univg.demo.probe.RewardProbe`)."""
    return generate_samples(
        cfg.probe_n,
        tasks=cfg.grpo_tasks or cfg.phases[-1].tasks,
        image_size=cfg.image_size,
        seed=20_000 + cfg.seed,
        **cfg.synthetic(),
    )
