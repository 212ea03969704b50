"""Evaluation end to end: a synthetic benchmark through Trainer.test, tables checked by hand.

A scripted module answers each sample by plan (hit the ground truth, miss, write nothing parsable,
or quote the box only in the reasoning), so the per-task accuracies are known before the run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.data import SyntheticDataModule
from univg.model.backbone import BackboneSpec
from univg.modules import GroundingModule

# 7 samples: tasks cycle diff, region, reasoning -> diff 3, region 2, reasoning 2.
TASKS = ["diff", "region", "reasoning"]
PLAN = {
    "diff": ["hit", "hit", "miss"],  # 2/3
    "region": ["hit", "junk"],  # 1/2 (one unparsable)
    "reasoning": ["quoted", "miss"],  # strict 0/2, compatible 1/2
}


def completion(kind: str, gt: list[int]) -> str:
    box = "({}, {}), ({}, {})".format(*gt)
    if kind == "hit":
        return f"<think>it is there</think><answer>{box}</answer>"
    if kind == "miss":
        return "<think>guess</think><answer>(0, 0), (1, 1)</answer>"
    if kind == "quoted":  # the box only inside the reasoning: the compatible parser scores it
        return f"<think>maybe {box}</think><answer>none</answer>"
    return "I cannot tell."


class ScriptedModule(GroundingModule):
    """Completions by plan instead of generation; records which ids it was asked to answer."""

    def __init__(self, fail_on_call: int | None = None, **kw) -> None:
        super().__init__(backbone=BackboneSpec(preset="tiny"), **kw)
        self.fail_on_call = fail_on_call
        self.asked: list[str] = []
        self.calls = 0

    def generate_completions(self, batch):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated interruption")
        self.asked += list(batch["ids"])
        texts = []
        for sid, task, gt in zip(batch["ids"], batch["tasks"], batch["boxes"].tolist()):
            k = int(sid.rsplit("-", 1)[1]) // len(TASKS)  # the k-th sample of its task
            texts.append(completion(PLAN[task][k], gt))
        return texts, [False] * len(texts)


class FittingScripted(ScriptedModule):
    """Validation while fitting; the training step does nothing (evaluation is what is tested)."""

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.0)


_PROCESSOR = []


@pytest.fixture(autouse=True)
def _shared_processor(processor):
    _PROCESSOR[:] = [processor]  # the session's processor: loading the tokenizer again costs seconds


def data(**kw) -> SyntheticDataModule:
    kw = {
        "num_train": 0,
        "num_val": 0,
        "num_test": 7,
        "tasks": TASKS,
        "image_size": 56,
        "eval_batch_size": 3,
        **kw,
    }
    dm = SyntheticDataModule(**kw)
    dm._processor = _PROCESSOR[0]
    return dm


def trainer(root: Path, name: str = "scripted") -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name=name, version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


# the released annotations (docs/design.md section 6), beside the repository in ../shared
MIG_FILE = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mig_bench" / "MIG_data.json")
if not Path(MIG_FILE).exists():
    MIG_FILE = "/work/shared/data/mig_bench/MIG_data.json"


def run_dir(root: Path, name: str = "scripted") -> Path:
    return root / name / "version_0"


# hand computation (strict parser): diff 2/3, region 1/2, reasoning 0/2
HAND = {"diff": 2 / 3, "region": 1 / 2, "reasoning": 0.0}
HAND_AVG = (2 / 3 + 1 / 2 + 0.0) / 3  # 0.388889: the unweighted mean of the task columns
HAND_OVERALL = 3 / 7  # sample-weighted, differs from AVG


def check_hand_results(result: dict) -> None:
    m = result["metrics"]
    assert m["count"] == 7
    for task, acc in HAND.items():
        assert m[f"acc@0.5/{task}"] == pytest.approx(acc)
    assert m["avg"] == pytest.approx(HAND_AVG)
    assert m["acc@0.5"] == pytest.approx(HAND_OVERALL)
    assert m["parse_rate/strict"] == pytest.approx(5 / 7)  # junk and quoted have no strict parse
    assert m["parse_rate/compatible"] == pytest.approx(6 / 7)  # only junk has none
    assert m["acc@0.5/compatible"] == pytest.approx(4 / 7)  # + the quoted box


def test_synthetic_benchmark_table_matches_hand_computation(tmp_path):
    module = ScriptedModule(num_pictures=2)
    trainer(tmp_path).test(module, datamodule=data())
    out = run_dir(tmp_path)
    result = json.loads((out / "results_test.json").read_text())
    assert result["benchmark"] == "synthetic" and result["run"] == "scripted"
    assert result["skipped"] == {} and result["notes"]["duplicates_removed"] == 0
    check_hand_results(result)
    # Markdown row: Static (diff) 66.67, Region 50.00, Reason 0.00, AVG 38.89 over the 3 tasks run
    # (a synthetic run's table has the columns of its own tasks only)
    md = (out / "results_test.md").read_text()
    assert "| Model | Static | Region | Reason | AVG |" in md
    assert "| scripted | 66.67 | 50.00 | 0.00 | 38.89 |" in md
    assert "| Acc@0.5 | 42.86 |" in md and "| parse rate, strict (last <answer> block) | 71.43 |" in md
    rows = list(csv.DictReader((out / "results_test.csv").open()))
    assert rows[0]["Static"] == "66.67" and rows[0]["Region"] == "50.00" and rows[0]["AVG"] == "38.89"
    # predictions: each sample once, with the pixel box of the 56 px target image for parsed answers
    preds = [json.loads(line) for line in (out / "predictions_test.jsonl").open()]
    assert sorted(p["id"] for p in preds) == sorted(module.asked) and len(preds) == 7
    hit = next(p for p in preds if p["id"] == "syn-diff-2-0")
    assert hit["reasoning"] == "it is there" and hit["image_size"] == [56, 56]
    # the ground truth is scored in floats (not the collator's int() target the script answered
    # with): IoU of the integer answer with the exact box, by hand
    sample = next(s for s in module._datamodule().samples["test"] if s.id == "syn-diff-2-0")
    exact = [v * 1000 for v in sample.box.as_tuple()]
    assert hit["gt"] == pytest.approx(exact)
    x1, y1, x2, y2 = hit["pred"]
    assert [x1, y1, x2, y2] == [int(v) for v in exact]
    inter = (min(x2, exact[2]) - max(x1, exact[0])) * (min(y2, exact[3]) - max(y1, exact[1]))
    union = (x2 - x1) * (y2 - y1) + (exact[2] - exact[0]) * (exact[3] - exact[1]) - inter
    assert hit["iou"] == pytest.approx(inter / union) and 0.9 < hit["iou"] < 1.0
    assert hit["pred_box_px"] == [
        round(x1 / 1000 * 56),
        round(y1 / 1000 * 56),
        round(x2 / 1000 * 56),
        round(y2 / 1000 * 56),
    ]
    assert len(list((out / "pictures_test").glob("*.png"))) == 2
    assert not list(out.glob("*.part.jsonl"))  # shards merged and removed


def test_interrupted_evaluation_resumes_without_recomputing(tmp_path):
    pred_dir = tmp_path / "preds"
    first = ScriptedModule(fail_on_call=2, predictions_dir=str(pred_dir), num_pictures=0)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        trainer(tmp_path, "a").test(first, datamodule=data())
    shard = pred_dir / "predictions_test.rank0.part.jsonl"
    done = [json.loads(line)["id"] for line in shard.open()]
    assert done == first.asked and len(done) == 3  # the first batch was saved before the failure
    assert not (pred_dir / "results_test.json").exists()

    second = ScriptedModule(predictions_dir=str(pred_dir), num_pictures=0)
    trainer(tmp_path, "b").test(second, datamodule=data())
    assert set(second.asked).isdisjoint(done) and len(second.asked) == 4  # only the rest was generated
    result = json.loads((pred_dir / "results_test.json").read_text())
    check_hand_results(result)  # metrics over all 7
    assert result["notes"]["resumed"] == 3
    preds = [json.loads(line)["id"] for line in (pred_dir / "predictions_test.jsonl").open()]
    assert sorted(preds) == sorted(done + second.asked)
    assert not shard.exists()

    # a third run finds everything done: nothing generated, results rewritten from the file
    third = ScriptedModule(predictions_dir=str(pred_dir), num_pictures=0)
    trainer(tmp_path, "c").test(third, datamodule=data())
    assert third.asked == []
    check_hand_results(json.loads((pred_dir / "results_test.json").read_text()))


def test_resume_ignores_predictions_of_another_model(tmp_path):
    pred_dir = tmp_path / "preds"
    first = ScriptedModule(predictions_dir=str(pred_dir), num_pictures=0)
    trainer(tmp_path, "a").test(first, datamodule=data())
    other = ScriptedModule(
        predictions_dir=str(pred_dir), num_pictures=0, max_new_tokens=17
    )  # another run key
    trainer(tmp_path, "b").test(other, datamodule=data())
    assert len(other.asked) == 7
    result = json.loads((pred_dir / "results_test.json").read_text())
    assert result["notes"]["resume_ignored_other_model"] == 7 and result["notes"]["resumed"] == 0


def test_bad_records_are_counted_in_the_footer_not_dropped_silently(tmp_path):
    dm = data()
    dm.setup()
    good = list(dm.samples["test"])
    img = good[0].images
    missing = GroundingSample(
        "bad-missing", "diff", ["no/such/image.png", *img[1:]], 1, "q", Box(0.1, 0.1, 0.5, 0.5)
    )
    broken = GroundingSample("bad-box", "region", list(img), 0, "q", Box(0.6, 0.2, 0.3, 0.5))  # x2 < x1
    degenerate = GroundingSample(
        "kept-degenerate", "region", list(img), 0, "q", Box(0.3, 0.2, 0.3, 0.5), meta={"degenerate": True}
    )
    dm.samples["test"] = [*good, missing, broken, degenerate]
    module = ScriptedModule(num_pictures=0)
    module.generate_completions = lambda batch: (
        ["<answer>(0, 0), (1, 1)</answer>"] * len(batch["ids"]),
        [False] * len(batch["ids"]),
    )
    trainer(tmp_path).test(module, datamodule=dm)
    out = run_dir(tmp_path)
    result = json.loads((out / "results_test.json").read_text())
    assert result["skipped"] == {"broken box": 1, "missing image": 1}
    assert {b["id"] for b in result["bad_records"]} == {"bad-missing", "bad-box"}
    assert "no/such/image.png" in next(b["detail"] for b in result["bad_records"] if b["id"] == "bad-missing")
    assert result["metrics"]["count"] == 8  # 7 good + the flagged degenerate one (scored, cannot be hit)
    assert result["notes"]["degenerate_gt_kept"] == 1
    md = (out / "results_test.md").read_text()
    assert "8 samples evaluated; not evaluated 2 of 10 records (broken box 1, missing image 1)" in md
    assert "degenerate ground truth 1 (cannot reach IoU 0.5)" in md
    assert len(dm.samples["test"]) == 10  # the data module's list is given back untouched


def test_validation_while_fitting_writes_one_file_per_step(tmp_path):
    module = FittingScripted(num_pictures=0)
    dm = data(num_train=2, num_val=7, num_test=0, batch_size=1)
    tr = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        val_check_interval=1,
        logger=TensorBoardLogger(str(tmp_path), name="fit", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
    )
    tr.fit(module, datamodule=dm)
    out = tmp_path / "fit" / "version_0"
    files = sorted(p.name for p in out.glob("predictions_val_step*.jsonl"))
    assert files == ["predictions_val_step1.jsonl", "predictions_val_step2.jsonl"]  # sanity check writes none
    assert module.last_eval["val"]["count"] == 7


@pytest.mark.slow
def test_tiny_model_cli_end_to_end(tmp_path, monkeypatch):
    """``python -m univg test --config configs/eval/synthetic.yaml`` on a real (random) tiny model."""
    from univg.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "eval" / "synthetic.yaml"
    main(
        [
            "test",
            "--config",
            str(config),
            "--data.init_args.num_test",
            "5",
            "--model.init_args.max_new_tokens",
            "6",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    out = next((tmp_path / "runs" / "eval" / "synthetic").glob("version_*"))
    result = json.loads((out / "results_test.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions_test.jsonl").open()]
    assert len(preds) == 5 and result["metrics"]["count"] == 5
    # the table's numbers recomputed by hand from the predictions file
    by_task: dict[str, list[float]] = {}
    for p in preds:
        by_task.setdefault(p["task"], []).append(p["iou"])
    accs = {t: sum(i >= 0.5 for i in v) / len(v) for t, v in by_task.items()}
    for t, acc in accs.items():
        assert result["metrics"][f"acc@0.5/{t}"] == pytest.approx(acc)
    assert result["metrics"]["avg"] == pytest.approx(sum(accs.values()) / len(accs))
    assert len(list((out / "pictures_test").glob("*.png"))) == 4


def test_real_mig_bench_annotations_with_some_images_missing(tmp_path, processor):
    """The released MIG_data.json (first 20 records) with the images of the first 15 made."""
    from univg.data import MIGBenchDataModule, read_mig_bench

    records = read_mig_bench(MIG_FILE)[:20]
    made = {ref for s in records[:15] for ref in s.images}  # some records share images
    for ref in made:
        path = tmp_path / "data" / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (56, 56), (20, 20, 20)).save(path)
    missing = {s.id for s in records if not set(s.images) <= made}
    n_bad = len(missing)
    assert 1 <= n_bad <= 5
    dm = MIGBenchDataModule(
        test_file=MIG_FILE, image_root=str(tmp_path / "data"), limit=20, eval_batch_size=5
    )
    dm._processor = processor
    module = ScriptedModule(num_pictures=1)
    module.generate_completions = lambda batch: (
        ["<answer>(0, 0), (999, 999)</answer>"] * len(batch["ids"]),
        [False] * len(batch["ids"]),
    )
    trainer(tmp_path).test(module, datamodule=dm)
    result = json.loads((run_dir(tmp_path) / "results_test.json").read_text())
    assert result["benchmark"] == "mig_bench"
    assert result["metrics"]["count"] == 20 - n_bad and result["skipped"] == {"missing image": n_bad}
    assert {b["id"] for b in result["bad_records"]} == missing
    # MIG_data-7 is one of the 5 degenerate boxes of the release: kept, flagged, cannot be hit
    assert result["notes"]["degenerate_gt_kept"] == 1
    md = (run_dir(tmp_path) / "results_test.md").read_text()
    assert (
        f"{20 - n_bad} samples evaluated; not evaluated {n_bad} of 20 records (missing image {n_bad})" in md
    )


def test_all_records_bad_still_writes_results(tmp_path, processor):
    from univg.data import MIGBenchDataModule

    dm = MIGBenchDataModule(test_file=MIG_FILE, image_root=str(tmp_path / "nothing"), limit=4)
    dm._processor = processor
    trainer(tmp_path).test(ScriptedModule(num_pictures=0), datamodule=dm)
    result = json.loads((run_dir(tmp_path) / "results_test.json").read_text())
    assert result["metrics"] == {"count": 0.0} and result["skipped"] == {"missing image": 4}


def test_screening_never_changes_the_data_module(tmp_path):
    """The writer screens and resumes through a view the data module asks for: during the run the
    split is the same list, untouched, while the loader serves only the samples still to evaluate."""
    pred_dir = tmp_path / "preds"
    first = ScriptedModule(fail_on_call=2, predictions_dir=str(pred_dir), num_pictures=0)
    with pytest.raises(RuntimeError):
        trainer(tmp_path, "a").test(first, datamodule=data())  # 3 of 7 finished

    dm = data()
    dm.setup()
    split = dm.samples["test"]
    missing = GroundingSample("bad-missing", "diff", ["no/such.png"], 0, "q", Box(0.1, 0.1, 0.5, 0.5))
    split.append(missing)
    before = [s.id for s in split]
    seen: dict[str, object] = {}

    class Watch(L.Callback):
        def on_test_start(self, trainer, module):
            seen["same_list"] = dm.samples["test"] is split
            seen["ids"] = [s.id for s in dm.samples["test"]]
            seen["served"] = [s.id for s in trainer.test_dataloaders.dataset.samples]

    second = ScriptedModule(predictions_dir=str(pred_dir), num_pictures=0)
    tr = trainer(tmp_path, "b")
    tr.callbacks.append(Watch())
    tr.test(second, datamodule=dm)
    assert seen["same_list"] and seen["ids"] == before  # 7 + the bad record, as set up
    assert sorted(seen["served"]) == sorted(second.asked) and len(second.asked) == 4
    assert "bad-missing" not in seen["served"]
    assert dm.samples["test"] is split and [s.id for s in split] == before
    # after the run nothing is narrowed any more: a loader built now serves the whole split
    assert len(dm.test_dataloader().dataset) == 8
    result = json.loads((pred_dir / "results_test.json").read_text())
    assert result["metrics"]["count"] == 7 and result["skipped"] == {"missing image": 1}
