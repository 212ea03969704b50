"""Sharded data parallelism (FSDP2) for univg's modules, on CPU (gloo) and GPU (NCCL) alike.

Lightning's ``ModelParallelStrategy`` sets ``module._device_mesh`` and calls ``configure_model``;
:meth:`univg.modules.base.GroundingModule.configure_model` builds the backbone and then calls
:func:`shard_module`, which applies FSDP2 ``fully_shard`` to each vision block, each decoder layer
and the root (``univg.model.backbone.fsdp_units``), to the policy and to the GRPO reference alike.
:class:`FSDP2Strategy` is ``ModelParallelStrategy`` with the FSDP knobs a YAML can set (mixed
precision, resharding, CPU offload) and pure data parallelism by default::

    trainer:
      strategy:
        class_path: univg.distributed.FSDP2Strategy
        init_args: {param_dtype: bfloat16, reduce_dtype: float32}

Activation checkpointing is the backbone's own switch (``backbone.gradient_checkpointing``, non-reentrant):
it recomputes each decoder layer inside that layer's FSDP unit, so the all-gather is redone on
recompute and nothing else changes.

Generation under FSDP: every forward of a sharded unit all-gathers its parameters, so all ranks
must run the same number of forwards even when their completions end at different lengths.
:func:`shard_model` marks the Hugging Face model as FSDP-managed, and ``transformers``' ``generate``
then runs with ``synced_gpus`` (ranks that are done keep stepping until every rank is done);
``generate`` is also registered as an FSDP forward method, so the root's parameters (embedding,
head, final norm) are gathered for the whole call. Trap: a rank whose batch has no image skips the
vision tower while another rank runs it, and the all-gathers no longer pair up; univg's grounding
batches always carry images.

Each rank holds only its shard from the start: the model is built on the meta device, sharded,
and each rank fills its rows (:mod:`univg.distributed.sharded_build`). One exception by default: the root
unit's frozen parameters (with LoRA the tied embedding and head, the final norm, the vision patch
embedding and merger; with full fine-tuning only the vision ones) are held whole on every rank in
the compute dtype (``replicate_frozen_root``). FSDP2 keeps the root gathered for the whole step
and holds it twice while gathering, so sharding them cost more at the peak than replicating them
(2B with LoRA on 2 CPU ranks: 6.7 GB instead of 7.8 GB per rank, benchmarks/RESULTS.md). A
random-init preset gets the same weights as an unsharded build with the same seed (``seed_everything``, which every univg config
sets); a checkpoint is read row-sliced from its files.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from univg.model.backbone import DTYPES, fsdp_units
from univg.model.checkpoint_io import replace_folder

#: Attribute ``transformers.distributed.fsdp.is_fsdp_managed_module`` reads (generate -> synced_gpus).
HF_FSDP_FLAG = "_is_fsdp_managed_module"


@dataclass(frozen=True)
class FSDPSettings:
    """How :func:`shard_model` calls ``fully_shard``.

    Args:
        param_dtype: dtype parameters are all-gathered and computed in ("bfloat16"); None keeps
            the stored dtype (no mixed precision).
        reduce_dtype: dtype gradients are reduce-scattered in ("float32" keeps bf16 training exact
            in the reduction); None follows ``param_dtype``.
        reshard_after_forward: free gathered parameters after each unit's forward (ZeRO-3); False
            keeps them until backward (ZeRO-2 like: more memory, fewer all-gathers).
        cpu_offload: keep sharded parameters, gradients and optimiser state in host memory.
        meta_init: build the model on the meta device and materialise only this rank's shard
            (:mod:`univg.distributed.sharded_build`); False builds the full model on every rank, then shards it
            (host memory per rank: the whole model).
        replicate_frozen_root: keep the root unit's frozen parameters (with LoRA: the embedding,
            tied head, final norm, patch embedding and merger) whole on every rank instead of
            sharding them (:func:`frozen_root_params`), stored in ``param_dtype`` when one is set
            (they never update, so they need no fp32 master copy; a checkpoint holds them so).
            FSDP2 keeps the root gathered for the whole step, and gathering holds it twice for a
            moment (the all-gather buffer and the copy out of it); a replicated frozen parameter
            needs neither, and has no gradient or optimiser state to shard. False shards them too.
    """

    param_dtype: str | None = None
    reduce_dtype: str | None = None
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    meta_init: bool = True
    replicate_frozen_root: bool = True

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ValueError(f"FSDP {name} must be null or one of {sorted(DTYPES)}, got {value!r}")

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype FSDP gathers and computes parameters in (None: their stored dtype); the
        replicated frozen root is stored in it."""
        return DTYPES[self.param_dtype] if self.param_dtype else None

    def fully_shard_kwargs(self) -> dict[str, Any]:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        kwargs: dict[str, Any] = {"reshard_after_forward": self.reshard_after_forward}
        if self.param_dtype is not None or self.reduce_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=self.compute_dtype,
                reduce_dtype=DTYPES[self.reduce_dtype] if self.reduce_dtype else None,
            )
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        return kwargs


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` for pure sharded data parallelism with univg's FSDP settings.

    ``data_parallel_size="auto"`` shards over every process (all GPUs of all nodes), unlike the
    parent's default (one shard group per node); tensor parallelism is not implemented (1).
    ``save_distributed_checkpoint`` True writes one shard per rank (a ``.ckpt`` folder); resume
    with ``ckpt_path`` pointing at that folder.
    """

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        meta_init: bool = True,
        replicate_frozen_root: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        if tensor_parallel_size != 1:
            raise ValueError(
                f"univg implements FSDP only: tensor_parallel_size must be 1, got {tensor_parallel_size}"
            )
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.fsdp = FSDPSettings(
            param_dtype, reduce_dtype, reshard_after_forward, cpu_offload, meta_init, replicate_frozen_root
        )

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """A sharded checkpoint is written into ``.<name>.partial`` beside its destination and put in
        place once every rank has written its shard (:func:`univg.model.checkpoint_io.replace_folder`), so
        a kill during the save leaves the previous folder whole."""
        if not self._save_distributed_checkpoint or storage_options is not None:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(f".{path.name}.partial")
        if self.global_rank == 0 and (partial.exists() or partial.is_symlink()):
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        self.barrier("univg_checkpoint_partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("univg_checkpoint_written")
        if self.global_rank == 0:
            replace_folder(partial, path)
        self.barrier("univg_checkpoint_in_place")

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def settings_of(module: nn.Module) -> FSDPSettings:
    """The FSDP settings of the module's trainer strategy (defaults for a plain ModelParallelStrategy)."""
    trainer = getattr(module, "_trainer", None)
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    return getattr(strategy, "fsdp", None) or FSDPSettings()


def data_parallel_mesh(mesh: Any) -> Any:
    """The data-parallel sub-mesh of Lightning's 2-D (data, tensor) mesh."""
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
        raise ValueError(
            f"univg implements FSDP only: tensor_parallel_size must be 1, got {mesh['tensor_parallel'].size()}"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, mesh: Any, settings: FSDPSettings | None = None) -> nn.Module:
    """``fully_shard`` each vision block, each decoder layer, then the root (in place; idempotent).

    The root unit holds what is left: embedding (tied with the head in the 2B preset), final norm,
    head, patch embedding and merger; with ``replicate_frozen_root`` its frozen parameters stay
    whole on every rank (FSDP ignores them). Returns ``model`` (now also an ``FSDPModule``).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if is_sharded(model):
        return model
    settings = settings or FSDPSettings()
    kwargs = settings.fully_shard_kwargs()
    ignored = set(frozen_root_params(model).values()) if settings.replicate_frozen_root else set()
    if settings.compute_dtype is not None:  # stored as FSDP would compute them: frozen, no fp32 master
        for p in ignored:
            p.data = p.data.to(settings.compute_dtype)
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, ignored_params=ignored or None, **kwargs)
    # generate(): root parameters gathered for the call, and synced_gpus across ranks (module docstring)
    register_fsdp_forward_method(model, "generate")
    setattr(model, HF_FSDP_FLAG, True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    setattr(base, HF_FSDP_FLAG, True)
    return model


def frozen_root_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters outside every FSDP unit (:func:`univg.model.backbone.fsdp_units`) that do not train.

    With LoRA everything outside the units is frozen (the tied head appears once, as the
    embedding); full fine-tuning with a frozen vision tower leaves its patch embedding and merger:

    >>> from univg.model.backbone import BackboneSpec
    >>> lora = frozen_root_params(BackboneSpec(lora={}).build(device="meta"))
    >>> [n.split(".", 3)[-1] for n in lora if "visual" not in n]
    ['language_model.embed_tokens.weight', 'language_model.norm.weight']
    >>> [n.split(".")[2] for n in frozen_root_params(BackboneSpec().build(device="meta"))]
    ['patch_embed', 'merger', 'merger', 'merger', 'merger', 'merger', 'merger']
    """
    in_units = {id(p) for unit in fsdp_units(model) for p in unit.parameters()}
    out: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():  # a tied parameter once, under its first name
        if id(p) not in in_units and not p.requires_grad:
            out[name] = p
    return out


def shard_module(module: nn.Module) -> None:
    """Build (if needed) and shard a univg LightningModule's policy and GRPO reference over its mesh.

    Called from ``configure_model`` when Lightning's ``ModelParallelStrategy`` has set
    ``module._device_mesh``. With ``meta_init`` (the default) the policy is built on the meta device
    and each rank materialises only its shard (:func:`build_sharded_model`), ``init_checkpoint``
    included; a module whose ``needs_reference`` is true (GRPO with ``beta > 0`` and no LoRA) gets
    its frozen reference from :func:`make_reference`, its shards copied from the policy's. Without
    ``meta_init`` (or when the model was built before) the full model is built, loaded and
    deep-copied on every rank, then sharded.
    """
    mesh = data_parallel_mesh(module._device_mesh)
    settings = settings_of(module)
    spec = module.backbone
    init_checkpoint = getattr(module, "init_checkpoint", None)
    if module.model is None and settings.meta_init:
        module.model = build_sharded_model(spec, mesh, settings, init_checkpoint)
    elif module.model is None:
        from univg.model.checkpoints import load_model_weights

        module.model = spec.build()
        if init_checkpoint is not None:
            load_model_weights(module.model, init_checkpoint)
    if getattr(module, "needs_reference", False):  # the GRPO module's own rule (beta > 0, no LoRA)
        module.ref_model = make_reference(module.model, spec, mesh, settings)
    shard_model(module.model, mesh, settings)
    if getattr(module, "ref_model", None) is not None:
        shard_model(module.ref_model, mesh, settings)


def make_reference(
    policy: nn.Module, spec: Any = None, mesh: Any = None, settings: FSDPSettings | None = None
) -> nn.Module:
    """GRPO's reference policy: a frozen copy of the policy as it is now (eval mode, no gradient).

    One rule for every run: single-process and unsharded runs get a deep copy; a policy already
    sharded on ``mesh`` gets a reference built on meta and sharded alike, each rank copying its own
    shard (:func:`build_sharded_reference`, ``spec`` the policy's backbone). A reference built from
    an unsharded policy under FSDP is sharded with it by :func:`shard_module`.
    """
    if mesh is not None and is_sharded(policy):
        return build_sharded_reference(spec, policy, mesh, settings)
    ref = copy.deepcopy(policy).eval()
    ref.requires_grad_(False)
    return ref


def build_sharded_model(
    spec: Any, mesh: Any, settings: FSDPSettings | None = None, init_checkpoint: str | None = None
) -> nn.Module:
    """The backbone built on meta, sharded, then only this rank's shard materialised and filled.

    Random presets get the same weights as an unsharded build with the same seed; a
    ``spec.checkpoint`` is read from its safetensors files and ``init_checkpoint`` (a univg .ckpt)
    on top, each rank reading only its rows (:mod:`univg.distributed.sharded_build`).
    """
    from univg.distributed.shard_sources import safetensors_source, univg_checkpoint_source
    from univg.distributed.sharded_build import build_on_meta, materialise
    from univg.model.tokenizer import resolve_checkpoint

    rank, world = mesh.get_local_rank(), mesh.size()
    settings = settings or FSDPSettings()
    whole = frozen_root_params if settings.replicate_frozen_root else None  # what FSDP will not shard
    model, rows = build_on_meta(spec, rank, world, keep_whole=whole, whole_dtype=settings.compute_dtype)
    shard_model(model, mesh, settings)
    sources = []
    if spec.checkpoint is not None:
        sources.append(safetensors_source(resolve_checkpoint(spec.checkpoint), rank, world))
    if init_checkpoint is not None:
        sources.append(univg_checkpoint_source(init_checkpoint, rank, world))
    materialise(model, rows, *sources, mesh=mesh)
    return model


def build_sharded_reference(
    spec: Any, policy: nn.Module, mesh: Any, settings: FSDPSettings | None = None
) -> nn.Module:
    """A frozen copy of a sharded policy, built on meta and sharded alike: each rank copies its shard."""
    from univg.distributed.shard_sources import shards_of
    from univg.distributed.sharded_build import build_on_meta, materialise

    ref, _ = build_on_meta(spec, record=False)  # draws no random numbers: every weight is copied
    shard_model(ref, mesh, settings)
    materialise(ref, {}, shards_of(policy, mesh.get_local_rank(), mesh.size()), mesh=mesh)
    ref.eval().requires_grad_(False)
    return ref


def local_numel(tensor: torch.Tensor) -> int:
    """Elements this rank stores: a DTensor's local shard, or the whole plain tensor."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return int(local.numel())


def shard_report(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Parameter name -> (elements on this rank, elements in the full parameter)."""
    return {name: (local_numel(p), int(p.numel())) for name, p in model.named_parameters()}


def rank_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimiser state (sharded storage only)."""

    def nbytes(t: torch.Tensor) -> int:
        local = t.to_local() if hasattr(t, "to_local") else t
        return int(local.numel() * local.element_size())

    seen: set[int] = set()
    out = {"parameters": 0, "gradients": 0, "optimizer": 0}
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        out["parameters"] += nbytes(p)
        if p.grad is not None:
            out["gradients"] += nbytes(p.grad)
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.dim() > 0:
                    out["optimizer"] += nbytes(v)
    return out


__all__ = [
    "FSDP2Strategy",
    "FSDPSettings",
    "data_parallel_mesh",
    "is_sharded",
    "local_numel",
    "rank_state_bytes",
    "settings_of",
    "shard_model",
    "shard_module",
    "build_sharded_model",
    "build_sharded_reference",
    "shard_report",
    "frozen_root_params",
    "make_reference",
]
