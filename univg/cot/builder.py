"""Cold-start CoT data construction (UniVG-R1 section 3.1): teacher chains, checks, judge.

For each :class:`GroundingSample`:

1. ask the teacher for ``chains`` reasoning chains (same prompt, sampled; each its own request so
   any OpenAI-compatible server works, ``n`` is not universally supported);
2. run the automatic checks on each (:mod:`univg.cot.checks`);
3. if more than one passed, ask the judge which is best (one passing chain is taken as is; an
   unusable judge reply falls back to the highest-IoU chain, counted as ``judge_fallback``);
4. keep the sample with the chosen reasoning and the *ground-truth* answer box.

Every paid response goes through the :class:`ResponseCache`, so a rerun after an interruption
repeats no request that had completed. Samples run in a thread pool of ``concurrency`` workers
(one request in flight per worker).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from univg.core.boxes import Qwen2VLFrame, format_answer
from univg.core.sample_types import GroundingSample
from univg.cot.cache import ResponseCache, cache_key
from univg.cot.checks import check_chain
from univg.cot.client import ChatClient, TeacherRequestError
from univg.cot.prompts import ChatPrompt, judge_prompt, parse_judge_choice, sample_images, teacher_prompt
from univg.cot.report import BuildReport, tally
from univg.cot.results import ChainOutcome, SampleResult
from univg.data import write_cot_sft

_FRAME = Qwen2VLFrame()


@dataclass
class BuildConfig:
    """Knobs of :class:`CotBuilder`. Temperatures and token limits are sent to the server as is."""

    chains: int = 3
    concurrency: int = 8
    iou_threshold: float = 0.5
    min_words: int = 15
    temperature: float = 1.0
    max_tokens: int = 1024
    judge_temperature: float = 0.0
    judge_max_tokens: int = 64
    judge_images: bool = True
    image_root: str | None = None
    #: Merged into every request body (e.g. ``{"top_p": 0.9}`` or ``{"max_completion_tokens": 1024}``);
    #: a ``None`` value removes a field (e.g. ``{"max_tokens": None}`` for servers that reject it).
    extra_params: dict[str, Any] = field(default_factory=dict)

    def params(self, temperature: float, max_tokens: int) -> dict[str, Any]:
        """The sampling fields of one request body.

        >>> BuildConfig(extra_params={"max_tokens": None, "top_p": 0.9}).params(1.0, 64)
        {'temperature': 1.0, 'top_p': 0.9}
        """
        merged = {"temperature": temperature, "max_tokens": max_tokens, **self.extra_params}
        return {k: v for k, v in merged.items() if v is not None}

    def __post_init__(self) -> None:
        if self.chains < 1:
            raise ValueError(f"chains must be >= 1, got {self.chains}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold}")


class CotBuilder:
    """Builds CoT samples with a ``teacher`` client and a ``judge`` client (the teacher by default).

    ``cache`` may be ``None`` (every call is paid). Thread-safe: :meth:`build_one` may run in
    several threads at once, which is what :meth:`build` does.
    """

    def __init__(
        self,
        teacher: ChatClient,
        config: BuildConfig | None = None,
        judge: ChatClient | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.teacher = teacher
        self.judge = judge or teacher
        self.config = config or BuildConfig()
        self.cache = cache
        self._lock = threading.Lock()
        self._calls = Counter[str]()

    # ------------------------------------------------------------------ one call, cached
    def _call(
        self, client: ChatClient, prompt: ChatPrompt, sample_id: str, kind: str, index: int
    ) -> tuple[str, bool]:
        """The reply text for one request and whether it came from the cache."""
        key = cache_key(sample_id, client.model, prompt.hash, kind, index)
        with self._lock:
            self._calls["calls"] += 1
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self._calls["cache_hits"] += 1
                    self._calls["cached_prompt_tokens"] += int(hit.get("prompt_tokens", 0))
                    self._calls["cached_completion_tokens"] += int(hit.get("completion_tokens", 0))
                return hit["text"], True
        result = client.complete(prompt.messages(), **prompt.params)
        if self.cache is not None:
            self.cache.put(
                key,
                {
                    "text": result.text,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "sample_id": sample_id,
                    "kind": kind,
                    "index": index,
                    "model": client.model,
                    "time": time.time(),
                },
            )
        return result.text, False

    # ------------------------------------------------------------------ one sample
    def build_one(self, sample: GroundingSample) -> SampleResult:
        """Chains, checks and judge for one sample (never raises for request or image errors)."""
        cfg = self.config
        answer = _FRAME.to_model(sample.box)
        result = SampleResult(sample=sample, answer=answer)
        if sample.box.is_degenerate or not 0 <= sample.target_index < len(sample.images):
            result.reason = "bad_ground_truth"
            result.detail = f"{sample.where()}: box {sample.box} / target_index {sample.target_index}"
            return result
        answer_text = format_answer(answer)
        images = sample_images(sample, cfg.image_root)
        params = cfg.params(cfg.temperature, cfg.max_tokens)
        prompt = teacher_prompt(sample, answer_text, images, params)
        for index in range(cfg.chains):
            try:
                text, cached = self._call(self.teacher, prompt, sample.id, "chain", index)
            except TeacherRequestError as err:
                result.chains.append(ChainOutcome(index, None, None, error=str(err)))
                continue
            except OSError as err:  # an image that cannot be read: no chain of this sample can be sent
                result.reason, result.detail = "image_error", f"{sample.where()}: {err}"
                return result
            check = check_chain(text, answer, cfg.iou_threshold, cfg.min_words)
            result.chains.append(ChainOutcome(index, text, check, cached=cached))
        passed = [c for c in result.chains if c.reason is None]
        if not passed:
            errors = all(c.error is not None for c in result.chains)
            result.reason = "request_error" if errors else "no_valid_chain"
            result.detail = "; ".join(f"chain {c.index}: {c.error or c.reason}" for c in result.chains)
            return result
        if len(passed) == 1:
            result.chosen, result.selection = passed[0].index, "single"
            return result
        judge_params = cfg.params(cfg.judge_temperature, cfg.judge_max_tokens)
        reasonings = [c.check.reasoning for c in passed if c.check is not None]
        jprompt = judge_prompt(
            sample, answer_text, reasonings, images if cfg.judge_images else [], judge_params
        )
        choice: int | None = None
        try:
            reply, _ = self._call(self.judge, jprompt, sample.id, "judge", 0)
            choice = parse_judge_choice(reply, len(passed))
            if choice is None:
                result.detail = f"judge reply not understood: {reply[:120]!r}"
        except TeacherRequestError as err:
            result.judge_error = str(err)
            result.detail = f"judge failed: {err}"
        if choice is None:
            # Best IoU, then the longer reasoning (more content), then the earlier chain.
            best = max(passed, key=lambda c: (c.check.iou, c.check.words, -c.index))  # type: ignore[union-attr]
            result.chosen, result.selection = best.index, "judge_fallback"
        else:
            result.chosen, result.selection = passed[choice].index, "judge"
        return result

    # ------------------------------------------------------------------ many samples
    def build(
        self,
        samples: Sequence[GroundingSample],
        progress: bool = True,
        on_result: Callable[[SampleResult], None] | None = None,
        price_in: float | None = None,
        price_out: float | None = None,
    ) -> tuple[list[SampleResult], BuildReport]:
        """Run every sample; results come back in input order.

        ``on_result`` is called in the main thread after each sample (e.g. to stop early). On
        ``KeyboardInterrupt`` (or any exception from ``on_result``) the queued samples are cancelled,
        the requests in flight finish and are cached, and the exception propagates: rerunning
        resumes from the cache.
        """
        from tqdm.auto import tqdm

        start = time.perf_counter()
        clients = [self.teacher] if self.judge is self.teacher else [self.teacher, self.judge]
        before = [dataclasses.replace(c.stats) for c in clients]
        calls_before = Counter(self._calls)
        report = BuildReport(samples_in=len(samples), price_in=price_in, price_out=price_out)
        results: list[SampleResult | None] = [None] * len(samples)
        bar = tqdm(total=len(samples), disable=not progress, desc="cot", unit="sample", dynamic_ncols=True)
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="cot")
        try:
            # Submit lazily (at most 2x concurrency queued) so an interruption leaves little queued work.
            pending: dict[Future[SampleResult], int] = {}
            next_index = 0
            while next_index < len(samples) or pending:
                while next_index < len(samples) and len(pending) < 2 * self.config.concurrency:
                    pending[pool.submit(self.build_one, samples[next_index])] = next_index
                    next_index += 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: pending[f]):
                    index = pending.pop(future)
                    result = future.result()
                    results[index] = result
                    tally(report, result)
                    bar.update(1)
                    bar.set_postfix(accepted=report.accepted, rejected=sum(report.rejected.values()))
                    if on_result is not None:
                        on_result(result)
        except BaseException:
            report.interrupted = True
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
            for client, old in zip(clients, before):
                report.requests += client.stats.requests - old.requests
                report.retries += client.stats.retries - old.retries
                report.failed_calls += client.stats.failures - old.failures
                report.prompt_tokens += client.stats.prompt_tokens - old.prompt_tokens
                report.completion_tokens += client.stats.completion_tokens - old.completion_tokens
            for name in ("calls", "cache_hits", "cached_prompt_tokens", "cached_completion_tokens"):
                setattr(report, name, self._calls[name] - calls_before[name])
            report.seconds = time.perf_counter() - start
        return [r for r in results if r is not None], report


def pick_review(results: Sequence[SampleResult], fraction: float, seed: int = 0) -> list[SampleResult]:
    """A seeded random ``fraction`` of the accepted results (at least one when any were accepted and
    ``fraction > 0``), in input order.

    >>> from univg.core.boxes import Box
    >>> s = [GroundingSample(str(i), "t", [], 0, "q", Box(0, 0, 1, 1)) for i in range(20)]
    >>> rs = [SampleResult(x, (0, 0, 999, 999), chosen=0) for x in s]
    >>> len(pick_review(rs, 0.1)), len(pick_review(rs, 0.01)), len(pick_review(rs, 0.0))
    (2, 1, 0)
    """
    accepted = [r for r in results if r.accepted]
    if fraction <= 0 or not accepted:
        return []
    count = min(len(accepted), max(1, math.ceil(fraction * len(accepted) - 1e-9)))
    chosen = set(random.Random(seed).sample(range(len(accepted)), count))
    return [r for i, r in enumerate(accepted) if i in chosen]


def write_output(
    results: Sequence[SampleResult],
    path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Write the accepted samples in the stage-1 CoT format (``univg.data.write_cot_sft``): the
    chosen reasoning and the ground-truth box. In-memory images are saved under ``image_dir``.
    Returns the number written."""
    return write_cot_sft([r.output_sample() for r in results if r.accepted], path, image_dir=image_dir)


def relative_images(sample: GroundingSample, image_root: str | os.PathLike[str] | None) -> GroundingSample:
    """The sample with image paths made relative to ``image_root`` again (readers join them to it).

    Keeps the built file's paths as the input wrote them (so the same ``image_root`` serves
    training) and keeps cache keys valid when the image folder moves. Paths outside the root and
    in-memory images are left as they are.

    >>> from univg.core.boxes import Box
    >>> s = GroundingSample("a", "t", ["/data/imgs/x.jpg", "/elsewhere/y.jpg"], 0, "q", Box(0, 0, 1, 1))
    >>> relative_images(s, "/data").images
    ['imgs/x.jpg', '/elsewhere/y.jpg']
    """
    if image_root is None:
        return sample
    root = os.path.abspath(image_root)
    images = []
    for ref in sample.images:
        if isinstance(ref, str):
            absolute = os.path.abspath(ref)
            if os.path.commonpath([absolute, root]) == root:
                ref = os.path.relpath(absolute, root)
        images.append(ref)
    return dataclasses.replace(sample, images=images)


__all__ = [
    "BuildConfig",
    "CotBuilder",
    "pick_review",
    "relative_images",
    "write_output",
]
