"""What happened to one sample of a CoT build: each teacher chain's outcome and the choice made.

:class:`~univg.cot.builder.CotBuilder` produces these; :mod:`univg.cot.report` counts them and
:mod:`univg.cot.review` shows them to a human.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from univg.core.boxes import IntBox
from univg.core.sample_types import GroundingSample
from univg.cot.checks import ChainCheck


@dataclass
class ChainOutcome:
    """One teacher chain: its reply (``None`` when the request failed), check and error."""

    index: int
    text: str | None
    check: ChainCheck | None
    error: str | None = None
    cached: bool = False

    @property
    def reason(self) -> str | None:
        if self.error is not None:
            return "request_error"
        assert self.check is not None
        return self.check.reason


@dataclass
class SampleResult:
    """What happened to one sample. ``chosen`` indexes ``chains``; ``selection`` says how it was
    chosen (``single``: the only passing chain, ``judge``, ``judge_fallback``)."""

    sample: GroundingSample
    answer: IntBox
    chains: list[ChainOutcome] = field(default_factory=list)
    chosen: int | None = None
    selection: str | None = None
    reason: str | None = None
    detail: str = ""
    #: The judge request's error when it failed for good (the sample then falls back to best IoU).
    judge_error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None

    @property
    def reasoning(self) -> str:
        """The chosen chain's reasoning (inside ``<think>``); empty for a rejected sample."""
        if self.chosen is None:
            return ""
        check = self.chains[self.chosen].check
        return check.reasoning if check is not None else ""

    def output_sample(self) -> GroundingSample:
        """The sample to write: the chosen reasoning with the sample's own (ground-truth) box."""
        if not self.accepted:
            raise ValueError(f"{self.sample.where()}: rejected ({self.reason}), nothing to write")
        return dataclasses.replace(self.sample, reasoning=self.reasoning)


__all__ = ["ChainOutcome", "SampleResult"]
