"""GRPO's reference policy, the KL term's anchor: the initial policy, as a frozen copy made when
the model is configured (kept in the checkpoint, so a resumed run has the same one), or, with
LoRA, the base model with the adapters switched off (no copy)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from univg.distributed import make_reference


class ReferencePolicy:
    """The reference of a GRPO module (``beta`` > 0): its ``model``, ``backbone.lora``, ``beta`` and
    ``ref_model`` (None until made)."""

    beta: float
    model: torch.nn.Module
    ref_model: torch.nn.Module | None

    @property
    def uses_lora(self) -> bool:
        return self.backbone.lora is not None

    @property
    def needs_reference(self) -> bool:
        """Whether a frozen copy of the policy must still be made: the KL term is on (beta > 0) and
        there is no LoRA (whose reference is the base model with the adapters off, no copy)."""
        return self.beta > 0 and not self.uses_lora and self.ref_model is None

    def configure_model(self) -> None:
        super().configure_model()  # under FSDP this also makes (and shards) the reference
        # The reference is the initial policy, kept in the checkpoint so resume is exact.
        if self.needs_reference:
            self.ref_model = make_reference(self.model)

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference policy as a context: adapters disabled (LoRA) or the frozen copy."""
        if self.uses_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.ref_model

    def train(self, mode: bool = True) -> ReferencePolicy:
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()  # never in train mode (dropout), never updated
        return self
