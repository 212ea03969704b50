"""Telling the sources of a mixed release file apart (``stage1_cotsft.json``, ``stage2_rl.json``):
single-image RefCOCO/COCO records from the multi-image MGrounding ones, per record."""

from __future__ import annotations

from collections.abc import Sequence

from univg.data.schema import ReadReport

#: Images under this folder are COCO's (RefCOCO/+/g); the release detects its single-image
#: COCO records by the same path component.
COCO_MARKER = "coco/train2014"
#: How a single-image record of a release file is told from the multi-image MGrounding ones.
SOURCE_KINDS = ("coco", "mgrounding")


def detect_source(
    images: Sequence[str], template: str | None, has_reasoning: bool | None = None
) -> tuple[str, str]:
    """(source kind, rule) of one record of a mixed release file (``stage1_cotsft.json``,
    ``stage2_rl.json``): ``coco`` for a single-image RefCOCO/COCO record, else ``mgrounding``.

    A single-image record is ``coco`` when its image is under ``coco/train2014`` (``path``), its
    prompt is the single-image template (``prompt``), or, in a stage-1 file, its target has no
    reasoning (``no_reasoning``: the release's stage-1 CoT records all reason). Decided per record,
    never per batch.

    >>> detect_source(["data/coco/train2014/COCO_train2014_1.jpg"], "plain")
    ('coco', 'path')
    >>> detect_source(["x/1.jpg"], "refcoco_single")
    ('coco', 'prompt')
    >>> detect_source(["x/1.jpg"], "reasoning", has_reasoning=False)
    ('coco', 'no_reasoning')
    >>> detect_source(["x/1.jpg", "x/2.jpg"], "refcoco_single")
    ('mgrounding', 'multi_image')
    >>> detect_source(["x/1.jpg"], "reasoning", has_reasoning=True)
    ('mgrounding', 'single_image')
    """
    if len(images) != 1:
        return "mgrounding", "multi_image"
    if COCO_MARKER in images[0].replace("\\", "/"):
        return "coco", "path"
    if template == "refcoco_single":
        return "coco", "prompt"
    if has_reasoning is False:
        return "coco", "no_reasoning"
    return "mgrounding", "single_image"


def note_source(report: ReadReport, kind: str, rule: str) -> dict[str, str]:
    """Count a record's detected source in the reader's ``report``; the meta entries for its sample."""
    report.note(f"source_kind:{kind}")
    return {"source_kind": kind, "source_rule": rule}
