"""Bad inputs to evaluation: each fails early with one line, or is screened and counted, and an
interrupted evaluation resumes by default.

A scripted module answers instead of a model, and counts its generate calls, so "nothing was
recomputed" and "nothing was generated" are checked directly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from scripted_module import Scripted, synthetic, trainer

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.model.backbone import BackboneSpec


# ----------------------------------------------------------------------------- 2: predict without weights
def test_predict_without_weights_refuses_before_building_anything(tmp_path, monkeypatch, capsys):
    from univg.predict.__main__ import main

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    built = []
    monkeypatch.setattr(BackboneSpec, "build", lambda self: built.append(self) or None)
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(tmp_path / "a.png"), "--instruction", "where is it?"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "no weights" in err[0] and "--checkpoint" in err[0] and "--random-weights" in err[0]
    )
    assert built == []  # refused before any model (the 7B preset would be ~33 GB in fp32)


# ----------------------------------------------------------------------------- 11: unwritable predictions_dir
def test_unwritable_predictions_dir_fails_before_the_model_is_built(tmp_path, processor):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = blocker / "preds"  # a folder below a file cannot be made (root can write anywhere else)
    module = Scripted(predictions_dir=str(bad))
    with pytest.raises(PermissionError) as exc:
        trainer(tmp_path).test(module, datamodule=synthetic(processor))
    assert str(bad) in str(exc.value) and "predictions_dir" in str(exc.value)
    assert module.model is None and module.calls == 0  # no model built, no batch generated


def test_unwritable_predictions_dir_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    from univg.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    config = Path(__file__).resolve().parents[1] / "configs" / "eval" / "synthetic.yaml"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "test",
                "--config", str(config),
                "--data.init_args.num_test", "2",
                "--model.init_args.predictions_dir", "a_file/preds",
                "--trainer.enable_progress_bar", "false",
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("univg: error:")]
    assert len(err) == 1 and "predictions_dir a_file/preds is not a writable folder" in err[0]


# ----------------------------------------------------------------------------- 4: resume by default
def test_rerunning_an_interrupted_test_resumes_from_the_earlier_version(tmp_path, processor, capsys):
    first = Scripted(fail_on_call=2)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        trainer(tmp_path).test(first, datamodule=synthetic(processor))
    v0 = tmp_path / "bench" / "version_0"
    done = [json.loads(line)["id"] for line in (v0 / "predictions_test.rank0.part.jsonl").open()]
    assert done == first.asked and len(done) == 3 and first.calls == 2
    capsys.readouterr()

    # the same command again: the logger makes version_1, the 3 finished samples are not generated again
    second = Scripted()
    trainer(tmp_path).test(second, datamodule=synthetic(processor))
    v1 = tmp_path / "bench" / "version_1"
    assert second.calls == 2 and len(second.asked) == 4 and set(second.asked).isdisjoint(done)
    said = [line for line in capsys.readouterr().out.splitlines() if "resuming" in line]
    assert len(said) == 1 and "3 samples" in said[0] and str(v0) in said[0] and "fresh" in said[0]
    result = json.loads((v1 / "results_test.json").read_text())
    assert result["metrics"]["count"] == 7 and result["notes"]["resumed"] == 3
    ids = [json.loads(line)["id"] for line in (v1 / "predictions_test.jsonl").open()]
    assert sorted(ids) == sorted(done + second.asked)

    # version_1 finished: a third run starts over (nothing unfinished is left to resume)
    third = Scripted()
    trainer(tmp_path).test(third, datamodule=synthetic(processor))
    assert len(third.asked) == 7


def test_fresh_starts_over(tmp_path, processor):
    first = Scripted(fail_on_call=2)
    with pytest.raises(RuntimeError):
        trainer(tmp_path).test(first, datamodule=synthetic(processor))
    again = Scripted(fresh=True)
    trainer(tmp_path).test(again, datamodule=synthetic(processor))
    assert len(again.asked) == 7 and again.calls == 3
    result = json.loads((tmp_path / "bench" / "version_1" / "results_test.json").read_text())
    assert "resumed" not in result["notes"] and result["metrics"]["count"] == 7
    with pytest.raises(ValueError, match="fresh"):
        Scripted(fresh=True, resume_predictions=str(tmp_path))


def test_another_benchmark_of_the_same_run_name_is_not_resumed(tmp_path, processor):
    first = Scripted(fail_on_call=2)
    with pytest.raises(RuntimeError):
        trainer(tmp_path).test(first, datamodule=synthetic(processor))
    other = Scripted(benchmark="mig_bench")  # another run key: the earlier rows are not its own
    trainer(tmp_path).test(other, datamodule=synthetic(processor))
    assert len(other.asked) == 7
    result = json.loads((tmp_path / "bench" / "version_1" / "results_test.json").read_text())
    assert result["notes"]["resume_ignored_other_model"] == 3


# ----------------------------------------------------------------------------- 5: undecodable images
def test_undecodable_images_are_screened_and_counted(tmp_path, processor):
    dm = synthetic(processor)
    dm.setup("test")
    good = list(dm.samples["test"])
    ok = tmp_path / "ok.png"
    Image.new("RGB", (56, 56), (10, 10, 10)).save(ok)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 30, 30)).save(buf, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header fine, pixels cut

    def on_disk(sid: str, second: Path) -> GroundingSample:
        return GroundingSample(sid, "diff", [str(ok), str(second)], 1, "q", Box(0.1, 0.1, 0.5, 0.5))

    dm.samples["test"] = [
        *good,
        on_disk("on-disk-ok", ok),
        on_disk("bad-garbage", garbage),
        on_disk("bad-cut", truncated),
    ]
    module = Scripted()
    trainer(tmp_path, version=0).test(module, datamodule=dm)
    out = tmp_path / "bench" / "version_0"
    result = json.loads((out / "results_test.json").read_text())
    assert result["skipped"] == {"undecodable image": 2}
    details = {b["id"]: b["detail"] for b in result["bad_records"]}
    assert set(details) == {"bad-garbage", "bad-cut"}
    assert "images[1] cannot be decoded" in details["bad-cut"] and str(truncated) in details["bad-cut"]
    assert result["metrics"]["count"] == 8 and "on-disk-ok" in module.asked  # the rest evaluated
    md = (out / "results_test.md").read_text()
    assert "8 samples evaluated; not evaluated 2 of 10 records (undecodable image 2)" in md
