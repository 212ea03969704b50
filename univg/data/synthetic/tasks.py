"""Synthetic task builders: for each MIG-Bench task type (and ``single``), the objects of each
image, the target, a MIG-Bench-style question and a template reasoning chain
(:mod:`univg.data.synthetic`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from univg.core.boxes import Box
from univg.data.synthetic.scene import _BORDER, COLOURS, SHAPES, _draw, _Obj

# ---------------------------------------------------------------------------------------------
# Words


def _ordinal_mig(k: int) -> str:
    """MIG-Bench writes ``1th``, ``2th``, ``3th`` ... (1-based); we keep its wording."""
    return f"{k}th"


_ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def _where(box: Box) -> str:
    """Coarse location of a box centre in thirds: "in the upper left", "at the bottom", ..."""
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    row = ("upper", "middle", "lower")[min(int(cy * 3), 2)]
    col = ("left", "centre", "right")[min(int(cx * 3), 2)]
    return {
        ("middle", "centre"): "in the centre",
        ("upper", "centre"): "at the top",
        ("lower", "centre"): "at the bottom",
        ("middle", "left"): "on the left",
        ("middle", "right"): "on the right",
    }.get((row, col), f"in the {row} {col}")


def _frame_box(box: Box) -> str:
    """Reference box in the question, Qwen2-VL 0-1000 frame (``int(x * 1000)``, docs/design.md section 1)."""
    q = [min(999, int(v * 1000)) for v in box.as_tuple()]
    return f"<|box_start|>({q[0]},{q[1]}),({q[2]},{q[3]})<|box_end|>"


def _art(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------
# Task builders. Each returns (objects per image, marks per image, target_index, target object or
# region box, question, reasoning, target_rule, ref boxes, extra images or None).


@dataclass
class _Built:
    objects: list[list[_Obj]]
    target_index: int
    box: Box
    question: str
    reasoning: str
    target_rule: str
    target: _Obj | None = None
    marks: list[list[_Obj]] | None = None
    ref_boxes: list[Box] | None = None
    images: list[Image.Image] | None = None  # when the builder renders itself (region)
    meta: dict | None = None


def _centred(colour: str, shape: str, size: int) -> _Obj:
    """The reference object shown alone in image 1: half the image side, centred."""
    q, half = size // 4, size // 2
    return _Obj(colour, shape, q, q, q + half, q + half)


def _marked_first(objects: Sequence[list[_Obj]], t0: _Obj, ref: Box) -> dict:
    """``_Built`` fields for a target object marked in image 1: its outline, ref box, ref image."""
    return {"marks": [[t0]] + [[] for _ in objects[1:]], "ref_boxes": [ref], "meta": {"ref_image": 0}}


def _combos(rng: random.Random, k: int, exclude_colours: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``k`` (colour, shape) pairs with distinct colours, none of them in ``exclude_colours``."""
    colours = [c for c in COLOURS if c not in exclude_colours]
    if k > len(colours):
        raise ValueError(f"synthetic: {k} objects need distinct colours but only {len(colours)} are left")
    return [(c, rng.choice(SHAPES)) for c in rng.sample(colours, k)]


def _single(rng, scene, n_img, k) -> _Built:
    specs = _combos(rng, 1 + k)
    objs = scene.layout(specs)
    t = objs[0]
    box = t.box(scene.size)
    return _Built(
        [objs],
        0,
        box,
        f"Locate the {t.name} in the image.",
        f"The image contains {_art(t.colour)} {t.name}. It lies {_where(box)}.",
        "question:only-image",
        target=t,
    )


def _diff(rng, scene, n_img, k) -> _Built:
    specs = _combos(rng, 1 + max(k, 1))
    common = scene.layout(specs[1:])
    extra = scene.place(*specs[0], common)
    box = extra.box(scene.size)
    return _Built(
        [common, [*common, extra]],
        1,
        box,
        "Compare these two images carefully and give me the coordinates of their difference.",
        f"Image 2 contains {_art(extra.colour)} {extra.name} that image 1 does not have. "
        f"It lies {_where(box)} of image 2.",
        "implied:second",
        target=extra,
    )


