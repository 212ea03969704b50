"""``python -m univg.hparams_view`` on runs made without the HParams callback: no crash, the
skipped folders counted and named (not ``KeyError: Plugin 'hparams' could not be found``)."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from univg.hparams_view import main


def _plain_run(folder) -> None:
    with SummaryWriter(log_dir=str(folder)) as w:  # scalars only, as configs/debug.yaml logs
        w.add_scalar("train/loss", 1.0, 0)


def _session(folder, phi: str, avg: float) -> None:
    exp, start, end = hparams({"1 phi": phi}, {"test/avg": 0.0})
    with SummaryWriter(log_dir=str(folder)) as w:
        for summary in (exp, start, end):
            w.file_writer.add_summary(summary)
        w.add_scalar("test/avg", avg, 1)


def test_runs_without_hparams_are_skipped_and_named(tmp_path, capsys):
    _plain_run(tmp_path / "debug" / "version_0")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "1 run folder(s) without HParams skipped" in err and "debug/version_0" in err
    assert f"no HParams session under {tmp_path}" in err

    _session(tmp_path / "row" / "fit", "exp", 0.25)
    assert main([str(tmp_path), "--columns", "1 phi", "test/avg"]) == 0
    out, err = capsys.readouterr()
    assert "| row/fit | exp | 0.25 |" in out
    assert "debug/version_0" in err and "row/fit" not in err


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"univg hparams_view: error: {tmp_path / 'nope'} is not a folder"
    )
