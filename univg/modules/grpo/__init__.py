"""Stage 2: GRPO / GRPO-Difficulty (:class:`GRPOModule`) and the parts of its optimiser step."""

from univg.modules.grpo.module import ACCURACY, GRPOModule

__all__ = ["ACCURACY", "GRPOModule"]
