"""The grid's ``mini`` scale: the demo's learnable recipe as LightningCLI overlays.

``make <table> SCALE=mini`` composes every row of the paper's grid as at full scale (stage config,
size overlay, the row's overlay) and then one overlay per kind of run, written by this module
from :class:`univg.demo.DemoSettings` when the grid starts, so the demo and the grid read the
same settings (one source of truth, nothing copied into YAML by hand):

    sft.yaml    stage-1 rows: the demo's CoT-SFT (backbone, lr, schedule, batch, steps, data)
    grpo.yaml   GRPO rows: the demo's stage 2 (G, lr, beta, prompts per step, steps, prompts)
    eval.yaml   every evaluation: the demo's held-out synthetic set and decoding

Row knobs (phi, phi_eps, names, target format, init checkpoint) pass through the overlays, as on
the ``debug`` scale. The constant-box baseline (the mean training box predicted for every
held-out sample) is written as a results file beside the rows, so the merged table shows how far
the trained rows are above it::

    python -m univg.demo.grid overlays --seed 0 --out runs/mini/seed0/overlays
    python -m univg.demo.grid baseline --seed 0 --out runs/mini/seed0/mini_constant_box/test

``--set FIELD=VALUE`` changes a :class:`DemoSettings` field for both (as ``python -m univg.demo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from univg.core.help_text import with_examples
from univg.data.datamodules import SPLITS
from univg.demo.settings import DemoSettings, Phase, apply_overrides

#: The overlays this module writes, by the grid's kind of run.
OVERLAY_KINDS = ("sft", "grpo", "eval")

#: Results of the constant-box baseline are labelled with this run name.
BASELINE_RUN = "constant box"

# Where the demo draws each sample set (its seeds; the data module adds the split's index).
_SFT_SEED = (1000, 1)  # phase i of seed s: 1000 * s + 17 * i + 1; the grid's SFT rows take one phase
_GRPO_SEED = 7919
_EVAL_SEED = 10_000

_CPU_TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
    "precision": "32-true",
}


def _split_seed(seed: int, split: str) -> int:
    """The data module seed that makes ``split`` draw with ``seed`` (it adds the split's index)."""
    return seed - SPLITS.index(split)


def _backbone(cfg: DemoSettings, freeze_vision: bool) -> dict[str, Any]:
    return dataclasses.asdict(cfg.backbone(freeze_vision=freeze_vision))


def _synthetic(cfg: DemoSettings, distractors: int | list[int] | None = None) -> dict[str, Any]:
    d = cfg.synthetic()
    d["object_size"] = list(d["object_size"])
    if distractors is not None:  # the demo's curriculum phases name it; its other sets do not
        d["num_distractors"] = distractors if isinstance(distractors, int) else list(distractors)
    return d


def _training_trainer(steps: int) -> dict[str, Any]:
    return {
        **_CPU_TRAINER,
        "max_epochs": -1,
        "max_steps": steps,
        "accumulate_grad_batches": 1,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "val_check_interval": None,
        "log_every_n_steps": 10,
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
        ],
    }


def sft_overlay(cfg: DemoSettings) -> dict[str, Any]:
    """Stage-1 rows: the demo's CoT-SFT (one phase of its curriculum)."""
    if len(cfg.phases) != 1:
        raise ValueError(
            f"mini scale: DemoSettings.phases has {len(cfg.phases)} phases; a grid SFT row trains on "
            "one data set (one phase)"
        )
    phase = cfg.phases[0]
    if isinstance(phase, dict):  # from --set phases=[{...}]
        phase = Phase(**phase)
    return {
        "seed_everything": cfg.seed,
        "trainer": _training_trainer(phase.steps),
        "model": {
            "init_args": {
                "backbone": _backbone(cfg, freeze_vision=not cfg.train_vision),
                "lr": cfg.sft_lr,
                "weight_decay": 0.0,
                "warmup_ratio": cfg.warmup_ratio,
                "schedule": "cosine",
                "min_lr_ratio": cfg.min_lr_ratio,
                "adam_betas": list(cfg.adam_betas),
                "max_grad_norm": 1.0,
                "max_new_tokens": cfg.max_new_tokens,
                "num_pictures": 0,
            }
        },
        "data": {
            "class_path": "univg.data.SyntheticDataModule",
            "init_args": {
                "num_train": phase.steps * cfg.sft_batch,
                "num_val": 0,
                "num_test": 0,
                "tasks": list(phase.tasks),
                "image_size": cfg.image_size,
                "synthetic": _synthetic(cfg, phase.distractors),
                "batch_size": cfg.sft_batch,
                "eval_batch_size": 50,
                "shuffle": False,  # the demo's order (its curriculum is the order)
                "seed": _split_seed(_SFT_SEED[0] * cfg.seed + _SFT_SEED[1], "train"),
            },
        },
    }


