"""Rollout engines that sample the policy itself, in the training process (CPU or GPU)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from univg.engines.base import RolloutEngine
from univg.rl.rollout import Decoder, Rollout, SamplingSpec, generate
from univg.rl.rollout.static_decode import CompileMode, StaticDecoder


class _Local(RolloutEngine):
    decoder: Decoder = "auto"
    static_decoder: StaticDecoder | None = None

    def generate(
        self,
        model: nn.Module,
        inputs: Mapping[str, torch.Tensor],
        tokenizer: Any,
        sampling: SamplingSpec,
        *,
        record_logprobs: bool = False,
    ) -> Rollout:
        return generate(
            model,
            inputs,
            tokenizer,
            **sampling.generate_kwargs(),
            engine=self.decoder,
            record_logprobs=record_logprobs,
            static_decoder=self.static_decoder,
        )


class SharedPrefill(_Local):
    """Our decoder (the default): each prompt's images are encoded and the prompt prefilled once,
    its KV cache repeated G times and the G continuations decoded by our own loop, finished rows
    dropped (:func:`univg.rl.rollout.generate`, ``engine="auto"``). Under FSDP across processes it
    runs transformers' ``generate`` instead: every rank must take part in every sharded forward,
    which transformers' loop ensures (``synced_gpus``) and ours, which exits early, does not.

    The decode loop is the eager one by default. ``static_cache: true`` decodes with a preallocated
    KV cache and fixed shapes, finished rows masked rather than dropped and the stop test run every
    ``stop_check_every`` tokens (:mod:`univg.rl.rollout.static_decode`; the same completions,
    float rounding aside);
    ``compile: true`` also runs each decode step through ``torch.compile`` (CUDA: CUDA graphs,
    ``compile_mode: reduce-overhead``), which needs the static cache and implies it. The cache length
    is rounded up to a multiple of ``cache_len_multiple`` so that prompts of nearby lengths share one
    compiled (captured) step.

    >>> SharedPrefill(compile=True).static_decoder
    StaticDecoder(compile=True, stop_check_every=8, cache_len_multiple=64, compile_mode=None)
    >>> SharedPrefill().static_decoder is None
    True
    """

    decoder: Decoder = "auto"

    def __init__(
        self,
        static_cache: bool = False,
        compile: bool = False,
        stop_check_every: int = 8,
        cache_len_multiple: int = 64,
        compile_mode: CompileMode | None = None,
    ) -> None:
        self.static_cache = static_cache or compile
        self.compile = compile
        # validated now, whichever loop runs
        decoder = StaticDecoder(compile, stop_check_every, cache_len_multiple, compile_mode)
        self.static_decoder = decoder if self.static_cache else None


class HFGenerate(_Local):
    """transformers' ``generate`` with ``num_return_sequences = G`` (each prompt's images and
    prefill repeated G times), every decoding setting stated explicitly so nothing is inherited from
    a checkpoint's ``generation_config.json``: the plain path, for comparison."""

    decoder: Decoder = "hf"
