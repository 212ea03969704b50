"""Checkpoints and results files on a full disk, a kill mid-write, a flipped byte or a missing
shard: writes go beside their destination and are renamed into place, so the previous file stays
whole, and a damaged checkpoint is refused before it loads with one ``univg: error:`` line that names
it."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from cli_helpers import DEBUG, ROOT, one_error_line

from univg.cli import main
from univg.model.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError, atomic_torch_save
from univg.model.checkpoints import (
    CheckpointError,
    check_checkpoint,
    check_model_folder,
    check_sharded_folder,
)

#: each fit writes its runs/ under the test's folder; no UNIVG_DEBUG tracebacks
pytestmark = pytest.mark.usefixtures("cli_in_tmp")


class FullDisk(io.FileIO):
    """A file on a disk that takes ``room`` bytes and then reports ENOSPC."""

    room = 0

    def write(self, b):  # noqa: ANN001, ANN201
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def full_disk_after(room: int):  # noqa: ANN201
    def opener(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        FullDisk.room = room
        return FullDisk(path, mode.replace("b", ""))

    return opener


def test_atomic_save_on_a_full_disk_keeps_the_previous_file_and_leaves_nothing_partial(tmp_path, monkeypatch):
    import univg.model.checkpoint_io as checkpoint_io

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(10)}, path)
    monkeypatch.setattr(checkpoint_io, "open", full_disk_after(2000), raising=False)
    with pytest.raises(CheckpointWriteError) as err:
        atomic_torch_save({"step": 2, "w": torch.ones(100_000)}, path)
    message = str(err.value)
    assert str(path) in message and "No space left" in message and "needs about 0.4 MB" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file
    assert torch.load(path)["step"] == 1  # the previous checkpoint, whole


def test_a_full_disk_during_a_fit_is_one_line_and_the_run_keeps_its_last_good_checkpoint(
    tmp_path, capsys, monkeypatch
):
    """The second checkpoint of the fit hits a full disk: one line naming the file and the space;
    the first checkpoint is still there and loads."""
    import univg.model.checkpoint_io as checkpoint_io

    calls = {"n": 0}
    real_open = open

    def opener(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            return real_open(path, mode, *args, **kwargs)
        return full_disk_after(4096)(path, mode)

    monkeypatch.setattr(checkpoint_io, "open", opener, raising=False)
    every = json.dumps(
        {"trainer": {"callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                    "init_args": {"every_n_train_steps": 2, "save_last": True, "save_top_k": -1}}]}}
    )  # fmt: skip
    line = one_error_line(capsys, ["fit", "--config", DEBUG, "--config", every, "--trainer.max_steps", "4"])
    assert (
        "cannot write checkpoint" in line
        and "No space left on device" in line
        and "free on that disk" in line
    )
    folder = next((tmp_path / "runs").rglob("checkpoints"))
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch=0-step=2.ckpt"], names  # the step-4 write left nothing behind
    assert torch.load(folder / names[0], weights_only=False)["global_step"] == 2


WRITER = """
import sys, time, torch
import univg.model.checkpoint_io as io_
path = sys.argv[1]
io_.atomic_torch_save({"version": 1, "w": torch.zeros(1000)}, path)
real_open = open
class Slow:
    def __init__(self, f): self.f = f
    def write(self, b):
        time.sleep(0.002)
        return self.f.write(b)
    def __getattr__(self, name): return getattr(self.f, name)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
