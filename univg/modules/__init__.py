"""LightningModules: stage-1 SFT / CoT-SFT and stage-2 GRPO (pure RL, GRPO-Difficulty)."""

from univg.modules.base import GroundingModule
from univg.modules.grpo import GRPOModule
from univg.modules.sft import SFTModule

__all__ = ["GroundingModule", "SFTModule", "GRPOModule"]
