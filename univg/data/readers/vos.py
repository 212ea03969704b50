"""ReasonVOS / ReVOS: reasoning video object segmentation as 6-frame grounding (ground on the third).

Records (both release eval files are accepted):
- ReasonVOS: ``image_list`` (frame paths), ``question``, ``bbox_list`` (one absolute-pixel box per
  frame, as a list or a string ``"[x1, y1, x2, y2]"``);
- ReVOS: ``video_id``, ``frames`` (indices into the video folder's frames sorted by their number),
  ``question``, ``bbox_list``. The folder ``image_root/video_id`` is listed once per video.
``instruction`` / ``exp`` are accepted for ``question``; ``frame_paths`` / ``images`` for ``image_list``.

Every listed frame is used by default, the target being frame ``target_frame`` of the list
(0-based, default 2 = the third), as the release's evaluation does. ``num_frames=N`` turns on
sampling: a record with more than N frames keeps N spread uniformly (first and last included), and
the target is the ``target_frame``-th of those (a different frame of the video: say so in reports).
Boxes are normalised by the target frame's size (record ``width``/``height``, else its header).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

from univg.core.sample_types import GroundingSample
from univg.data.readers.common import Record, record_sample, resolve_all, run_reader
from univg.data.schema import SampleList

_FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def uniform_indices(n: int, k: int | None = 6) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, first and last included (``None``: all).

    >>> uniform_indices(11, 6)
    [0, 2, 4, 6, 8, 10]
    >>> uniform_indices(6, 6), uniform_indices(8, None)
    ([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    if k is None or n <= k:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


@lru_cache(maxsize=4096)
def _sorted_frames(video_dir: str) -> tuple[str, ...]:
    names = [f for f in os.listdir(video_dir) if f.lower().endswith(_FRAME_SUFFIXES)]

    def key(name: str) -> tuple[int, str]:
        digits = re.findall(r"\d+", name)
        return (int(digits[0]) if digits else -1, name)

    return tuple(sorted(names, key=key))


def _frame_paths(rec: Record, image_root) -> list[str]:
    if isinstance(rec.raw, dict) and "video_id" in rec.raw and "frames" in rec.raw:
        video_id = rec.get("video_id", expected="a video folder name", types=str)
        indices = rec.get("frames", expected="a list of frame indices", types=list)
        if image_root is None:
            raise rec.error("video_id", "an image_root holding the ReVOS video folders", video_id)
        video_dir = os.path.join(os.fspath(image_root), video_id)
        if not os.path.isdir(video_dir):
            raise rec.error("video_id", f"a folder of frames at {video_dir}", video_id)
        frames = _sorted_frames(video_dir)
        if not all(isinstance(i, int) and 0 <= i < len(frames) for i in indices):
            raise rec.error("frames", f"indices into the {len(frames)} frames of {video_dir}", indices)
        return [os.path.join(video_dir, frames[i]) for i in indices]
    return resolve_all(rec.str_list("image_list", "frame_paths", "images"), image_root)


def _parse(
    rec: Record, image_root, num_frames: int | None, target_frame: int, task: str
) -> list[GroundingSample]:
    frames = _frame_paths(rec, image_root)
    boxes = rec.get("bbox_list", "boxes", expected="one box per frame", types=list)
    box_field = rec.name_of("bbox_list", "boxes")
    if len(boxes) != len(frames):
        raise rec.error(box_field, f"one box per frame ({len(frames)})", f"{len(boxes)} boxes")
    keep = uniform_indices(len(frames), num_frames)
    if len(keep) <= target_frame:
        raise rec.error("image_list", f"at least {target_frame + 1} frames", len(frames))
    if len(keep) < len(frames):
        rec.report.note("videos_subsampled")
    frames = [frames[i] for i in keep]
    src = keep[target_frame]
    field = f"{box_field}[{src}]"
    coords = rec.numbers(boxes[src], field)
    box, meta, size = rec.pixel_box(coords, field, frames[target_frame], None)
    meta.update(image_size=size, frame_indices=keep)
    question = rec.get("question", "instruction", "exp", expected="the instruction text", types=str)
    rec.map_field("question", "question", "instruction", "exp")  # errors name the file's field
    return record_sample(
        rec,
        frames,  # already resolved by _frame_paths
        None,
        task=rec.get("task", expected="a task name", types=str, default=task),
        target_index=target_frame,
        question=question.strip(),
        box=box,
        target_rule="vos:third" if target_frame == 2 else f"vos:frame{target_frame}",
        meta=meta,
    )


def read_vos(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    degenerate: str = "keep",
    num_frames: int | None = None,
    target_frame: int = 2,
    task: str = "vos",
) -> SampleList:
    """Read a ReasonVOS or ReVOS eval file: one sample per record (every listed frame, or
    ``num_frames`` sampled uniformly), report attached."""
    if num_frames is not None and num_frames <= target_frame:
        raise ValueError(f"num_frames {num_frames} leaves no frame {target_frame} (the target) to ground on")
    return run_reader(
        path,
        "vos",
        lambda rec: _parse(rec, image_root, num_frames, target_frame, task),
        skip_invalid,
        degenerate,
    )
