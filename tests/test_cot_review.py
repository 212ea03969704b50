"""Review export (HTML + JSONL) and import of accept/reject marks, in code and through the CLI."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from fake_openai_server import FakeOpenAIServer, Reply, ScriptedTeacher, write_mig_bench
from PIL import Image

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.cot import (
    BuildConfig,
    ChatClient,
    CotBuilder,
    apply_review,
    export_review,
    pick_review,
    write_output,
)
from univg.cot.__main__ import main
from univg.cot.prompts import JUDGE_SYSTEM
from univg.data import read_cot_sft

GT = Box(0.2, 0.2, 0.6, 0.6)  # (200, 200), (600, 600)


def chain(word: str, box: str) -> Reply:
    return Reply(
        f"<think>The {word} object sits in the middle of image 1; image 2 shows the same {word} object again, "
        f"slightly to the left of the centre, so that is the target.</think><answer>{box}</answer>"
    )


@pytest.fixture
def built(tmp_path):
    """Six accepted samples (white 100 x 100 images), built and written to ``cot.json``."""
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (100, 100), "white").save(root / "w.png")
    Image.new("RGB", (100, 100), "white").save(root / "v.png")
    tags = [f"r{i}" for i in range(6)]
    # the teacher's box (250, 250), (600, 600) has IoU 0.766 with the ground truth
    script = {
        t: {"chain": [chain(t, "(250, 250), (600, 600)")], "judge": [Reply("<best>1</best>")]} for t in tags
    }
    samples = [
        GroundingSample(f"id-{t}", "common_object", ["w.png", "v.png"], 1, f"Where is it? [s:{t}]", GT)
        for t in tags
    ]
    with FakeOpenAIServer(ScriptedTeacher(script, JUDGE_SYSTEM)) as server:
        builder = CotBuilder(ChatClient(server.base_url, "m", timeout=1), BuildConfig(image_root=str(root)))
        results, _ = builder.build(samples, progress=False)
    out = tmp_path / "cot.json"
    write_output(results, out)
    return results, out, root


def test_pick_review_is_seeded_and_in_order(built):
    results, _, _ = built
    picked = pick_review(results, 0.5, seed=3)
    assert len(picked) == 3 and picked == pick_review(results, 0.5, seed=3)
    assert [r.sample.id for r in picked] == sorted(r.sample.id for r in picked)
    assert len(pick_review(results, 1.0)) == 6


def test_export_writes_self_contained_html_and_jsonl(built, tmp_path):
    results, out, root = built
    pages, jsonl = export_review(results[:2], tmp_path / "rev" / "review.html", out, str(root))
    assert pages == [tmp_path / "rev" / "review.html"] and jsonl == tmp_path / "rev" / "review.jsonl"
    items = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [i["id"] for i in items] == ["id-r0", "id-r1"]
    assert items[0]["answer"] == "(200, 200), (600, 600)"
    assert items[0]["teacher_answer"] == "(250, 250), (600, 600)"
    assert items[0]["iou"] == pytest.approx(350 * 350 / 400 / 400)
    assert items[0]["assistant"].endswith("<answer>(200, 200), (600, 600)</answer>")
    assert "r0 object sits" in items[0]["reasoning"] and items[0]["output"] == str(out)

    page = pages[0].read_text()
    assert 'data-id="id-r0"' in page and 'data-id="id-r1"' in page and "Where is it? [s:r1]" in page
    assert not re.search(r'src="(?!data:)', page)  # every image is inline
    urls = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(urls) == 4  # two items x two images
    target = Image.open(io.BytesIO(base64.b64decode(urls[1]))).convert("RGB")  # item 0, image 2
    r, g, b = target.getpixel((20, 40))  # on the left edge of the ground-truth box (x = 0.2 * 100)
    assert g > 150 and r < 110 and b < 110
    r, g, b = target.getpixel((10, 40))  # outside both boxes: still white
    assert min(r, g, b) > 230
    untouched = Image.open(io.BytesIO(base64.b64decode(urls[0]))).convert("RGB")  # image 1: no box drawn
    assert min(untouched.getpixel((20, 40))) > 230


def test_export_pages(built, tmp_path):
    results, out, root = built
    pages, jsonl = export_review(results, tmp_path / "review.html", out, str(root), page_size=4)
    assert [p.name for p in pages] == ["review-0001.html", "review-0002.html"]
    assert pages[1].read_text().count("<section class=item") == 2
    assert "marks-0002.json" in pages[1].read_text()
    assert len(jsonl.read_text().splitlines()) == 6


def test_apply_review_round_trip(built, tmp_path):
    results, out, root = built
    picked = [r for r in results if r.sample.id in ("id-r1", "id-r3", "id-r4")]
    _, jsonl = export_review(picked, tmp_path / "review.html", out, str(root))
    marks = tmp_path / "marks.json"
    marks.write_text(json.dumps({"id-r1": "reject", "id-r3": "accept"}))
    counts = apply_review(jsonl, [marks], tmp_path / "reviewed.json")
    assert counts == {"reviewed": 3, "accepted": 1, "rejected": 1, "unmarked": 1, "kept": 5, "removed": 1}
    kept = json.loads((tmp_path / "reviewed.json").read_text())
    original = json.loads(out.read_text())
    assert kept == [r for r in original if r["id"] != "id-r1"]  # records copied verbatim
    assert [s.id for s in read_cot_sft(tmp_path / "reviewed.json")] == [
        "id-r0",
        "id-r2",
        "id-r3",
        "id-r4",
        "id-r5",
    ]


@pytest.mark.parametrize(
    "marks, message",
    [
        ({"id-r1": "maybe"}, "id 'id-r1': mark must be 'accept' or 'reject'"),
        ({"id-r0": "reject"}, "id 'id-r0' is not an item of the review file"),
        (["id-r1"], "expected a JSON object"),
    ],
)
def test_apply_review_rejects_bad_marks(built, tmp_path, marks, message):
    results, out, root = built
    _, jsonl = export_review([results[1]], tmp_path / "review.html", out, str(root))
    path = tmp_path / "marks.json"
    path.write_text(json.dumps(marks))
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        apply_review(jsonl, [path], tmp_path / "x.json")
    assert str(path) in str(info.value)
    assert not (tmp_path / "x.json").exists()


def test_cli_build_with_review_then_import(built, tmp_path, capsys):
    _, _, root = built
    questions = [
        f"These images share one object in common. Locate this object in the 2th image. [s:r{i}]"
        for i in range(6)
    ]
    mig = write_mig_bench(tmp_path / "mig.json", ["w.png", "v.png"], questions, [0.2, 0.2, 0.6, 0.6])
    script = {
        f"r{i}": {"chain": [chain(f"r{i}", "(200, 200), (600, 600)")], "judge": [Reply("<best>1</best>")]}
        for i in range(6)
    }
    out = tmp_path / "cli" / "cot.json"
    with FakeOpenAIServer(ScriptedTeacher(script, JUDGE_SYSTEM)) as server:
        rc = main(
            [
                "build", "--input", str(mig), "--format", "mig_bench", "--image-root", str(root),
                "--teacher-url", server.base_url, "--teacher-model", "m", "--out", str(out), "--chains", "2",
                "--no-progress", "--review-sample", "0.34", "--review-out", str(tmp_path / "cli" / "review.html"),
            ]
        )  # fmt: skip
    assert rc == 0
    items = [json.loads(x) for x in (tmp_path / "cli" / "review.jsonl").read_text().splitlines()]
    assert len(items) == 3  # ceil(0.34 * 6)
    (tmp_path / "marks.json").write_text(json.dumps({items[0]["id"]: "reject", items[1]["id"]: "accept"}))
    rc = main(
        [
            "import-review", "--review", str(tmp_path / "cli" / "review.jsonl"),
            "--marks", str(tmp_path / "marks.json"), "--out", str(tmp_path / "final.json"),
        ]
    )  # fmt: skip
    assert rc == 0
    final = read_cot_sft(tmp_path / "final.json")
    assert len(final) == 5 and items[0]["id"] not in {s.id for s in final}
    assert '"rejected": 1' in capsys.readouterr().err
