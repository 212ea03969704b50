"""The sampler's random state in a GRPO checkpoint."""

from __future__ import annotations

from typing import Any

import torch


class SamplerState:
    """Checkpoint hooks that keep the sampler's RNG, so a resumed run draws the same completions
    as an uninterrupted one."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["univg_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["univg_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("univg_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
