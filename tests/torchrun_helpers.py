"""Run a test file's scenario on 2 CPU processes (gloo) with ``torchrun``, and the checks the
distributed tests share.

Lightning's launchers re-run the calling script, which under pytest would be pytest itself, so each
scenario runs a worker script (``python -m torch.distributed.run --nproc_per_node 2 SCRIPT MODE
OUT``) whose ranks write ``OUT/MODE_rank{0,1}.json``; :func:`run_ranks` returns those records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_ranks(script: Path, mode: str, out: Path, timeout: int = 300) -> list[dict]:
    """``script MODE OUT`` on 2 processes; each rank's JSON record, rank 0 first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), mode, str(out)], cwd=out, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{mode} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in (0, 1)]


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All parameters (full tensors, also under FSDP) as one fp32 vector, in name order."""
    parts = []
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        parts.append(t.detach().float().reshape(-1).cpu())
    return torch.cat(parts)


def split_but_frozen_root(shards: dict) -> bool:
    """Every parameter split across the ranks, except the frozen root ones (whole on each rank)."""
    return all(
        local == full if replicated(name) else 0 < local < full
        for name, (local, full) in shards.items()
        if full > 1
    )


def replicated(name: str) -> bool:
    """The tiny model's frozen root parameters in these runs (full fine-tuning, vision frozen)."""
    return ".visual.patch_embed." in name or ".visual.merger." in name