def _view_diff(rng, scene, n_img, k) -> _Built:
    specs = _combos(rng, 1 + max(k, 1))
    first = scene.layout(specs[1:])
    # The second view is the first shifted as a whole (a moved camera), plus one real difference.
    s = scene.size
    lo_x = _BORDER - min(o.x1 for o in first)
    hi_x = s - _BORDER - max(o.x2 for o in first)
    lo_y = _BORDER - min(o.y1 for o in first)
    hi_y = s - _BORDER - max(o.y2 for o in first)
    dx, dy = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
    second = [o.moved(o.x1 + dx, o.y1 + dy) for o in first]
    extra = scene.place(*specs[0], second)
    box = extra.box(s)
    return _Built(
        [first, [*second, extra]],
        1,
        box,
        "Compare these two images carefully and give me the coordinates of their real difference in "
        "the second image. Find it and locate it in the second image.",
        f"The second view is shifted, but every object of image 1 is still there; "
        f"only {_art(extra.colour)} {extra.name} is new. It lies {_where(box)} of image 2.",
        "question:ordinal",
        target=extra,
    )


def _common_object(rng, scene, n_img, k) -> _Built:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    # Distractor (colour, shape) pairs are never reused across images, so only the target is common.
    pool = [(c, s) for c in COLOURS if c != colour for s in SHAPES]
    rng.shuffle(pool)
    objects = []
    for _ in range(n_img):
        mine: list[tuple[str, str]] = []
        for pair in list(pool):
            if len(mine) == k:
                break
            if all(pair[0] != m[0] for m in mine):
                mine.append(pair)
                pool.remove(pair)
        objects.append(scene.layout([(colour, shape), *mine]))
    ti = rng.randrange(n_img)
    t = objects[ti][0]
    box = t.box(scene.size)
    return _Built(
        objects,
        ti,
        box,
        f"These images share one object in common. Recognize and locate this object in the "
        f"{_ordinal_mig(ti + 1)} image.",
        f"Every image contains {_art(colour)} {t.name}; no other object appears in all of them. "
        f"In image {ti + 1} it lies {_where(box)}.",
        "question:ordinal",
        target=t,
    )


def _object_tracking(rng, scene, n_img, k) -> _Built:
    specs = _combos(rng, 1 + k)
    s = scene.size
    first = scene.layout(specs)
    t0 = first[0]
    w, h = t0.x2 - t0.x1, t0.y2 - t0.y1
    # The tracked object moves on a straight line from frame 0 to a random end point.
    ex, ey = rng.randint(_BORDER, s - _BORDER - w), rng.randint(_BORDER, s - _BORDER - h)
    objects = []
    for f in range(n_img):
        a = f / max(n_img - 1, 1)
        tracked = t0.moved(round(t0.x1 + a * (ex - t0.x1)), round(t0.y1 + a * (ey - t0.y1)))
        others = []
        for o in first[1:]:  # distractors stay where they are unless the tracked object is there
            if scene._free(o, [tracked, *others]):
                others.append(o)
            else:
                others.append(scene.place(o.colour, o.shape, [tracked, *others], (o.x2 - o.x1, o.y2 - o.y1)))
        objects.append([tracked, *others])
    ti = rng.randrange(1, n_img)
    t = objects[ti][0]
    box, ref = t.box(s), t0.box(s)
    return _Built(
        objects,
        ti,
        box,
        "These are a sequence of images containing moving objects. For the object in the first image "
        f"marked with a white bounding box({_frame_box(ref)}), please locate it in the "
        f"{_ordinal_mig(ti + 1)} image.",
        f"The marked object is the {t0.name} {_where(ref)} of image 1. "
        f"In image {ti + 1} the {t.name} is now {_where(box)}.",
        "question:ordinal",
        target=t,
        **_marked_first(objects, t0, ref),
    )


