"""``make rehearsal``: the paper-scale path, run as a whole in miniature, with GRPO's invariants checked.

Stage 1 (``configs/cot_sft.yaml``) -> stage 2 (``configs/grpo_diff.yaml``) -> evaluation
(``configs/eval/mig_bench.yaml``), each layered with ``configs/fsdp/7b_8gpu.yaml`` exactly as a user
runs them on 8 GPUs. Only these are swapped: the preset (tiny, loaded from a checkpoint folder this
script writes), the devices (2 CPU processes over gloo), the data paths and the step budget (the
size of the data, 1 prompt (8 completions) per process per optimiser step where the config has
2 per GPU, validation once at the end of stage 1 instead of every 100-500 steps). Precision (bf16
compute under FSDP, fp32 master weights), gradient checkpointing, schedules, full fine-tuning with a
frozen reference, G, lengths and sampling stay as the configs write them.

Inputs are made here, in the formats of the real release:
- a checkpoint folder in the transformers-4.x layout of ``Qwen/Qwen2-VL-7B-Instruct`` (flat
  ``config.json``, ``model.*`` / ``visual.*`` weight names, its ``generation_config.json`` with
  ``repetition_penalty: 1.05``, ``top_k: 1``, ``top_p: 0.001``, ``temperature: 0.01``). The weights
  are the tiny preset's (seed 0) after a short warm start (:func:`univg.rehearsal.inputs.warm_start`: supervised steps on
  stage 2's and the evaluation's prompts, each answered ``<think>Found it.</think><answer>(x1, y1),
  (x2, y2)</answer>`` with boxes drawn apart from their answers), standing in for an Instruct
  model that already answers with boxes: about half its sampled answers parse, their boxes
  differ, so stage 2's groups differ in reward and phi and the policy learns;
- ``stage1_cotsft.json`` (MGrounding-style CoT records and single-image COCO records),
  ``stage2_rl.json`` (multi-image records and RefCOCO-style single-image records) and a MIG-Bench
  ``MIG_data.json``, with real-size images (640 x 480, and one near the 401,408-pixel limit).

Stage 2 runs with :class:`univg.rehearsal.probe.Stage2Probe` among its callbacks: at every optimiser step it records
each process's advantages, the gradient norm and the largest difference between each sampled
token's recorded log-prob (the rollout engine records it after every processor transformers
applies) and the same log-prob recomputed from the policy under the configured temperature /
top-k / top-p, and the change of the policy's weights over the stage (``probe.jsonl`` beside the
module's ``invariants.jsonl``). The report prints, per stage-2 step, mean |A| per rank, the
gradient norm, each group's mIoU and phi and a completion per rank, then the weight change.

Then the measurements are read back (:func:`univg.rehearsal.checks.measure`) and each invariant is checked on them
(:func:`univg.rehearsal.checks.check_measurements`, a function of the recorded values alone: the tests inject a fault into
each and watch it fail) and printed with its measured value; a measurement that is missing fails.
The exit code is 1 if any invariant fails.

    python -m univg.rehearsal --out runs/rehearsal

Modules: :mod:`~univg.rehearsal.inputs` (the stand-in checkpoint and the data),
:mod:`~univg.rehearsal.probe` (the stage-2 callback), :mod:`~univg.rehearsal.run` (the stage
commands), :mod:`~univg.rehearsal.checks` (measurements and invariants).
"""
