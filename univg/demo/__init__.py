"""``make demo``: the paper's pipeline in miniature on a CPU.

base eval -> CoT-SFT (stage 1) -> from the same stage-1 checkpoint, on the same stage-2 prompts:
continued CoT-SFT, GRPO (phi none) and GRPO-Difficulty (phi exp) (paper Table 4 rows 6-8) ->
evaluation of each, on seeded synthetic grounding data, with the real Qwen2-VL architecture (a
small preset), the exact tokenizer and the real output format. The floating-point kernels are
pinned so a seed gives the same numbers on any x86-64 CPU with AVX2 (:mod:`univg.demo.numerics`).
Everything goes to ``--out`` (default ``runs/demo``):

    table.md / table.csv   per-task Acc@0.5, mean IoU and AVG per stage (paper Tables 4/5 layout),
                           with a constant-box baseline row
    figure3.png            share of groups with mIoU < 0.3 / 0.3-0.7 / > 0.7 over GRPO steps,
                           with the step's mean reward and the reward probe (:class:`RewardProbe`)
    predictions.png        held-out predictions with boxes drawn (green truth, red prediction)
    summary.json           every number above, the settings, the numerics in effect, the probe
                           points, the SFT losses and the wall times
    <stage>/version_0/     TensorBoard logs, configs, predictions (``tensorboard --logdir runs/demo``)

    python -m univg.demo --out runs/demo --seed 0          # the full run (wall times: README)
    python -m univg.demo --out runs/demo_smoke --smoke     # every artefact, tiny budgets (CI)
    python -m univg.demo --stage1 runs/demo/cot_sft/version_0/stage1.ckpt --set grpo_lr=2e-4 \\
        --set eval_split=validation --out runs/s2          # stage 2 alone, other settings
    python -m univg.demo.seeds --seeds 0,1,2               # every seed, then the mean table

The names below are imported lazily (PEP 562), so that ``python -m univg.demo`` can set the
numerics environment before torch is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Phase": "settings",
    "DemoSettings": "settings",
    "smoke_settings": "settings",
    "apply_overrides": "settings",
    "held_out_set": "sets",
    "validation_set": "sets",
    "eval_set": "sets",
    "sft_train_set": "sets",
    "stage2_prompts": "sets",
    "probe_set": "sets",
    "LossRecorder": "probe",
    "StepRecorder": "probe",
    "RewardProbe": "probe",
    "FRAME": "stages",
    "ListDataModule": "stages",
    "constant_box_metrics": "stages",
    "run_stage1": "stages",
    "run_continued_sft": "stages",
    "run_grpo": "stages",
    "run_grpo_stage": "stages",
    "write_outputs": "report",
    "write_table": "report",
    "plot_figure3": "report",
    "collect_pictures": "report",
    "run_demo": "run",
    "run_stage2": "run",
    "main": "run",
    "pinned_torch": "numerics",
    "pin_environment": "numerics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'univg.demo' has no attribute {name!r}")
    return getattr(import_module(f"univg.demo.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