io_.open = lambda p, m: Slow(real_open(p, m))
print("writing", flush=True)
io_.atomic_torch_save({"version": 2, "w": torch.zeros(4_000_000)}, path)
print("done", flush=True)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    """SIGKILL (no handler can run) in the middle of writing version 2: version 1 still loads."""
    path = tmp_path / "last.ckpt"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "writing"
    partial = tmp_path / ".last.ckpt.partial"
    deadline = time.time() + 60
    while not (partial.exists() and partial.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert partial.exists() and partial.stat().st_size > 0  # killed mid-write
    check_checkpoint(path, "last.ckpt")  # CRCs of every member
    assert torch.load(path)["version"] == 1


def test_the_cli_writes_checkpoints_through_the_atomic_writer():
    cli = main(["--config", DEBUG], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def flip_a_tensor_byte(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 100)
    data = bytearray(path.read_bytes())
    data[info.header_offset + 200] ^= 0x40  # inside the member's bytes (its header is < 200 bytes)
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_a_flipped_tensor_byte_is_refused_before_it_loads(tmp_path, capsys):
    path = tmp_path / "flipped.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(64, 64)}, "global_step": 3}, path)
    flip_a_tensor_byte(path)
    assert torch.load(path, weights_only=False)["state_dict"]["model.w"].abs().max() > 0  # torch loads it
    for run in (
        ["fit", "--config", DEBUG, "--ckpt_path", str(path)],
        ["test", "--config", DEBUG, "--model.init_args.init_checkpoint", str(path)],
    ):
        line = one_error_line(capsys, run)
        assert str(path) in line and "damaged checkpoint" in line and "CRC" in line, line


def test_a_sharded_checkpoint_missing_a_shard_or_cut_short_is_refused(tmp_path, capsys):
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "last.ckpt"
    dcp.save({"model.w": torch.arange(4096.0), "model.b": torch.ones(8)}, checkpoint_id=folder, no_dist=True)
    assert check_sharded_folder(folder, "init_checkpoint") == folder
    shard = next(folder.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"shard {shard.name} is cut short"):
        check_sharded_folder(folder, "init_checkpoint")
    shard.unlink()
    line = one_error_line(
        capsys, ["test", "--config", DEBUG, "--model.init_args.init_checkpoint", str(folder)]
    )
    assert f"shard {shard.name} is missing" in line and str(folder) in line, line


def test_a_truncated_or_incomplete_model_folder_is_refused(tmp_path, tiny_model, capsys):
    folder = tmp_path / "hf"
    tiny_model.save_pretrained(folder, max_shard_size="200KB")
    assert check_model_folder(folder, "backbone.checkpoint") == folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    last = folder / files[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-100])
    line = one_error_line(
        capsys, ["test", "--config", DEBUG, "--model.init_args.backbone.checkpoint", str(folder)]
    )
    assert f"{last}: cut short" in line, line
    last.unlink()
    with pytest.raises(CheckpointError, match=rf"{files[-1]} is missing \({len(files)} weight files"):
        check_model_folder(folder, "backbone.checkpoint")
    last.write_bytes(data)
    bad_header = folder / files[0]
    bad_header.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        check_model_folder(folder, "backbone.checkpoint")


def test_results_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A full disk while an evaluation writes its results keeps the previous results whole."""
    import univg.model.checkpoint_io as checkpoint_io
    from univg.evaluation.tables import write_run_results

    result = {
        "run": "a",
        "benchmark": "mig_bench",
        "stage": "test",
        "metrics": {"count": 1.0, "acc@0.5": 0.5},
    }
    path = write_run_results(result, tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    class Full(io.StringIO):
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            super().__init__()

        def write(self, text):  # noqa: ANN001, ANN201
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):  # noqa: ANN201
            return 0

    monkeypatch.setattr(checkpoint_io, "open", Full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        write_run_results({**result, "metrics": {"count": 2.0, "acc@0.5": 1.0}}, tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # no partial file either
    assert json.loads(path.read_text())["metrics"]["count"] == 1.0


def test_replace_folder_keeps_one_whole_copy_at_every_moment(tmp_path, monkeypatch):
    """A kill between the two renames leaves the previous folder whole under its aside name."""
    from univg.model.checkpoint_io import replace_folder

    out, new = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    out.mkdir()
    (out / "shard").write_text("old")
    new.mkdir()
    (new / "shard").write_text("new")
    real = os.replace
    calls = []

    def killed_after_first(src, dst):  # noqa: ANN001, ANN202
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        replace_folder(new, out)
    aside = tmp_path / calls[0][1]
    assert (aside / "shard").read_text() == "old" and (new / "shard").read_text() == "new"
    monkeypatch.setattr(os, "replace", real)
    for child in tmp_path.iterdir():
        shutil.rmtree(child)
    out.mkdir()
    (out / "shard").write_text("old")
    new.mkdir()
    (new / "shard").write_text("new")
    replace_folder(new, out)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"] and (out / "shard").read_text() == "new"
