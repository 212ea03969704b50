"""Dynamic sampling with refill (DAPO): a step trains on prompts whose G rewards differ.

A group whose G completions all earn the same reward has zero advantage everywhere: it costs a
rollout and a backward pass and moves nothing (except through the KL term). With
``dynamic_sampling: {max_tries: N}`` such groups are dropped when scored and the module keeps
drawing micro-batches of fresh prompts until the optimiser step holds ``prompts_per_step`` kept
prompts (over all processes), or until it has drawn ``N`` times the micro-batches of a plain step.
The step then trains on what it holds (at least one more micro-batch's worth when the last draw
overshoots: nothing that was scored is thrown away). The difficulty weight phi applies to the
groups that remain.

Logged per optimiser step: ``dynamic/tries`` (micro-batches drawn over a plain step's count),
``dynamic/kept_share`` (kept prompts over drawn ones) and ``dynamic/fill`` (kept prompts over
``prompts_per_step``: below 1 when the tries ran out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DynamicSampling:
    """``max_tries``: at most this many times a plain step's micro-batches are drawn per step."""

    max_tries: int = 4

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError(f"dynamic_sampling.max_tries must be >= 1, got {self.max_tries}")


@dataclass
class Refill:
    """What the current optimiser step has drawn and kept so far (this process; sums over all)."""

    spec: DynamicSampling
    draws: int = 0
    drawn: float = 0.0
    kept: float = 0.0
    _logs: dict[str, float] = field(default_factory=dict)

    def add(
        self,
        drawn_prompts: int,
        kept_prompts: int,
        micro_batches_per_step: int,
        prompts_per_step: int,
        world_sum: Callable[[list[float]], list[float]],
        last: bool = False,
    ) -> bool:
        """Count one scored micro-batch; True when the step is full or out of tries (or ``last``:
        the epoch's last micro-batch, which ends the step with what it holds). Every process calls
        this once per micro-batch, so the sums over processes agree on the answer."""
        self.draws += 1
        drawn, kept = world_sum([float(drawn_prompts), float(kept_prompts)])
        self.drawn += drawn
        self.kept += kept
        out_of_tries = self.draws >= self.spec.max_tries * micro_batches_per_step
        if self.kept >= prompts_per_step or out_of_tries or last:
            self._logs = {
                "dynamic/tries": self.draws / micro_batches_per_step,
                "dynamic/kept_share": self.kept / max(self.drawn, 1.0),
                "dynamic/fill": self.kept / prompts_per_step,
            }
            self.draws, self.drawn, self.kept = 0, 0.0, 0.0
            return True
        return False

    def pop_logs(self) -> dict[str, float]:
        """The finished step's values (once)."""
        logs, self._logs = self._logs, {}
        return logs
