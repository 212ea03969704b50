"""Human review of a sample of the built CoT data: export, then apply the reviewer's marks.

``export_review`` writes a JSONL (one item per reviewed sample) and a self-contained HTML page
(images inline as base64 JPEG thumbnails, the ground-truth box drawn in green and the teacher's own
box dashed in orange on the target image, the question and the chosen chain, accept/reject buttons
and a button that downloads ``marks.json``). Large reviews are split into pages of ``page_size``
items (``review-0001.html``, ...), each with its own download; ``import-review`` takes them all.

``apply_review`` removes the rejected ids from the built file. Marks must name reviewed ids and be
``"accept"`` or ``"reject"``; anything else is an error naming the marks file and the id.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from univg.core.boxes import IntBox, format_answer
from univg.cot.results import SampleResult
from univg.data.images import load_image

MARKS = ("accept", "reject")
THUMBNAIL_SIDE = 768


def review_item(result: SampleResult, output: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The JSON-serialisable review record of one accepted result (boxes in the 0-1000 frame)."""
    sample = result.sample
    chosen = result.chains[result.chosen] if result.chosen is not None else None
    check = chosen.check if chosen is not None else None
    return {
        "id": sample.id,
        "task": sample.task,
        "question": sample.question,
        "images": [ref if isinstance(ref, str) else "<in-memory image>" for ref in sample.images],
        "target_index": sample.target_index,
        "answer": format_answer(result.answer),
        "teacher_answer": format_answer(check.box) if check is not None and check.box is not None else None,
        "iou": check.iou if check is not None else None,
        "selection": result.selection,
        "reasoning": result.reasoning,
        "assistant": f"<think>{result.reasoning}</think><answer>{format_answer(result.answer)}</answer>",
        "output": os.path.abspath(output) if output is not None else None,
    }


def _draw(image: Image.Image, box: IntBox, colour: str, dashed: bool = False) -> None:
    """Draw a 0-1000-frame box on ``image`` in place."""
    w, h = image.size
    x1, y1, x2, y2 = (v / 1000 * s for v, s in zip(box, (w, h, w, h)))
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(w, h) / 200))
    if not dashed:
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        return
    step = 4 * width
    for a, b, fixed, horizontal in (
        (x1, x2, y1, True),
        (x1, x2, y2, True),
        (y1, y2, x1, False),
        (y1, y2, x2, False),
    ):
        t = a
        while t < b:
            end = min(t + step, b)
            line = ((t, fixed), (end, fixed)) if horizontal else ((fixed, t), (fixed, end))
            draw.line(line, fill=colour, width=width)
            t += 2 * step