def _multi_view(rng, scene, n_img, k) -> _Built:
    specs = _combos(rng, 1 + max(k, 1))
    # Every view holds the same objects, rearranged and rescaled: only the mark says which one.
    objects = [scene.layout(specs, scale=rng.uniform(0.75, 1.25)) for _ in range(n_img)]
    ti = rng.randrange(1, n_img)
    t0, t = objects[0][0], objects[ti][0]
    ref, box = t0.box(scene.size), t.box(scene.size)
    return _Built(
        objects,
        ti,
        box,
        "These images share one object in common(the object marked with a white bounding box in the "
        f"first image({_frame_box(ref)})). Recognize and locate this object in the {_ordinal_mig(ti + 1)} image.",
        f"The marked object in image 1 is the {t0.name}. In image {ti + 1} the {t.name} lies {_where(box)}.",
        "question:ordinal",
        target=t,
        **_marked_first(objects, t0, ref),
    )


def _region(rng, scene, n_img, k, background) -> _Built:
    s = scene.size
    objs = scene.layout(_combos(rng, 1 + k))
    source = _draw(objs, s, background)
    crops, which = [], []
    for _ in range(n_img - 1):
        o = rng.choice(objs)  # each region is a crop around one object, with context
        cw = rng.randint(max(o.x2 - o.x1, s // 4), max(o.x2 - o.x1, s // 2))
        ch = rng.randint(max(o.y2 - o.y1, s // 4), max(o.y2 - o.y1, s // 2))
        x1 = rng.randint(max(0, o.x2 - cw), min(o.x1, s - cw))
        y1 = rng.randint(max(0, o.y2 - ch), min(o.y1, s - ch))
        crops.append((x1, y1, x1 + cw, y1 + ch))
        which.append(o)
    r = rng.randrange(n_img - 1)
    x1, y1, x2, y2 = crops[r]
    box = Box(x1 / s, y1 / s, x2 / s, y2 / s)
    images = [source] + [source.crop(c).resize((s, s), Image.NEAREST) for c in crops]
    o = which[r]
    return _Built(
        [objs, *[[] for _ in crops]],
        0,
        box,
        "You are given a source image followed by its several regions. Please locate the "
        f"{_ordinal_mig(r + 1)} region picture in the source image.",
        f"Region {r + 1} (image {r + 2}) is a close-up of the {o.name}. "
        f"In the source image 1 that area lies {_where(box)}.",
        "implied:first",
        target=o,
        images=images,
        meta={"region": r, "crop_pixels": crops[r]},
    )


def _refer_grounding(rng, scene, n_img, k) -> _Built:
    specs = _combos(rng, 1 + max(k, 1))
    c, sh = specs[0]
    ref_obj = _centred(c, sh, scene.size)  # image 1 shows the object alone, large and centred
    objs = scene.layout(specs)
    t = objs[0]
    box = t.box(scene.size)
    return _Built(
        [[ref_obj], objs],
        1,
        box,
        "Find and locate where does the object in image-1 locate in the image-2.",
        f"Image 1 shows {_art(c)} {t.name}. In image 2 the {t.name} lies {_where(box)}.",
        "question:ordinal",
        target=t,
    )


def _group_grounding(rng, scene, n_img, k) -> _Built:
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    ti = rng.randrange(n_img)
    objects = []
    for i in range(n_img):
        if i == ti:
            objects.append(scene.layout([(colour, shape), *_combos(rng, k, [colour])]))
        else:
            # Other images may hold the same colour as another shape, never the described pair.
            specs = _combos(rng, max(k, 1))
            specs = [
                (c, s if (c, s) != (colour, shape) else SHAPES[(SHAPES.index(s) + 1) % 3]) for c, s in specs
            ]
            objects.append(scene.layout(specs))
    t = objects[ti][0]
    box = t.box(scene.size)
    return _Built(
        objects,
        ti,
        box,
        "Please find the bounding box coordinates for the area described by: "
        f"<|object_ref_start|>the {t.name}<|object_ref_end|>.",
        f"Only image {ti + 1} contains {_art(colour)} {t.name}. It lies {_where(box)}.",
        "additional_info",
        target=t,
        meta={"additional_info": f"It is in the {_ORDINAL_WORDS[ti]} image. {_frame_box(box)}."},
    )


def _reasoning(rng, scene, n_img, k) -> _Built:
    c1, s1 = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    same_shape = rng.random() < 0.5
    others_c = [c for c in COLOURS if c != c1]
    others_s = [s for s in SHAPES if s != s1]
    if same_shape:  # answer: same shape, other colour; a decoy has the same colour, other shape
        rule = "has the same shape as the object in image-1 but a different colour"
        tc = rng.choice(others_c)
        target, decoy = (tc, s1), (c1, rng.choice(others_s))
        fill_c = [c for c in others_c if c != tc]
        distract = [(c, rng.choice(others_s)) for c in rng.sample(fill_c, max(k - 1, 0))]
    else:  # answer: same colour, other shape; a decoy has the same shape, other colour
        rule = "has the same colour as the object in image-1 but a different shape"
        target, decoy = (c1, rng.choice(others_s)), (rng.choice(others_c), s1)
        fill_c = [c for c in others_c if c != decoy[0]]
        distract = [(c, rng.choice(others_s)) for c in rng.sample(fill_c, max(k - 1, 0))]
    ref_obj = _centred(c1, s1, scene.size)
    objs = scene.layout([target, decoy, *distract][: 1 + max(k, 1)])
    t = objs[0]
    box = t.box(scene.size)
    return _Built(
        [[ref_obj], objs],
        1,
        box,
        f"Which object in Image-2 {rule}? Find it and locate it in the second image.",
        f"Image 1 shows {_art(c1)} {c1} {s1}. In image 2 the {t.name} {rule.split(' as ')[0]} "
        f"but a different {'colour' if same_shape else 'shape'}. It lies {_where(box)}.",
        "question:ordinal",
        target=t,
        meta={"rule": "same_shape" if same_shape else "same_colour"},
    )


def _correspondence(rng, scene, n_img, k) -> _Built:
    # Both images hold one object of each chosen shape; colours differ between the images, so the
    # counterpart of the marked object is the one with its shape.
    n = min(1 + max(k, 1), len(SHAPES))
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(list(COLOURS), 2 * n)
    first = scene.layout(list(zip(colours[:n], shapes)))
    second = scene.layout(list(zip(colours[n:], shapes)))
    t0, t = first[0], second[0]
    ref, box = t0.box(scene.size), t.box(scene.size)
    return _Built(
        [first, second],
        1,
        box,
        "You are now presented with two objects. For the area marked by the white bounding box in the "
        f"first image({_frame_box(ref)}), identify and locate the corresponding area in the second image "
        "that serves a similar function or shares a similar meaning.",
        f"The marked object in image 1 is the {t0.name}. Its counterpart in image 2 is the {t.shape}, "
        f"here the {t.name}, {_where(box)}.",
        "question:ordinal",
        target=t,
        **_marked_first([first, second], t0, ref),
    )


def _short_reasoning(task: str, built: _Built) -> str:
    """About ten tokens: which object, in which image, roughly where (the CPU demo's CoT)."""
    where = _where(built.box)
    name = built.target.name if built.target else "region"
    if task == "single":
        return f"The {name} is {where}."
    if task == "region":
        return f"Region {built.meta['region'] + 1}: the {name}, {where} of image 1."
    return f"The {name} in image {built.target_index + 1} is {where}."


_BUILDERS = {
    "single": _single,
    "diff": _diff,
    "view_diff": _view_diff,
    "common_object": _common_object,
    "object_tracking": _object_tracking,
    "multi_view": _multi_view,
    "region": _region,
    "refer_grounding": _refer_grounding,
    "group_grounding": _group_grounding,
    "reasoning": _reasoning,
    "correspondence": _correspondence,
}
