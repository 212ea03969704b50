"""Rerunning the command of an interrupted fit: it resumes the newest run folder from its
``last.ckpt`` when the config is the same, and otherwise (a changed config, ``--fresh``, a later run
after it) starts a new version and says why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import DEBUG

from univg.cli import main

#: each fit writes its runs/ under the test's folder; no UNIVG_DEBUG tracebacks
pytestmark = pytest.mark.usefixtures("cli_in_tmp")


def interrupted_run(tmp_path: Path, args: list[str], version: int = 0) -> Path:
    """A run folder as an interrupted fit of ``args`` leaves it: config.yaml, last.ckpt, the marker."""
    from univg.callbacks.resume import mark_interrupted

    cli = main(args[1:], run=False)  # the same config, built without running
    folder = tmp_path / "runs" / "run" / f"version_{version}"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
    last = folder / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 5}, last)
    mark_interrupted(last, 5, "SIGTERM")
    return last


def fit_call(monkeypatch, capsys, args: list[str]) -> tuple[dict, str]:
    """Run ``args`` through the CLI with ``Trainer.fit`` recorded instead of run."""
    import lightning as L

    calls: dict = {}

    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs):  # noqa: ANN001, ANN202
        calls.update(ckpt_path=ckpt_path, log_dir=self.log_dir)

    monkeypatch.setattr(L.Trainer, "fit", fit)
    monkeypatch.setattr("univg.cli.check_inputs", lambda config: None)  # the stand-in last.ckpt
    main(args)
    return calls, capsys.readouterr().err


RUN = [
    "fit",
    "--config",
    DEBUG,
    "--trainer.logger.init_args.name",
    "run",
    "--trainer.logger.init_args.save_dir",
    "runs",
]


def test_the_same_command_resumes_an_interrupted_run_into_its_folder(tmp_path, monkeypatch, capsys):
    last = interrupted_run(tmp_path, RUN)
    calls, err = fit_call(monkeypatch, capsys, RUN)
    assert calls["ckpt_path"] == str(Path("runs/run/version_0/checkpoints/last.ckpt"))
    assert Path(calls["log_dir"]).resolve() == last.parent.parent.resolve()
    assert "resuming the interrupted run runs/run/version_0 from last.ckpt (step 5)" in err


def test_a_changed_config_or_fresh_starts_a_new_run_and_says_why(tmp_path, monkeypatch, capsys):
    interrupted_run(tmp_path, RUN)
    calls, err = fit_call(monkeypatch, capsys, [*RUN, "--model.init_args.lr", "2e-3"])
    assert calls["ckpt_path"] is None and calls["log_dir"].endswith("version_1")
    assert "was interrupted at step 5 but its config differs (model.init_args.lr: 0.001 -> 0.002)" in err
    calls, err = fit_call(monkeypatch, capsys, [*RUN, "--fresh"])
    assert calls["ckpt_path"] is None and "resuming" not in err


def test_only_the_newest_version_is_resumed(tmp_path, monkeypatch, capsys):
    interrupted_run(tmp_path, RUN, version=0)
    (tmp_path / "runs" / "run" / "version_1").mkdir()  # a later run followed the interrupted one
    calls, err = fit_call(monkeypatch, capsys, RUN)
    assert calls["ckpt_path"] is None and "resuming" not in err
