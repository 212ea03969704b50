"""Evaluation on a shared cluster: a resumed evaluation checks each kept row against its
record, and a predictions folder is owned by one run at a time.

A scripted module answers instead of a model and records the ids it was asked, so "recomputed"
and "nothing generated" are checked directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from scripted_module import Scripted, synthetic, trainer

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.evaluation import LOCK_NAME, PredictionsLockedError, load_resumed, record_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.open())}


# ----------------------------------------------------------------------------- resume checks each row
def test_resume_recomputes_rows_whose_record_changed_and_drops_vanished_ones(tmp_path, processor, capsys):
    first = Scripted(fail_on_call=2)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        trainer(tmp_path).test(first, datamodule=synthetic(processor))
    done = list(first.asked)
    assert len(done) == 3
    capsys.readouterr()

    # the data changed since: a new box for done[0], a new question for done[1], done[2] is gone
    dm = synthetic(processor)
    samples = dm.samples["test"]
    by_id = {s.id: s for s in samples}
    new_box = Box(0.05, 0.1, 0.3, 0.35)
    changed = {
        done[0]: dataclasses.replace(by_id[done[0]], box=new_box),
        done[1]: dataclasses.replace(by_id[done[1]], question=by_id[done[1]].question + " (revised)"),
    }
    dm.samples["test"] = [changed.get(s.id, s) for s in samples if s.id != done[2]]
    second = Scripted()
    trainer(tmp_path).test(second, datamodule=dm)

    rest = [s.id for s in samples if s.id not in done]
    assert sorted(second.asked) == sorted([done[0], done[1], *rest])  # exactly the changed and the missing
    v1 = tmp_path / "bench" / "version_1"
    result = json.loads((v1 / "results_test.json").read_text())
    assert result["notes"]["resume_recomputed"] == 2 and result["notes"]["resume_dropped_gone"] == 1
    assert result["notes"]["resumed"] == 0 and result["metrics"]["count"] == 6
    out = rows(v1 / "predictions_test.jsonl")
    assert sorted(out) == sorted([done[0], done[1], *rest])  # the vanished record's row is not in the metrics
    assert out[done[0]]["gt"] == pytest.approx([50.0, 100.0, 300.0, 350.0])  # the new box, 0-1000 frame
    assert out[done[1]]["question"].endswith("(revised)")
    assert all(r["record_fp"] == record_fingerprint(changed.get(i, by_id[i])) for i, r in out.items())
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("univg: resume:")]
    assert len(said) == 1
    assert "2 earlier predictions are recomputed" in said[0] and done[0] in said[0] and done[1] in said[0]
    assert "1 earlier predictions are left out" in said[0] and done[2] in said[0]


def test_rows_without_a_record_fingerprint_are_recomputed(tmp_path):
    a = GroundingSample("a", "t", ["x.jpg"], 0, "where?", Box(0.1, 0.1, 0.5, 0.5))
    b = GroundingSample("b", "t", ["x.jpg"], 0, "where?", Box(0.2, 0.1, 0.5, 0.5))
    path = tmp_path / "predictions_test.jsonl"
    lines = [
        {"id": "a", "run_key": "k", "record_fp": record_fingerprint(a)},
        {"id": "b", "run_key": "k"},  # no fingerprint: what it answered cannot be checked
        {"id": "c", "run_key": "k", "record_fp": "0"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    kept, notes, said = load_resumed([str(path)], "k", [a, b])
    assert [r["id"] for r in kept] == ["a"]
    assert notes == {"resumed": 1, "resume_recomputed": 1, "resume_dropped_gone": 1}
    assert any("1 earlier predictions are recomputed" in line and "(ids b)" in line for line in said)


# ----------------------------------------------------------------------------- one run per predictions folder
@pytest.fixture()
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {
        "host": host or socket.gethostname(),
        "pid": pid,
        "started": "2025-01-01T00:00:00+0000",
        "token": "other",
        "command": "python -m univg test --config other.yaml",
    }
    (folder / LOCK_NAME).write_text(json.dumps(holder) + "\n")
    return folder / LOCK_NAME


def test_a_second_run_into_a_held_folder_refuses_naming_the_holder(tmp_path, processor, live_pid):
    preds = tmp_path / "preds"
    lock = write_lock(preds, live_pid)
    before = lock.read_text()
    module = Scripted(predictions_dir=str(preds))
    with pytest.raises(PredictionsLockedError) as exc:
        trainer(tmp_path).test(module, datamodule=synthetic(processor))
    msg = str(exc.value)
    assert "\n" not in msg and f"pid {live_pid}" in msg and str(lock) in msg and "other.yaml" in msg
    assert module.calls == 0 and module.model is None  # refused before a model or a sample
    assert lock.read_text() == before  # the holder's lock is left alone
    assert not (preds / "predictions_test.jsonl").exists()


def test_a_lock_of_another_host_is_not_taken_over(tmp_path, processor):
    preds = tmp_path / "preds"
    lock = write_lock(preds, 1, host="node-elsewhere-17")
    with pytest.raises(PredictionsLockedError, match="node-elsewhere-17") as exc:
        trainer(tmp_path).test(Scripted(predictions_dir=str(preds)), datamodule=synthetic(processor))
    assert f"delete {lock}" in str(exc.value) and lock.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_said(tmp_path, processor, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    preds = tmp_path / "preds"
    lock = write_lock(preds, dead.pid)
    module = Scripted(predictions_dir=str(preds))
    trainer(tmp_path).test(module, datamodule=synthetic(processor))
    said = [line for line in capsys.readouterr().out.splitlines() if "took over the stale lock" in line]
    assert len(said) == 1 and str(lock) in said[0] and f"pid {dead.pid}" in said[0]
    assert len(module.asked) == 7 and len(rows(preds / "predictions_test.jsonl")) == 7
    assert not lock.exists()  # released when the run ended


def test_the_lock_is_held_during_the_run_and_released_after_a_failure(tmp_path, processor):
    preds = tmp_path / "preds"
    seen = []

    class Watching(Scripted):
        def generate_completions(self, batch):
            seen.append(json.loads((preds / LOCK_NAME).read_text()))
            return super().generate_completions(batch)

    trainer(tmp_path).test(Watching(predictions_dir=str(preds)), datamodule=synthetic(processor))
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert not (preds / LOCK_NAME).exists()
    # a set-up failure after the lock was taken (a resume file that does not exist) releases it
    bad = Scripted(predictions_dir=str(preds), resume_predictions=str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(FileNotFoundError):
        trainer(tmp_path).test(bad, datamodule=synthetic(processor))
    assert not (preds / LOCK_NAME).exists()


def test_a_process_that_dies_by_an_exception_leaves_no_lock(tmp_path):
    code = (
        "import sys; from univg.evaluation.lock import PredictionsLock; "
        "PredictionsLock(sys.argv[1]).acquire(); raise RuntimeError('boom')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "boom" in proc.stderr
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_cli_refuses_a_held_folder_with_one_line_and_status_2(tmp_path, monkeypatch, capsys, live_pid):
    from univg.cli import main

    monkeypatch.chdir(tmp_path)
    lock = write_lock(tmp_path / "preds", live_pid)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "test",
                "--config", str(ROOT / "configs" / "eval" / "synthetic.yaml"),
                "--data.init_args.num_test", "2",
                "--model.init_args.predictions_dir", "preds",
                "--trainer.enable_progress_bar", "false",
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("univg: error:")]
    assert len(err) == 1 and "in use by another evaluation" in err[0] and f"preds/{LOCK_NAME}" in err[0]
    assert lock.exists()
