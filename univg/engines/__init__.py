"""Rollout engines: how GRPO samples its completions, chosen in YAML by ``class_path``.

``model.init_args.engine`` of :class:`univg.modules.GRPOModule` takes one of

- :class:`SharedPrefill` (the default; CPU and GPU): our KV-cached decoder in :mod:`univg.rl.rollout`;
- :class:`HFGenerate`: transformers' ``generate``;
- :class:`VLLMEngine` (GPU only): vLLM, colocated or as a server, weights pushed after each step.

All implement :class:`RolloutEngine`; a test passes its own (scripted completions) the same way.
vLLM is imported only when a :class:`VLLMEngine` starts.
"""

from univg.engines.base import RolloutEngine
from univg.engines.local import HFGenerate, SharedPrefill
from univg.engines.vllm import VLLMEngine

__all__ = ["HFGenerate", "RolloutEngine", "SharedPrefill", "VLLMEngine"]
