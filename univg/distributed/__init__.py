"""Sharded data parallelism (FSDP2), on CPU (gloo) and GPU (NCCL) alike.

- :mod:`~univg.distributed.fsdp`: :class:`FSDP2Strategy` (what a YAML names as
  ``trainer.strategy``), :func:`shard_module` (what a module's ``configure_model`` calls) and the
  sharded policy and reference;
- :mod:`~univg.distributed.sharded_build`: each rank builds only its shard (meta device, then its rows);
- :mod:`~univg.distributed.shard_sources`: where those rows come from (a Hugging Face folder, a univg
  checkpoint, another model's shards).
"""

from univg.distributed.fsdp import (
    FSDP2Strategy,
    FSDPSettings,
    build_sharded_model,
    build_sharded_reference,
    data_parallel_mesh,
    frozen_root_params,
    is_sharded,
    local_numel,
    make_reference,
    rank_state_bytes,
    settings_of,
    shard_model,
    shard_module,
    shard_report,
)

__all__ = [
    "FSDP2Strategy",
    "FSDPSettings",
    "build_sharded_model",
    "build_sharded_reference",
    "data_parallel_mesh",
    "frozen_root_params",
    "is_sharded",
    "local_numel",
    "make_reference",
    "rank_state_bytes",
    "settings_of",
    "shard_model",
    "shard_module",
    "shard_report",
]
