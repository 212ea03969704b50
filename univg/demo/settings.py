"""The demo's knobs (:class:`DemoSettings`), the smoke budget, and ``--set field=value`` overrides."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from univg.model.backbone import BackboneSpec
from univg.rl.loss import LossType, ScaleRewards

EvalSplit = Literal["held_out", "validation"]


@dataclass
class Phase:
    """A stretch of the CoT-SFT curriculum: task types, distractor count, optimiser steps."""

    tasks: list[str]
    steps: int
    distractors: int | list[int] = 0  # a [low, high] range draws the count per sample


@dataclass
class DemoSettings:
    """Every knob of the miniature (the defaults are the measured recipe; see the README)."""

    seed: int = 0
    # model: Qwen2-VL architecture, small; a small text rope_theta so M-RoPE separates a 4x4..8x8
    # token grid (with 1e6 it barely rotates across it and the model collapses to a constant box)
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    rope_theta: float = 3.0
    vision_dim: int = 64
    vision_depth: int = 2
    untie: bool = True
    freeze_embeddings: bool = True
    train_vision: bool = True
    # data
    image_size: int = 112
    background: Literal["plain", "gradient", "grid"] = (
        "gradient"  # a colour gradient: each patch sees where it is
    )
    object_size: tuple[float, float] = (0.3, 0.55)
    reasoning_style: Literal["full", "short"] = "short"
    eval_tasks: list[str] = field(default_factory=lambda: ["single"])
    eval_n: int = 100
    # which set the stages are scored on: "held_out" (reported) or "validation" (a generator seed
    # of its own, for choosing settings without looking at the held-out set)
    eval_split: EvalSplit = "held_out"
    # stage 1
    phases: list[Phase] = field(default_factory=lambda: [Phase(["single"], 600)])
    sft_lr: float = 3e-3
    sft_batch: int = 8
    adam_betas: tuple[float, float] = (0.9, 0.98)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    # stage 2: GRPO runs (one per phi) and continued CoT-SFT, all from the stage-1 checkpoint, on
    # the same grpo_steps x grpo_prompts prompts; grpo_lr and cont_sft_lr were chosen on the
    # validation split of seed 0 (the README's stage-2 sweep), grpo_steps by the 15-minute budget
    grpo_tasks: list[str] | None = None
    grpo_phis: tuple[str, ...] = ("none", "exp")
    probe_n: int = 16  # fixed prompts whose sampled reward is measured every probe_every steps (0: off)
    probe_every: int = 5
    grpo_steps: int = 10
    grpo_prompts: int = 8
    group_size: int = 8
    grpo_lr: float = 2e-4
    beta: float = 0.04
    scale_rewards: ScaleRewards = "group"
    loss_type: LossType = "grpo"
    temperature: float = 1.0
    max_new_tokens: int = 48
    # continued CoT-SFT (paper Table 4 row 6): passes over the stage-2 prompts with their CoT
    # targets, grpo_prompts per step (0: no such run); group_size passes train on as many
    # sequences as GRPO samples
    cont_sft_epochs: int = 8
    cont_sft_lr: float = 3e-4

    def __post_init__(self) -> None:
        self.phases = [p if isinstance(p, Phase) else Phase(**p) for p in self.phases]  # from JSON
        hints = get_type_hints(type(self))
        for f in fields(self):
            allowed = get_args(hints[f.name]) if get_origin(hints[f.name]) is Literal else ()
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"DemoSettings.{f.name}: {getattr(self, f.name)!r} is not one of {allowed}")
        if self.cont_sft_epochs < 0:
            raise ValueError(f"DemoSettings.cont_sft_epochs must be >= 0, got {self.cont_sft_epochs}")

    def synthetic(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "reasoning_style": self.reasoning_style,
            "object_size": tuple(self.object_size),
        }

    def backbone(self, freeze_vision: bool) -> BackboneSpec:
        head_dim = self.hidden // self.heads
        half = head_dim // 2
        t = max(1, half // 4)
        h = (half - t) // 2
        overrides = {
            "text_config": {
                "hidden_size": self.hidden,
                "intermediate_size": 2 * self.hidden,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": self.rope_theta,
                    "mrope_section": [t, h, half - t - h],
                },
            },
            "vision_config": {
                "depth": self.vision_depth,
                "embed_dim": self.vision_dim,
                "hidden_size": self.hidden,
            },
            "tie_word_embeddings": not self.untie,
        }
        return BackboneSpec(
            preset="tiny",
            overrides=overrides,
            freeze_vision=freeze_vision,
            freeze_embeddings=self.freeze_embeddings,
        )


#: Fields that only stage 2 or the scoring reads: stage 1 (its data, model and training) does not
#: depend on them, so a stage-1 checkpoint is reused when every other field matches.
NOT_STAGE1 = (
    "eval_n",
    "eval_split",
    "eval_tasks",
    "grpo_tasks",
    "grpo_phis",
    "probe_n",
    "probe_every",
    "grpo_steps",
    "grpo_prompts",
    "group_size",
    "grpo_lr",
    "beta",
    "scale_rewards",
    "loss_type",
    "temperature",
    "cont_sft_epochs",
    "cont_sft_lr",
)


def stage1_settings(cfg: DemoSettings) -> dict[str, Any]:
    """The settings stage 1 depends on (JSON-ready)."""
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_STAGE1}))


def smoke_settings(seed: int = 0) -> DemoSettings:
    """Tiny budgets: every artefact in about a minute (the CI test), numbers meaningless."""
    return DemoSettings(
        seed=seed,
        hidden=64,
        image_size=56,
        eval_n=8,
        phases=[Phase(["single"], 4), Phase(["single", "diff"], 2)],
        sft_batch=4,
        grpo_steps=2,
        grpo_prompts=2,
        group_size=4,
        max_new_tokens=24,
        probe_n=2,
        probe_every=1,
        cont_sft_epochs=2,
    )


def apply_overrides(cfg: DemoSettings, pairs: Sequence[str]) -> DemoSettings:
    """``field=value`` strings onto a copy of the settings, the value parsed as the field's type.

    >>> apply_overrides(DemoSettings(), ["grpo_lr=1e-3", "grpo_prompts=8"]).grpo_prompts
    8
    """
    names = {f.name for f in fields(cfg)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {pair!r}: expected field=value with field one of {sorted(names)}")
        current = getattr(cfg, key)
        if isinstance(current, bool):
            value: Any = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float, str)):
            value = type(current)(raw)
        else:
            value = json.loads(raw)
            if isinstance(current, tuple):
                value = tuple(value)
        changes[key] = value
    try:
        return dataclasses.replace(copy.deepcopy(cfg), **changes)  # a copy, checked by __post_init__
    except ValueError as err:
        raise SystemExit(f"--set: {err}") from err
