"""Optional rollout engines behind the interface of :func:`univg.rollout.generate`.

The default (and the CPU path) is our own KV-cached decoder in ``univg.rollout``; these engines are
for GPU users and import their heavy dependency (vLLM) only when one is built.
"""

from univg.engines.vllm import VLLMEngine

__all__ = ["VLLMEngine"]
