"""``configs/slurm/fit.sbatch`` as SLURM runs it, with stand-ins for ``srun`` (runs its command)
and ``scontrol`` (records the requeue): SIGTERM to the job script (what ``--signal=B:TERM@120``
sends before the time limit) saves the fit at a step boundary and requeues the job; the requeued
job, the same script with the same arguments, resumes the run and ends bit-identical to a fit that
was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from debug_fit import CONFIG, final_weights, fit_options, steps_logged

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "configs" / "slurm" / "fit.sbatch"


@pytest.mark.slow
def test_the_sbatch_script_requeues_on_sigterm_and_the_requeued_job_resumes_exactly(
    tmp_path, uninterrupted_debug_fit
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "python").write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "SLURM_JOB_ID": "4242",
    }
    job = ["bash", str(SCRIPT), CONFIG, *fit_options(tmp_path / "a")]

    first = subprocess.Popen(job, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    csv = tmp_path / "a" / "run" / "version_0" / "metrics.csv"
    deadline = time.time() + 400
    while len(steps_logged(csv)) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # to the batch script, as --signal=B:TERM does
    _, err = first.communicate(timeout=300)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], err[-2000:]
    checkpoints = tmp_path / "a" / "run" / "version_0" / "checkpoints"
    saved = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 3 <= saved < 20 and (checkpoints / "interrupted.json").exists(), err[-2000:]

    requeued = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resuming the interrupted run {checkpoints.parent}" in requeued.stderr
    assert not (tmp_path / "a" / "run" / "version_1").exists()

    # the same fit never interrupted (conftest.py: run once for this test and test_cli.py)
    ours, theirs = final_weights(checkpoints), uninterrupted_debug_fit
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