def _thumbnail_url(image: Image.Image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _item_html(result: SampleResult, item: dict[str, Any], image_root: str | None) -> str:
    sample = result.sample
    figures = []
    for i in range(len(sample.images)):
        try:
            image = load_image(sample, i, image_root).copy()
        except OSError as err:
            figures.append(f"<figure><p class=err>{html.escape(str(err))}</p></figure>")
            continue
        caption = f"image {i + 1}"
        if i == sample.target_index:
            _draw(image, result.answer, "#00c000")
            check = result.chains[result.chosen].check if result.chosen is not None else None
            if check is not None and check.box is not None:
                _draw(image, check.box, "#ff8c00", dashed=True)
            caption += " (target: green = ground truth, dashed orange = teacher)"
        figures.append(
            f'<figure><img src="{_thumbnail_url(image)}"><figcaption>{caption}</figcaption></figure>'
        )
    rid = html.escape(item["id"], quote=True)
    iou = f"{item['iou']:.3f}" if item["iou"] is not None else "-"
    return f"""<section class=item data-id="{rid}">
<h2>{rid} <small>{html.escape(item["task"])} &middot; IoU {iou} &middot; {html.escape(str(item["selection"]))}</small></h2>
<div class=imgs>{"".join(figures)}</div>
<p class=q><b>Question:</b> {html.escape(item["question"])}</p>
<pre>{html.escape(item["assistant"])}</pre>
<label><input type=radio name="m-{rid}" value=accept> accept</label>
<label><input type=radio name="m-{rid}" value=reject> reject</label>
</section>"""


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; }}
.item {{ border-top: 1px solid #ccc; padding: .5em 0 1em; }}
.imgs {{ display: flex; flex-wrap: wrap; gap: .5em; }}
figure {{ margin: 0; }} img {{ max-height: 320px; }} figcaption {{ font-size: 80%; color: #555; }}
pre {{ white-space: pre-wrap; background: #f6f6f6; padding: .5em; }}
.err {{ color: #b00; }} #bar {{ position: sticky; top: 0; background: #fff; padding: .5em 0; }}
</style></head><body>
<div id=bar><b>{title}</b> &middot; {count} items &middot; <span id=done>0</span> marked
<button id=dl>download {marks_name}</button>
<small>unmarked items are kept; import with
<code>python -m univg.cot import-review --review {jsonl_name} --marks {marks_name} --out OUT.json</code></small></div>
{items}
<script>
const radios = () => Array.from(document.querySelectorAll('input[type=radio]'));
function marks() {{
  const out = {{}};
  for (const r of radios()) if (r.checked) out[r.closest('.item').dataset.id] = r.value;
  return out;
}}
document.addEventListener('change', () => {{
  document.getElementById('done').textContent = Object.keys(marks()).length;
}});
document.getElementById('dl').onclick = () => {{
  const blob = new Blob([JSON.stringify(marks(), null, 1)], {{type: 'application/json'}});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob); a.download = '{marks_name}'; a.click();
}};
</script></body></html>
"""


def review_paths(html_path: str | os.PathLike[str], pages: int) -> list[Path]:
    """The HTML file name(s): ``html_path`` itself for one page, else ``stem-0001.html`` ...

    >>> [p.name for p in review_paths("out/review.html", 2)]
    ['review-0001.html', 'review-0002.html']
    """
    path = Path(html_path)
    if pages <= 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k:04d}{path.suffix}") for k in range(1, pages + 1)]


def export_review(
    results: Sequence[SampleResult],
    html_path: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    image_root: str | None = None,
    page_size: int = 200,
) -> tuple[list[Path], Path]:
    """Write the review page(s) and ``<html stem>.jsonl`` for ``results``; returns (html files, jsonl).

    ``output`` is the built CoT file the marks will later be applied to (recorded in each item).
    """
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    jsonl_path = html_path.with_suffix(".jsonl")
    items = [review_item(r, output) for r in results]
    _atomic_write(jsonl_path, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    pages = max(1, -(-len(items) // page_size))
    paths = review_paths(html_path, pages)
    for page, path in enumerate(paths):
        chunk = slice(page * page_size, (page + 1) * page_size)
        body = "\n".join(_item_html(r, item, image_root) for r, item in zip(results[chunk], items[chunk]))
        marks_name = "marks.json" if pages == 1 else f"marks-{page + 1:04d}.json"
        title = f"CoT review {page + 1}/{pages}" if pages > 1 else "CoT review"
        _atomic_write(
            path,
            _PAGE.format(
                title=title,
                count=len(items[chunk]),
                items=body,
                marks_name=marks_name,
                jsonl_name=html.escape(jsonl_path.name),
            ),
        )
    return paths, jsonl_path


def load_marks(paths: Sequence[str | os.PathLike[str]], reviewed: set[str]) -> dict[str, str]:
    """Merge marks files (``{id: "accept"|"reject"}``); errors name the file and the id."""
    marks: dict[str, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a JSON object {{id: 'accept'|'reject'}}, got {type(data).__name__}"
            )
        for rid, mark in data.items():
            if mark not in MARKS:
                raise ValueError(f"{path}: id {rid!r}: mark must be 'accept' or 'reject', got {mark!r}")
            if rid not in reviewed:
                raise ValueError(f"{path}: id {rid!r} is not an item of the review file")
            if marks.get(rid, mark) != mark:
                raise ValueError(f"{path}: id {rid!r} is marked both {marks[rid]!r} and {mark!r}")
            marks[rid] = mark
    return marks


def apply_review(
    review: str | os.PathLike[str],
    marks: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    built: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Drop the rejected ids from the built CoT file and write the rest to ``out``.

    ``built`` (the CoT file) defaults to the ``output`` recorded in the review items. Records are copied verbatim
    (the stage-1 format has no review field). Returns counts: ``reviewed``, ``accepted``,
    ``rejected``, ``unmarked`` (reviewed but not marked: kept), ``kept``, ``removed``.
    """
    items = []
    with open(review, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{review}: line {line_no}: not JSON: {err}") from err
    reviewed = {item["id"] for item in items}
    merged = load_marks(marks, reviewed)
    if built is None:
        sources = {item.get("output") for item in items}
        if len(sources) != 1 or None in sources:
            raise ValueError(
                f"{review}: items do not name one built file ({sorted(map(str, sources))}); pass built"
            )
        built = sources.pop()
    with open(built, encoding="utf-8") as handle:
        records = json.load(handle)
    if not isinstance(records, list):
        raise ValueError(f"{built}: expected a JSON list of CoT records")
    ids = {str(record.get("id")) for record in records}
    missing = sorted(rid for rid in merged if rid not in ids)
    if missing:
        raise ValueError(f"{built}: reviewed ids not in the built file: {missing[:5]}")
    rejected = {rid for rid, mark in merged.items() if mark == "reject"}
    kept = [record for record in records if str(record.get("id")) not in rejected]
    _atomic_write(Path(out), json.dumps(kept, ensure_ascii=False, indent=1))
    return {
        "reviewed": len(reviewed),
        "accepted": sum(1 for m in merged.values() if m == "accept"),
        "rejected": len(rejected),
        "unmarked": len(reviewed - set(merged)),
        "kept": len(kept),
        "removed": len(records) - len(kept),
    }


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
