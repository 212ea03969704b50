"""Seeded synthetic grounding data: coloured shapes on backgrounds, for all MIG-Bench task types.

Every sample is a :class:`GroundingSample` with in-memory PIL images, an exact normalised box of
the target object (or region) in ``images[target_index]``, a MIG-Bench-style question and a short
template reasoning chain (no tags) that names the target. The eleventh task type, ``single`` (one
image, "Locate the red rectangle in the image."), is the easy first step of a curriculum.

Geometry is exact because nothing is anti-aliased: an object drawn over pixel columns
``px1 .. px2 - 1`` and rows ``py1 .. py2 - 1`` has the normalised box
``(px1 / W, py1 / H, px2 / W, py2 / H)``. Within one image every object has its own colour, and
no palette colour occurs in a background, so the target's colour mask gives back its box.

Sample ``i`` of seed ``s`` depends only on ``(s, i)`` and the options, not on ``n``: a longer run
extends a shorter one.

>>> samples = generate_samples(3, tasks=["single", "diff"], image_size=56, seed=1)
>>> [(s.id, s.task, len(s.images), s.target_index) for s in samples]
[('syn-single-1-0', 'single', 1, 0), ('syn-diff-1-1', 'diff', 2, 1), ('syn-single-1-2', 'single', 1, 0)]
>>> samples[0].images[0].size
(56, 56)
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from univg.core.sample_types import GroundingSample
from univg.data.readers.mig_bench import MIG_TASKS  # the ten task types, in the paper's column order
from univg.data.synthetic.scene import BACKGROUNDS, COLOURS, MARK_COLOUR, SHAPES, _draw, _Scene
from univg.data.synthetic.tasks import _BUILDERS, _region, _short_reasoning

#: All task types this generator makes: the MIG-Bench ten plus ``single`` (curriculum step one).
TASKS: tuple[str, ...] = ("single", *MIG_TASKS)
REASONING_STYLES: tuple[str, ...] = ("full", "short")

#: Images per sample when ``num_images`` does not say (the most common MIG-Bench counts, trimmed).
DEFAULT_NUM_IMAGES: dict[str, int] = {
    "single": 1,
    "diff": 2,
    "view_diff": 2,
    "common_object": 4,
    "object_tracking": 6,
    "multi_view": 4,
    "region": 3,
    "refer_grounding": 2,
    "group_grounding": 4,
    "reasoning": 2,
    "correspondence": 2,
}
#: Tasks whose image count is fixed by their definition.
_FIXED_NUM_IMAGES = {"single", "diff", "view_diff", "refer_grounding", "reasoning", "correspondence"}
_MIN_NUM_IMAGES = {
    "common_object": 2,
    "object_tracking": 2,
    "multi_view": 2,
    "region": 2,
    "group_grounding": 2,
}


def _resolve(value: int | tuple[int, int] | dict | None, task: str, default: int, rng: random.Random) -> int:
    """An int, an inclusive ``(lo, hi)`` range sampled per sample, or a per-task dict of those."""
    if isinstance(value, dict):
        value = value.get(task)
    if value is None:
        return default
    if isinstance(value, (tuple, list)):
        return rng.randint(int(value[0]), int(value[1]))
    return int(value)


def generate_samples(
    n: int,
    tasks: Sequence[str] | None = None,
    image_size: int = 112,
    seed: int = 0,
    *,
    num_distractors: int | tuple[int, int] | dict | None = None,
    num_images: int | tuple[int, int] | dict | None = None,
    background: str = "plain",
    object_size: tuple[float, float] = (0.15, 0.35),
    task_weights: Sequence[float] | None = None,
    reasoning_style: str = "full",
) -> list[GroundingSample]:
    """``n`` seeded synthetic grounding samples with in-memory images.

    Args:
        n: number of samples.
        tasks: task types (names of :data:`TASKS`); sample ``i`` has ``tasks[i % len(tasks)]``
            unless ``task_weights`` is given (then a seeded weighted draw). None: the ten MIG tasks.
        image_size: side of every (square) image in pixels; 112 gives 16 Qwen2-VL image tokens.
        seed: samples depend only on ``(seed, i)`` and the options.
        num_distractors: objects besides the target in each (target) image: an int, an inclusive
            ``(lo, hi)`` range, or a dict task -> either. Default 0 for ``single``, 2 otherwise.
            Some tasks need at least one (diff, view_diff, multi_view, refer_grounding, reasoning,
            correspondence) and correspondence caps at two (one object per shape).
        num_images: images per sample for the variable-count tasks (common_object, object_tracking,
            multi_view, region, group_grounding): int, range or dict. Default
            :data:`DEFAULT_NUM_IMAGES`; other tasks have their fixed count.
        background: "plain" (grey), "gradient" (position-encoding colour ramps) or "grid".
        object_size: object side range as fractions of ``image_size``.
        task_weights: optional sampling weights aligned with ``tasks``.
        reasoning_style: "full" (two template sentences that explain the task's logic) or
            "short" (target, its image and coarse location only, about ten tokens: keeps CoT-SFT
            sequences cheap for the CPU demo).

    Returns:
        ``GroundingSample`` list; ``box`` normalised xyxy in ``images[target_index]``;
        ``meta["objects"]`` lists ``(colour, shape, Box)`` per image; ``meta["target"]`` is the
        target's ``(colour, shape)``.
    """
    tasks = list(MIG_TASKS if tasks is None else tasks)
    unknown = [t for t in tasks if t not in _BUILDERS]
    if unknown or not tasks:
        raise ValueError(f"synthetic: unknown task types {unknown}; choose from {TASKS}")
    if background not in BACKGROUNDS:
        raise ValueError(f"synthetic: unknown background {background!r}; choose one of {BACKGROUNDS}")
    if reasoning_style not in REASONING_STYLES:
        raise ValueError(
            f"synthetic: unknown reasoning_style {reasoning_style!r}; choose one of {REASONING_STYLES}"
        )
    if task_weights is not None and len(task_weights) != len(tasks):
        raise ValueError(f"synthetic: {len(task_weights)} task_weights for {len(tasks)} tasks")
    samples = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        task = tasks[i % len(tasks)] if task_weights is None else rng.choices(tasks, weights=task_weights)[0]
        k = _resolve(num_distractors, task, 0 if task == "single" else 2, rng)
        n_img = DEFAULT_NUM_IMAGES[task]
        if task not in _FIXED_NUM_IMAGES:
            n_img = _resolve(num_images, task, n_img, rng)
            if n_img < _MIN_NUM_IMAGES[task]:
                raise ValueError(f"synthetic: task {task} needs at least {_MIN_NUM_IMAGES[task]} images")
        scene = _Scene(rng, image_size, object_size)
        if task == "region":
            built = _region(rng, scene, n_img, k, background)
        else:
            built = _BUILDERS[task](rng, scene, n_img, k)
        images = built.images
        if images is None:
            marks = built.marks or [[] for _ in built.objects]
            images = [_draw(o, image_size, background, m) for o, m in zip(built.objects, marks)]
        meta = {
            "objects": [[(o.colour, o.shape, o.box(image_size)) for o in objs] for objs in built.objects],
            "target": (built.target.colour, built.target.shape) if built.target else None,
            "background": background,
            **(built.meta or {}),
        }
        samples.append(
            GroundingSample(
                id=f"syn-{task}-{seed}-{i}",
                task=task,
                images=images,
                target_index=built.target_index,
                question=built.question,
                box=built.box,
                reasoning=built.reasoning if reasoning_style == "full" else _short_reasoning(task, built),
                ref_boxes=built.ref_boxes or [],
                source="synthetic",
                index=i,
                target_rule=built.target_rule,
                meta=meta,
            )
        )
    return samples


__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_NUM_IMAGES",
    "MARK_COLOUR",
    "MIG_TASKS",
    "REASONING_STYLES",
    "SHAPES",
    "TASKS",
    "generate_samples",
]
