"""Rollout engines that sample the policy itself, in the training process (CPU or GPU)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from univg.engines.base import RolloutEngine
from univg.rl.rollout import Decoder, Rollout, SamplingSpec, generate


class _Local(RolloutEngine):
    decoder: Decoder = "auto"

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
        )


class SharedPrefill(_Local):
    """Our decoder (the default): each prompt's images are encoded and the prompt prefilled once,
    its KV cache repeated G times and the G continuations decoded by our own loop, finished rows
    dropped (:func:`univg.rl.rollout.generate`, ``engine="auto"``). Under FSDP across processes it
    runs transformers' ``generate`` instead: every rank must take part in every sharded forward,
    which transformers' loop ensures (``synced_gpus``) and ours, which exits early, does not.
    """

    decoder: Decoder = "auto"


class HFGenerate(_Local):
    """transformers' ``generate`` with ``num_return_sequences = G`` (each prompt's images and
    prefill repeated G times), every decoding setting stated explicitly so nothing is inherited from
    a checkpoint's ``generation_config.json``: the plain path, for comparison."""

    decoder: Decoder = "hf"
