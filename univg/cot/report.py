"""What one CoT build did: counts, paid tokens, failure causes, and whether the run failed.

A build that accepted nothing, or whose share of failed teacher/judge calls is above a limit, is a
failed run (the command line exits non-zero): a wrong URL, a wrong key or a dead server must not
end in an empty training file with exit status 0. The causes (the error texts of the failed calls
and unreadable images) are counted, so the first lines of the report say what went wrong.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from univg.cot.checks import CHAIN_REASONS
from univg.cot.results import SampleResult

#: Sample-level rejection reasons.
SAMPLE_REASONS = ("bad_ground_truth", "image_error", "request_error", "no_valid_chain")

#: Default of ``--max-failure-share``: above this share of failed calls (after retries) the run
#: fails. A healthy server loses almost no call after retries; 10% lost means something is wrong
#: (a rate limit too tight, a dying server) and the user should look before training on the rest.
DEFAULT_MAX_FAILURE_SHARE = 0.1

#: How many distinct causes a summary prints.
SHOWN_CAUSES = 5


@dataclass
class BuildReport:
    """Counts over one run; ``tokens_*`` are what this run paid for (cached responses are free).

    ``causes`` counts the error text of every failed call (teacher or judge, after retries) and of
    every image that could not be read.
    """

    samples_in: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    chain_rejected: Counter[str] = field(default_factory=Counter)
    chains_passed: int = 0
    selection: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    failed_calls: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    seconds: float = 0.0
    price_in: float | None = None
    price_out: float | None = None
    interrupted: bool = False

    @property
    def cost(self) -> float | None:
        """Estimated cost of this run's tokens (prices per 1M tokens), or ``None`` without prices."""
        if self.price_in is None and self.price_out is None:
            return None
        return (
            self.prompt_tokens * (self.price_in or 0.0) + self.completion_tokens * (self.price_out or 0.0)
        ) / 1e6

    @property
    def failure_share(self) -> float:
        """Failed calls over the calls sent to a server this run (cache hits are not sent).

        >>> BuildReport(calls=10, cache_hits=2, failed_calls=2).failure_share
        0.25
        >>> BuildReport(calls=4, cache_hits=4).failure_share
        0.0
        """
        sent = self.calls - self.cache_hits
        return self.failed_calls / sent if sent > 0 else 0.0

    def top_causes(self, n: int = SHOWN_CAUSES) -> list[tuple[str, int]]:
        """The ``n`` most frequent causes (ties in first-seen order)."""
        return self.causes.most_common(n)

    def failure(self, max_failure_share: float = DEFAULT_MAX_FAILURE_SHARE) -> str | None:
        """Why this run failed (one line), or ``None`` when it did not.

        >>> BuildReport(samples_in=3).failure()
        'no sample accepted (0 of 3)'
        >>> BuildReport(samples_in=3, accepted=2, calls=10, failed_calls=3).failure(0.2)
        '3 of 10 calls failed (30%, more than --max-failure-share 0.2)'
        >>> BuildReport(samples_in=3, accepted=2, calls=10, failed_calls=2).failure(0.2) is None
        True
        """
        if self.accepted == 0:
            return f"no sample accepted (0 of {self.samples_in})"
        if self.failure_share > max_failure_share:
            sent = self.calls - self.cache_hits
            return (
                f"{self.failed_calls} of {sent} calls failed ({self.failure_share:.0%}, "
                f"more than --max-failure-share {max_failure_share:g})"
            )
        return None

    def causes_text(self, n: int = SHOWN_CAUSES) -> str:
        """The first distinct causes with counts, one per line (empty when there are none)."""
        top = self.top_causes(n)
        lines = [f"  {count} x {cause}" for cause, count in top]
        rest = len(self.causes) - len(top)
        if rest > 0:
            lines.append(
                f"  ... and {rest} other cause(s), {sum(self.causes.values()) - sum(c for _, c in top)} times"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["rejected"] = dict(self.rejected)
        out["chain_rejected"] = dict(self.chain_rejected)
        out["selection"] = dict(self.selection)
        # Most frequent first, so the file's first lines say what went wrong.
        out["causes"] = dict(self.causes.most_common())
        out["failure_share"] = self.failure_share
        out["cost"] = self.cost
        return out

    def summary(self, causes: bool = True) -> str:
        """Human-readable report (several lines); ``causes=False`` leaves out the failure causes
        (printed after the error line instead, when the run failed)."""
        lines = [
            f"samples in {self.samples_in}, accepted {self.accepted}, rejected {sum(self.rejected.values())}"
            + (" (interrupted)" if self.interrupted else ""),
        ]
        for reason in SAMPLE_REASONS:
            if self.rejected[reason]:
                lines.append(f"  rejected: {reason:<18} {self.rejected[reason]}")
        lines.append(f"chains passed {self.chains_passed}; rejected by check:")
        for reason in (*CHAIN_REASONS, "request_error"):
            lines.append(f"  {reason:<18} {self.chain_rejected[reason]}")
        lines.append("selection: " + ", ".join(f"{k} {v}" for k, v in sorted(self.selection.items())))
        lines.append(
            f"calls {self.calls} (cache hits {self.cache_hits}), HTTP requests {self.requests}, "
            f"retries {self.retries}, failed calls {self.failed_calls}"
        )
        if causes and self.causes:
            lines.append("failure causes (count x cause):")
            lines.append(self.causes_text())
        lines.append(
            f"tokens paid this run: prompt {self.prompt_tokens:,}, completion {self.completion_tokens:,}"
            f" (from cache: prompt {self.cached_prompt_tokens:,}, completion {self.cached_completion_tokens:,})"
        )
        if self.cost is not None:
            lines.append(f"estimated cost this run: {self.cost:.4f}")
        lines.append(f"wall time {self.seconds:.1f} s")
        return "\n".join(lines)


def tally(report: BuildReport, result: SampleResult) -> None:
    """Add one sample's outcome to ``report``."""
    for chain in result.chains:
        if chain.reason is None:
            report.chains_passed += 1
        else:
            report.chain_rejected[chain.reason] += 1
        if chain.error is not None:
            report.causes[chain.error] += 1
    if result.judge_error is not None:
        report.causes[result.judge_error] += 1
    if result.reason == "image_error":
        report.causes[result.detail] += 1
    if result.accepted:
        report.accepted += 1
        report.selection[result.selection or "?"] += 1
    else:
        report.rejected[result.reason or "?"] += 1


__all__ = ["DEFAULT_MAX_FAILURE_SHARE", "SAMPLE_REASONS", "BuildReport", "tally"]
