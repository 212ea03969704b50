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
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from univg.boxes import Box
from univg.data.readers.mig_bench import MIG_TASKS  # the ten task types, in the paper's column order
from univg.data.schema import GroundingSample

#: All task types this generator makes: the MIG-Bench ten plus ``single`` (curriculum step one).
TASKS: tuple[str, ...] = ("single", *MIG_TASKS)

#: Saturated palette. Every colour has a channel outside [64, 192], the range backgrounds use.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "orange": (255, 140, 0),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("rectangle", "ellipse", "triangle")
#: Outline colour of reference marks ("marked with a white bounding box"); not a palette colour.
MARK_COLOUR = (255, 255, 255)
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "grid")
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

# Pixels kept free around each object (so marks and neighbours never touch) and from the border.
_GAP = 3
_BORDER = 2


@dataclass(frozen=True)
class _Obj:
    """A drawn object: colour name, shape name, pixel box with exclusive ends ``[x1, x2) x [y1, y2)``."""

    colour: str
    shape: str
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def box(self, size: int) -> Box:
        return Box(self.x1 / size, self.y1 / size, self.x2 / size, self.y2 / size)

    def moved(self, x1: int, y1: int, w: int | None = None, h: int | None = None) -> _Obj:
        w = self.x2 - self.x1 if w is None else w
        h = self.y2 - self.y1 if h is None else h
        return _Obj(self.colour, self.shape, x1, y1, x1 + w, y1 + h)


# ---------------------------------------------------------------------------------------------
# Drawing


@lru_cache(maxsize=16)
def _background_array(kind: str, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 background; all values in [64, 192] so no palette colour occurs.

    ``gradient`` encodes position in colour (red grows left to right, green top to bottom), which
    gives a vision tower without absolute position embeddings something to read (docs/design.md section 11).
    ``grid`` draws faint lines every eighth of the side.
    """
    if kind == "plain":
        return np.full((size, size, 3), 128, dtype=np.uint8)
    if kind == "gradient":
        ramp = (64 + np.arange(size) * 128 // max(size - 1, 1)).astype(np.uint8)  # [size]
        out = np.empty((size, size, 3), dtype=np.uint8)
        out[:, :, 0] = ramp[None, :]
        out[:, :, 1] = ramp[:, None]
        out[:, :, 2] = 128
        return out
    if kind == "grid":
        out = np.full((size, size, 3), 150, dtype=np.uint8)
        lines = (np.arange(1, 8) * size) // 8
        out[lines, :, :] = 100
        out[:, lines, :] = 100
        return out
    raise ValueError(f"synthetic: unknown background {kind!r}; choose one of {BACKGROUNDS}")


def _draw(objects: Sequence[_Obj], size: int, background: str, marks: Sequence[_Obj] = ()) -> Image.Image:
    """Render objects (and 1-pixel white outlines just outside each of ``marks``) on a background."""
    image = Image.fromarray(_background_array(background, size).copy(), "RGB")
    draw = ImageDraw.Draw(image)
    for o in objects:
        fill = COLOURS[o.colour]
        # PIL's xy ends are inclusive, ours exclusive.
        x2, y2 = o.x2 - 1, o.y2 - 1
        if o.shape == "rectangle":
            draw.rectangle((o.x1, o.y1, x2, y2), fill=fill)
        elif o.shape == "ellipse":
            draw.ellipse((o.x1, o.y1, x2, y2), fill=fill)
        else:  # triangle pointing up; its base spans the box bottom, its apex the box top
            draw.polygon([(o.x1, y2), (x2, y2), ((o.x1 + x2) / 2, o.y1)], fill=fill)
    for m in marks:
        draw.rectangle((m.x1 - 1, m.y1 - 1, m.x2, m.y2), outline=MARK_COLOUR)
    return image


# ---------------------------------------------------------------------------------------------
# Placement


class _Scene:
    """Random non-overlapping placement of objects in one ``size x size`` image."""

    def __init__(self, rng: random.Random, size: int, object_size: tuple[float, float]):
        self.rng = rng
        self.size = size
        lo = max(6, round(object_size[0] * size))
        hi = max(lo, round(object_size[1] * size))
        self.side = (lo, hi)

    def _free(self, cand: _Obj, placed: Sequence[_Obj]) -> bool:
        return all(
            cand.x1 >= p.x2 + _GAP
            or p.x1 >= cand.x2 + _GAP
            or cand.y1 >= p.y2 + _GAP
            or p.y1 >= cand.y2 + _GAP
            for p in placed
        )

    def dims(self, scale: float = 1.0) -> tuple[int, int]:
        lo, hi = self.side
        w = self.rng.randint(lo, hi)
        h = self.rng.randint(lo, hi)
        return max(6, round(w * scale)), max(6, round(h * scale))

    def place(
        self, colour: str, shape: str, placed: Sequence[_Obj], dims: tuple[int, int] | None = None
    ) -> _Obj:
        """A new object that keeps ``_GAP`` pixels from every placed one; shrinks when crowded."""
        w, h = dims or self.dims()
        for attempt in range(400):
            if attempt and attempt % 100 == 0:  # crowded: shrink and retry
                w, h = max(6, w * 3 // 4), max(6, h * 3 // 4)
            x1 = self.rng.randint(_BORDER, self.size - _BORDER - w)
            y1 = self.rng.randint(_BORDER, self.size - _BORDER - h)
            cand = _Obj(colour, shape, x1, y1, x1 + w, y1 + h)
            if self._free(cand, placed):
                return cand
        raise RuntimeError(
            f"synthetic: cannot place {len(placed) + 1} objects in a {self.size}px image; "
            "lower num_distractors or object_size"
        )

    def layout(self, specs: Sequence[tuple[str, str]], scale: float = 1.0) -> list[_Obj]:
        placed: list[_Obj] = []
        for colour, shape in specs:
            placed.append(self.place(colour, shape, placed, self.dims(scale)))
        return placed


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
