"""The command line: a debug fit writes events and the resolved config; bad input is one clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from debug_fit import env, final_weights, fit_command, steps_logged

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "univg", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_unknown_config_key_names_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs/debug.yaml").read_text().replace("lr: 1.0e-3", "lr: 1.0e-3\n    lrr: 2"))
    out = run_cli("fit", "--config", str(bad), "--print_config")
    assert out.returncode != 0
    assert "lrr" in out.stderr


def test_wrong_preset_names_it():
    out = run_cli(
        "fit", "--config", str(ROOT / "configs/debug.yaml"), "--model.init_args.backbone.preset", "qwen9"
    )
    assert out.returncode != 0
    assert "qwen9" in out.stderr


def test_print_config_resolves_defaults():
    out = run_cli("fit", "--config", str(ROOT / "configs/grpo_diff.yaml"), "--print_config")
    assert out.returncode == 0, out.stderr
    assert "phi: exp" in out.stdout and "group_size: 8" in out.stdout and "beta: 0.04" in out.stdout


@pytest.mark.slow
def test_debug_fit_writes_events_config_and_predictions(first_debug_fit):
    proc, folder = first_debug_fit  # conftest.py: the debug fit, run once for this file and test_console.py
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = folder / "runs" / "debug" / "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    config = (run / "config.yaml").read_text()
    assert "univg.modules.SFTModule" in config and "preset: tiny" in config
    assert list(run.glob("checkpoints/*.ckpt"))
    assert list(run.glob("predictions_val*.jsonl"))


def test_data_processor_is_linked_to_the_model_checkpoint(tmp_path):
    from univg.cli import main
    from univg.model.backbone import BackboneSpec
    from univg.model.tokenizer import load_processor

    BackboneSpec().build().save_pretrained(tmp_path)
    load_processor().save_pretrained(tmp_path)
    cfg = str(ROOT / "configs/grpo_diff_debug.yaml")
    cli = main(["--config", cfg, "--model.init_args.backbone.checkpoint", str(tmp_path)], run=False)
    assert cli.datamodule.processor_path == str(tmp_path)
    assert main(["--config", cfg], run=False).datamodule.processor_path is None


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT"])
def test_a_signal_saves_last_ckpt_at_the_step_reached_and_the_resumed_run_repeats_nothing(
    tmp_path, signame, uninterrupted_debug_fit
):
    """Ctrl+C (SIGINT) mid-run: last.ckpt holds every step done, and rerunning the same command
    resumes it, ending bit-identical to a run never interrupted and taking only the missing steps.
    SIGTERM takes the same path end to end in tests/test_slurm_requeue.py (the job script forwards
    it to the fit) and at each step boundary in the in-process tests below."""
    import signal
    import time

    import torch

    run = subprocess.Popen(
        fit_command(tmp_path / "a"), cwd=ROOT, env=env(), stderr=subprocess.PIPE, text=True
    )
    csv = tmp_path / "a" / "run" / "version_0" / "metrics.csv"
    deadline = time.time() + 400
    while len(steps_logged(csv)) < 3 and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(getattr(signal, signame))
    _, err = run.communicate(timeout=300)
    assert run.returncode != 0, err[-2000:]  # stopped, not finished
    done = steps_logged(csv)
    last = tmp_path / "a" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists(), err[-2000:]
    saved = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 3 <= saved < 20 and saved == len(done) == done[-1] + 1  # every finished step, no more
    assert f"saved {last} at step {saved}" in err

    # the same command again: it finds the interrupted run and resumes it, into the same folder
    resumed = subprocess.run(fit_command(tmp_path / "a"), cwd=ROOT, env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"resuming the interrupted run {last.parent.parent} from last.ckpt (step {saved})" in resumed.stderr
    )
    assert not (tmp_path / "a" / "run" / "version_1").exists()
    # the resumed run logs only the steps that were missing; the earlier ones are kept beside
    kept = csv.with_name(f"metrics_before_step_{saved}.csv")
    assert f"stay in {kept}" in resumed.stderr
    assert steps_logged(kept) + steps_logged(csv) == list(range(20))
    assert not (last.parent / "interrupted.json").exists()  # completed: a third run starts afresh

    # the same command never interrupted (conftest.py: run once for this test and test_slurm_requeue.py)
    ours = final_weights(tmp_path / "a" / "run" / "version_0" / "checkpoints")
    theirs = uninterrupted_debug_fit
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


class _Toy(L.LightningModule):
    """A linear model on fixed data; each entry of ``interrupt_at`` (a batch index) sends one
    ``signum`` (SIGINT by default) to this process from inside ``training_step`` (mid-step, where a
    user's Ctrl+C or a scheduler's SIGTERM usually lands)."""

    def __init__(self, interrupt_at: tuple[int, ...] = (), signum: int | None = None) -> None:
        import signal

        import torch

        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.interrupt_at = interrupt_at
        self.signum = signal.SIGINT if signum is None else signum

    def training_step(self, batch, batch_idx):
        for _ in range(self.interrupt_at.count(batch_idx)):
            os.kill(os.getpid(), self.signum)
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        import torch

        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        import torch

        return torch.utils.data.DataLoader(torch.arange(64.0).reshape(16, 4), batch_size=1)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    ("accumulate", "interrupt_at", "saved_step"),
    [
        (1, (2,), 3),  # mid-step 3: that step finishes, then the save
        (2, (2,), 2),  # first micro-batch of step 2: its window closes (batch 3), then the save
        (1, (2, 2), 2),  # a second signal stops at once, inside step 3: nothing is saved
    ],
)
def test_checkpoint_on_interrupt_saves_at_the_next_step_boundary(
    tmp_path, accumulate, interrupt_at, saved_step, signame
):
    """SIGTERM (a scheduler's stop) is handled as Ctrl+C: the fit saves last.ckpt at the next step
    boundary and exits with status 1."""
    import signal

    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from univg.callbacks import CheckpointOnInterrupt

    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=6, accumulate_grad_batches=accumulate, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt"), CheckpointOnInterrupt()],
    )  # fmt: skip
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as stop:  # Lightning's exit after a KeyboardInterrupt
            trainer.fit(_Toy(interrupt_at, getattr(signal, signame)))
    finally:
        for s, handler in previous.items():  # Lightning leaves SIGINT ignored after an interrupt
            signal.signal(s, handler)
    assert stop.value.code == 1
    last = tmp_path / "ckpt" / "last.ckpt"
    if len(interrupt_at) > 1:
        assert not last.exists() and trainer.global_step == saved_step
        return
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == saved_step == trainer.global_step
    assert torch.equal(state["state_dict"]["layer.weight"], trainer.lightning_module.layer.weight.detach())


def test_fresh_is_short_for_the_modules_start_over_switch():
    from univg.cli import main

    cli = main(["--config", "configs/eval/synthetic.yaml", "--fresh"], run=False)
    assert cli.model.fresh is True
    assert main(["--config", "configs/eval/synthetic.yaml"], run=False).model.fresh is False


def test_help_lists_every_command_of_the_suite(capsys):
    """``python -m univg --help`` names every entry point, not only LightningCLI's four (the
    others are not found only by reading the README), and the usage line names the real command."""
    import re

    from univg.__main__ import COMMANDS, SUBCOMMANDS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith(COMMANDS) and "usage: python -m univg " in out
    listed = set(re.findall(r"python -m (univg\.[\w.]+)", COMMANDS))
    listed |= {f"univg.{name}" for name in SUBCOMMANDS}  # python -m univg export|data
    package = ROOT / "univg"
    entry = {f"univg.{p.stem}" for p in package.glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    entry |= {f"univg.{p.parent.name}" for p in package.glob("*/__main__.py")}
    entry |= {
        f"univg.{p.parent.name}.{p.stem}"
        for p in package.glob("*/*.py")
        if p.name != "__main__.py" and '__name__ == "__main__"' in p.read_text()
    }
    # not user commands: the CLI's own module and the grid's overlay writer (make SCALE=mini)
    internal = {"univg.__main__", "univg.cli", "univg.demo.grid"}
    assert entry - internal == listed
