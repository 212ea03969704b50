"""A console that shows progress and results: Lightning's advertisements and two deprecation
warnings raised by libraries' own code (Lightning's, peft's; not actionable by a user) are
filtered out.

:func:`quiet_console` runs when :mod:`univg` is imported, so every entry point (``python -m univg``,
the demo, scripts that build a ``Trainer``) gets it. It only adds filters: nothing of Lightning's
progress, results, or any other warning is hidden.
"""

from __future__ import annotations

import logging
import warnings

#: Lightning logs these through ``rank_zero_info`` on every run without litlogger/litmodels installed.
ADVERTISEMENT_PREFIX = "💡 Tip:"
#: Lightning's rank-zero logger (``lightning.pytorch.utilities.rank_zero``) and its fabric twin.
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# torch >= 2.10 deprecates constructing LeafSpec, which Lightning's own _pytree helper still does at
# every step; it is Lightning's call, reported once per process, and nothing a user can change.
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# transformers 5 deprecates the ``is_gradient_checkpointing`` property; peft's ``PeftModel``
# constructor still reads it, so every LoRA build warned. univg reads the new name itself
# (univg.rl.rollout.logprobs.shared_prefix_allowed); the read left is peft's.
CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTISEMENT_PREFIX)


_FILTER = _DropAdvertisements()


def quiet_console() -> None:
    """Install the filters (idempotent)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for message in (LEAFSPEC_WARNING, CHECKPOINTING_WARNING):
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


__all__ = ["ADVERTISEMENT_PREFIX", "quiet_console"]
