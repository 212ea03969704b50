"""Seeded source mixtures: requested counts, same seed same draw, the printed table."""

from __future__ import annotations

import collections
import json

import pytest

from univg.data import MixtureDataModule
from univg.data.mixture import draw_mixture

SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the bounding box in "
    "<answer> </answer> tags."
)


@pytest.fixture
def files(tmp_path):
    cot = [
        {
            "id": f"cot{i}",
            "task": "common_object" if i % 2 else "multi_view",
            "images": [f"m/{i}a.jpg", f"m/{i}b.jpg"],
            "messages": [
                {"role": "user", "content": f"<image><image>Find object {i} in the second image." + SUFFIX},
                {
                    "role": "assistant",
                    "content": f"<think>step {i}</think><answer>(10, 20), ({100 + i}, 200)</answer>",
                },
            ],
        }
        for i in range(10)
    ]
    ref = [
        {
            "id": f"ref{i}",
            "image": f"coco/{i}.jpg",
            "problem": f"dog {i}",
            "normalized_solution": [0, 0, 500, 500 + i],
        }
        for i in range(6)
    ]
    (tmp_path / "cot.json").write_text(json.dumps(cot))
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    return tmp_path


def sources(root, cot=7, ref=3, **extra):
    return [
        {"format": "cot_sft", "path": str(root / "cot.json"), "count": cot, "name": "mgrounding_cot"},
        {
            "format": "refcoco",
            "path": str(root / "ref.json"),
            "count": ref,
            "prompt_template": "refcoco_single",
            **extra,
        },
    ]


def test_counts_seed_and_table(files, capsys):
    drawn, table = draw_mixture(sources(files), seed=0)
    assert len(drawn) == 10
    by_source = collections.Counter(s.meta["mixture_source"] for s in drawn)
    assert by_source == {"mgrounding_cot": 7, f"refcoco:{files / 'ref.json'}": 3}
    assert len({s.id for s in drawn}) == 10  # without replacement: no repeats
    again, _ = draw_mixture(sources(files), seed=0, verbose=False)
    assert [s.id for s in again] == [s.id for s in drawn]
    other, _ = draw_mixture(sources(files), seed=1, verbose=False)
    assert sorted(s.id for s in other) != sorted(s.id for s in drawn)
    # A source's draw does not depend on the other sources.
    alone, _ = draw_mixture(sources(files)[:1], seed=0, verbose=False)
    assert sorted(s.id for s in alone) == sorted(s.id for s in drawn if s.id.startswith("cot"))
    out = capsys.readouterr().out
    assert table in out
    lines = table.splitlines()
    tasks = collections.Counter(s.task for s in drawn if s.id.startswith("cot"))
    assert lines[1].split()[:4] == ["mgrounding_cot", "cot_sft", "10", "7"]
    assert ", ".join(f"{t} {c}" for t, c in sorted(tasks.items())) in lines[1]
    assert "refcoco 3" in lines[2] and lines[-1].split() == ["total", "10"]


def test_source_template_and_sample_template(files):
    drawn, _ = draw_mixture(sources(files), seed=0, verbose=False)
    templates = {s.id[:3]: s.prompt_template for s in drawn}
    assert templates == {"cot": "reasoning", "ref": "refcoco_single"}  # the CoT file's own template is kept


def test_too_many_without_replacement_and_with(files):
    with pytest.raises(
        ValueError, match="asked for 9 samples but the source has 6; lower the count or set replacement"
    ):
        draw_mixture(sources(files, ref=9), seed=0, verbose=False)
    drawn, _ = draw_mixture(sources(files, ref=9, replacement=True), seed=0, verbose=False)
    refs = [s for s in drawn if s.id.startswith("ref")]
    assert len(refs) == 9 and len({s.id for s in refs}) == 9  # repeats get "#k" ids


def test_ratio_and_bad_sources(files):
    src = [{"format": "cot_sft", "path": str(files / "cot.json"), "ratio": 0.5}]
    drawn, _ = draw_mixture(src, seed=3, verbose=False)
    assert len(drawn) == 5
    with pytest.raises(ValueError, match="give exactly one of 'count' or 'ratio'"):
        draw_mixture([{"format": "cot_sft", "path": "x"}], verbose=False)
    with pytest.raises(ValueError, match=r"unknown keys \['cuont'\]"):
        MixtureDataModule(sources=[{"format": "cot_sft", "path": "x", "cuont": 3}])


def test_mixture_datamodule(files, capsys):
    dm = MixtureDataModule(sources=sources(files), seed=5, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_samples) == 10 and "total" in dm.tables["train"]
    assert [s.id for s in dm.train_samples] == [
        s.id for s in draw_mixture(sources(files), seed=5, verbose=False)[0]
    ]
    assert "train mixture (seed 5)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no val data configured"):
        dm.val_samples  # noqa: B018


def test_source_kind_picks_one_source_of_a_release_file(tmp_path):
    """Table 4's 21k rows draw each source of the stage-1 file by its detected kind."""
    records = [
        {
            "images": [f"m/{i}a.jpg", f"m/{i}b.jpg"],
            "messages": [
                {"role": "user", "content": f"<image><image>Find object {i} in the second image." + SUFFIX},
                {"role": "assistant", "content": f"<think>s{i}</think><answer>(1, 2), (30, 40)</answer>"},
            ],
        }
        for i in range(4)
    ] + [
        {
            "images": [f"coco/train2014/COCO_{i}.jpg"],
            "messages": [
                {
                    "role": "user",
                    "content": f"<image>This is a single image grounding task with simple reference. dog {i}",
                },
                {"role": "assistant", "content": "(1, 2), (30, 40)"},
            ],
        }
        for i in range(2)
    ]
    path = tmp_path / "stage1.json"
    path.write_text(json.dumps(records))
    src = [
        {"format": "cot_sft", "path": str(path), "count": 3, "source_kind": "mgrounding", "name": "cot"},
        {"format": "cot_sft", "path": str(path), "count": 2, "source_kind": "coco", "name": "ref"},
    ]
    drawn, table = draw_mixture(src, verbose=False)
    by_source = collections.Counter((s.meta["mixture_source"], s.meta["source_kind"]) for s in drawn)
    assert by_source == {("cot", "mgrounding"): 3, ("ref", "coco"): 2}
    assert "ref" in table and "refcoco 2" in table  # the detected COCO records are refcoco samples
    with pytest.raises(ValueError, match=r"asked for 3 samples but the source has 2"):
        draw_mixture([{**src[1], "count": 3}], verbose=False)
    with pytest.raises(
        ValueError, match=r"source_kind must be one of \('coco', 'mgrounding'\), got 'refcoco'"
    ):
        draw_mixture([{**src[1], "source_kind": "refcoco"}], verbose=False)
