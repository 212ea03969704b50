"""A rollout engine that returns scripted completions instead of sampling (shared by the GRPO tests).

Prompt ``b`` of a call gets ``texts_per_prompt[b]`` (its G texts). ``rows_for`` picks which scripted
prompts a call is (default: the first ``B``); ``cycle=True`` walks on through the list from call to
call instead, wrapping around, so a fit over many batches sees every scripted group in turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from univg.engines import RolloutEngine
from univg.rl.rollout import Rollout, completion_mask

IM_END, PAD = 151645, 151643


class Scripted(RolloutEngine):
    def __init__(
        self, texts_per_prompt: Sequence[Sequence[str]], tokenizer: Any, cycle: bool = False
    ) -> None:
        self.texts_per_prompt, self.tok, self.cycle = [list(g) for g in texts_per_prompt], tokenizer, cycle
        self.calls = 0
        self.rows_for: Callable[[dict], Sequence[int]] = lambda inputs: range(inputs["input_ids"].shape[0])

    def _rows(self, inputs: dict) -> list[int]:
        if not self.cycle:
            return list(self.rows_for(inputs))
        b = inputs["input_ids"].shape[0]
        start, n = self.calls * b, len(self.texts_per_prompt)
        return [(start + i) % n for i in range(b)]

    def generate(self, model, inputs, tokenizer, sampling, *, record_logprobs=False):
        texts = [t for b in self._rows(inputs) for t in self.texts_per_prompt[b]]
        self.calls += 1
        rows = [self.tok(t, add_special_tokens=False)["input_ids"] + [IM_END] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        truncated = torch.zeros(len(texts), dtype=torch.bool)
        return Rollout(dict(inputs), ids, completion_mask(ids), texts, truncated, sampling.group_size)


class ScriptedCalls(RolloutEngine):
    """One scripted batch of completions per call, in order."""

    def __init__(self, calls: Sequence[Sequence[Sequence[str]]], tokenizer: Any) -> None:
        self.calls, self.tok = list(calls), tokenizer

    def generate(self, model, inputs, tokenizer, sampling, *, record_logprobs=False):
        return Scripted(self.calls.pop(0), self.tok).generate(model, inputs, tokenizer, sampling)