def grpo_overlay(cfg: DemoSettings) -> dict[str, Any]:
    """GRPO rows: the demo's stage 2 (phi comes from the row)."""
    last = cfg.phases[-1]
    tasks = cfg.grpo_tasks or (last["tasks"] if isinstance(last, dict) else last.tasks)
    return {
        "seed_everything": cfg.seed,
        "trainer": _training_trainer(cfg.grpo_steps),
        "model": {
            "init_args": {
                "backbone": _backbone(cfg, freeze_vision=True),
                "lr": cfg.grpo_lr,
                "warmup_ratio": 0.0,
                "schedule": "constant",
                "group_size": cfg.group_size,
                "temperature": cfg.temperature,
                "top_p": 1.0,
                "top_k": 0,
                "max_completion_length": cfg.max_new_tokens,
                "max_new_tokens": cfg.max_new_tokens,
                "beta": cfg.beta,
                "scale_rewards": cfg.scale_rewards,
                "loss_type": cfg.loss_type,
                "rewards": None,
                "prompts_per_step": cfg.grpo_prompts,
                "logprob_chunk_size": None,
                "log_completions_every": 10,
                "num_pictures": 8,
            }
        },
        "data": {
            "class_path": "univg.data.SyntheticDataModule",
            "init_args": {
                "num_train": cfg.grpo_steps * cfg.grpo_prompts,
                "num_val": 0,
                "num_test": 0,
                "tasks": list(tasks),
                "image_size": cfg.image_size,
                "synthetic": _synthetic(cfg),
                "train_mode": "generate",
                "batch_size": cfg.grpo_prompts,
                "eval_batch_size": 50,
                "shuffle": False,
                "seed": _split_seed(_GRPO_SEED + cfg.seed, "train"),
            },
        },
    }


def eval_overlay(cfg: DemoSettings) -> dict[str, Any]:
    """Every evaluation: the demo's held-out set (``univg.demo.held_out_set``), greedy decoding."""
    return {
        "seed_everything": cfg.seed,
        "trainer": dict(_CPU_TRAINER),
        "model": {
            "init_args": {
                "backbone": _backbone(cfg, freeze_vision=True),
                "max_new_tokens": cfg.max_new_tokens,
                "num_pictures": 8,
            }
        },
        "data": {
            "class_path": "univg.data.SyntheticDataModule",
            "init_args": {
                "num_train": 0,
                "num_val": 0,
                "num_test": cfg.eval_n,
                "tasks": list(cfg.eval_tasks),
                "image_size": cfg.image_size,
                "synthetic": _synthetic(cfg),
                "eval_batch_size": 50,
                "shuffle": False,
                "seed": _split_seed(_EVAL_SEED + cfg.seed, "test"),
            },
        },
    }


OVERLAYS = {"sft": sft_overlay, "grpo": grpo_overlay, "eval": eval_overlay}


def write_overlays(cfg: DemoSettings, out: str | Path) -> list[Path]:
    """``<out>/sft.yaml``, ``grpo.yaml``, ``eval.yaml`` for ``cfg``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, build in OVERLAYS.items():
        path = out / f"{kind}.yaml"
        head = (
            f"# SCALE=mini overlay for the grid's {kind} runs, written by `python -m univg.demo.grid overlays`\n"
            f"# from univg.demo.DemoSettings (seed {cfg.seed}); regenerated when the demo changes, do not edit.\n"
        )
        path.write_text(head + yaml.safe_dump(build(cfg), sort_keys=False))
        paths.append(path)
    return paths


def write_baseline(cfg: DemoSettings, out: str | Path) -> Path:
    """``<out>/results_test.json``: the constant-box baseline (:func:`univg.demo.constant_box_metrics`)
    on the grid's stage-1 training set and held-out set, in the results format of every row."""
    from univg.data.synthetic import generate_samples
    from univg.demo.stages import constant_box_metrics
    from univg.evaluation.tables import write_run_results

    sft, ev = sft_overlay(cfg)["data"]["init_args"], eval_overlay(cfg)["data"]["init_args"]
    kw = {"tasks": sft["tasks"], "image_size": sft["image_size"], **sft["synthetic"]}
    train = generate_samples(sft["num_train"], seed=sft["seed"] + SPLITS.index("train"), **kw)
    kw = {"tasks": ev["tasks"], "image_size": ev["image_size"], **ev["synthetic"]}
    test = generate_samples(ev["num_test"], seed=ev["seed"] + SPLITS.index("test"), **kw)
    result = {
        "run": BASELINE_RUN,
        "benchmark": "synthetic",
        "stage": "test",
        "step": 0,
        "metrics": constant_box_metrics(train, test),
        "skipped": {},
        "notes": {"baseline": "the mean training box (model frame) for every held-out sample"},
        "settings": {"seed": cfg.seed},
    }
    return write_run_results(result, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m univg.demo.grid",
        description=__doc__.split("\n\n")[0],
        **with_examples(
            "python -m univg.demo.grid overlays --seed 0 --out runs/mini/seed0/overlays",
            "python -m univg.demo.grid baseline --seed 0 --out runs/mini/seed0/mini_constant_box/test",
        ),
    )
    p.add_argument("command", choices=("overlays", "baseline"))
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a DemoSettings field")
    a = p.parse_args(argv)
    cfg = apply_overrides(DemoSettings(seed=a.seed), a.set)
    if a.command == "overlays":
        for path in write_overlays(cfg, a.out):
            print(f"wrote {path}")
    else:
        path = write_baseline(cfg, a.out)
        avg = json.loads(path.read_text())["metrics"]["avg"]
        print(f"wrote {path} (constant box AVG {100 * avg:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
