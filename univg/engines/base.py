"""The rollout-engine interface: how GRPO samples its G completions per prompt.

An engine is a component chosen in YAML by ``class_path`` (``model.init_args.engine``); the module
calls the same three methods whichever it is, and rewards, advantages and the log-prob passes do
not know which engine sampled (every engine returns the same :class:`~univg.rl.rollout.Rollout`
layout). The engines: :class:`~univg.engines.SharedPrefill` (ours, the default),
:class:`~univg.engines.HFGenerate` (transformers' ``generate``) and
:class:`~univg.engines.VLLMEngine` (vLLM, GPU only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from univg.rl.rollout import Rollout, SamplingSpec


class RolloutEngine(ABC):
    """Samples rollouts for GRPO.

    ``holds_weights``: the engine keeps its own copy of the policy (vLLM), which the module pushes
    with :meth:`sync_weights` before the first rollout and after every optimiser step; engines that
    sample the policy itself leave it False and are never synced.
    """

    holds_weights: ClassVar[bool] = False

    def attach(self, backbone: Any) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Called once by the module with its :class:`~univg.model.backbone.BackboneSpec` (an engine that
        loads its own copy of the model takes the checkpoint from it)."""

    @abstractmethod
    def generate(
        self,
        model: nn.Module,
        inputs: Mapping[str, torch.Tensor],
        tokenizer: Any,
        sampling: SamplingSpec,
        *,
        record_logprobs: bool = False,
    ) -> Rollout:
        """``sampling.group_size`` completions for each left-padded prompt of ``inputs``, laid out
        ``[prompt0 x G, prompt1 x G, ...]``. ``record_logprobs``: also keep each sampled token's
        log-prob under the distribution it was drawn from (:attr:`Rollout.sampler_logp`), where the
        engine can; an engine that cannot leaves it None and says so in its docstring."""

    def sync_weights(self, model: nn.Module) -> int:
        """Push the policy's current weights into the engine's copy; the number of tensors pushed."""
        return 0
