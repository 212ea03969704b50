"""Build a backbone for FSDP2 so that each rank only ever holds its own shard of the weights.

The model is constructed with its parameters on the ``meta`` device (buffers, e.g. rotary
frequencies, stay real: they are small and computed, not drawn), ``fully_shard`` is applied, the
shards are allocated with ``to_empty`` and then filled with this rank's rows (FSDP2 shards every
parameter along dim 0, ``torch.chunk`` style). The recorded random init lives here; the readers
of checkpoints and of another model's shards are :mod:`univg.distributed.shard_sources`:

- **random init** (a preset without a checkpoint): every in-place write that construction and
  transformers' ``post_init`` make to a parameter (``uniform_``, ``normal_``, ``fill_``, ...) is
  replayed by :class:`RecordShards` on a full-size scratch tensor in host memory, one parameter at a
  time, and only this rank's rows are kept. The random draws are the same, in the same order, as an
  ordinary build, so the sharded model equals what one process builds with the same seed
  (``tests/test_distributed.py`` checks it bit for bit) while the peak extra memory is one full
  parameter (the 151,936-row embedding: 0.93 GB for 2B in fp32), not the model.
- **a Hugging Face checkpoint** (``backbone.checkpoint``) or **a univg ``.ckpt``**
  (``init_checkpoint``): each rank reads only its rows
  (:func:`~univg.distributed.shard_sources.safetensors_source`, :func:`~univg.distributed.shard_sources.univg_checkpoint_source`).

The frozen GRPO reference for full fine-tuning is built the same way, on meta, and its shards are
copied from the policy's shards (:func:`~univg.distributed.shard_sources.shards_of`; never a full copy of the model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from univg.distributed.shard_sources import Source, rank_rows

# In-place ops that overwrite every element: replaying them needs no earlier value of the tensor.
_OVERWRITES = {
    "uniform_",
    "normal_",
    "fill_",
    "zero_",
    "copy_",
    "bernoulli_",
    "random_",
    "exponential_",
    "geometric_",
    "log_normal_",
    "cauchy_",
}


@contextmanager
def meta_parameters(
    on_register: Callable[[nn.Parameter, torch.Tensor], None] | None = None,
    on_replace: Callable[[nn.Parameter], None] | None = None,
) -> Iterator[list[nn.Parameter]]:
    """Modules constructed inside get their parameters on ``meta`` (buffers stay where they are made).

    Yields the list of parameters registered, in order (what :class:`RecordShards` tracks).
    ``on_register(meta_param, value)`` sees the host tensor a module created its parameter from
    (e.g. ``torch.ones`` of a norm, or the ``torch.empty`` of ``nn.Linear`` that is written next).
    ``on_replace(old)`` sees a parameter that a module swaps for another one (weight tying: the
    head's own weight, drawn and then replaced by the embedding's).
    """
    original = nn.Module.register_parameter
    made: list[nn.Parameter] = []

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            value = param.detach()
            param = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
            if on_register is not None:
                on_register(param, value)
        if param is not None:
            made.append(param)
        old = self._parameters.get(name) if "_parameters" in self.__dict__ else None
        if old is not None and old is not param and on_replace is not None:
            on_replace(old)
        original(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield made
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


class RecordShards(TorchDispatchMode):
    """Replays in-place writes to meta parameters on host scratch tensors; keeps this rank's rows.

    Use inside :func:`meta_parameters` (which supplies ``tracked``). Writes through a view (e.g.
    ``weight[padding_idx].zero_()``) are replayed on the same view of the scratch tensor. A
    parameter is kept in full only while it is the one being written; when another parameter is
    written its rows are cut and the full tensor freed. An op that would need the full value of a
    parameter already cut (a read-modify-write after another parameter was written) raises instead
    of silently producing different numbers.
    """

    def __init__(
        self,
        tracked: list[nn.Parameter],
        rank: int,
        world: int,
        whole: frozenset[int] = frozenset(),
        whole_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.tracked = tracked
        self.rank, self.world = rank, world
        self.whole = whole  # positions in ``tracked`` (creation order) kept whole, not cut to rows
        self.whole_dtype = whole_dtype  # and the dtype they are kept in (None: the parameter's)
        self.rows: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}  # id(param) -> (param, rows)
        self._current: tuple[nn.Parameter, torch.Tensor] | None = None  # (param, full scratch)
        self._views: list[tuple[torch.Tensor, nn.Parameter, list[tuple[Any, tuple, dict]]]] = []

    def start(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """A parameter was just created with ``value``: it becomes the one being written."""
        self._cut()
        self._current = (p, value)

    def drop(self, p: nn.Parameter) -> None:
        """``p`` left the model (replaced by a tied parameter): its rows are not needed."""
        if self._current is not None and self._current[0] is p:
            self._current = None
        self.rows.pop(id(p), None)

    def _param_of(self, t: Any) -> tuple[nn.Parameter, list[tuple[Any, tuple, dict]]] | None:
        if not isinstance(t, torch.Tensor) or not t.is_meta:
            return None
        for p in self.tracked:
            if t is p:
                return p, []
        for view, p, chain in self._views:
            if t is view:
                return p, chain
        return None

    def _cut(self) -> None:
        if self._current is not None:
            p, full = self._current
            if self.whole and next(i for i, t in enumerate(self.tracked) if t is p) in self.whole:
                self.rows[id(p)] = (p, full.to(self.whole_dtype or p.dtype))
            else:
                self.rows[id(p)] = (p, rank_rows(full, self.rank, self.world).to(p.dtype, copy=True))
            self._current = None

    def _scratch(self, p: nn.Parameter, op: str) -> torch.Tensor:
        if self._current is not None and self._current[0] is p:
            full = self._current[1]
            if full.dtype != p.dtype:  # the parameter was cast (``param.data = param.to(dtype)``)
                full = full.to(p.dtype)
                self._current = (p, full)
            return full
        self._cut()
        if id(p) in self.rows and op in _OVERWRITES:
            del self.rows[id(p)]  # rewritten whole: its earlier rows go before the scratch comes
        elif id(p) in self.rows:
            raise NotImplementedError(
                f"sharded build: in-place {op} on a {tuple(p.shape)} parameter after its full value was "
                "dropped; build this backbone without meta init (FSDP2Strategy(meta_init=False))"
            )
        full = torch.empty(p.shape, dtype=p.dtype)
        self._current = (p, full)
        return full

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the meta op itself: shapes and aliasing stay right
        found = self._param_of(args[0]) if args else None
        if found is None:
            return out
        p, chain = found
        name = func.__name__.split(".")[0]
        schema = func._schema
        if schema.is_mutable and name.endswith("_"):
            for a in list(args[1:]) + list(kwargs.values()):
                if self._param_of(a) is not None:
                    raise NotImplementedError(f"sharded build: {name} reads another meta parameter")
            target = self._scratch(p, name if not chain else "view")
            for view_func, view_args, view_kwargs in chain:
                target = view_func(target, *view_args, **view_kwargs)
            func(target, *args[1:], **kwargs)
        elif isinstance(out, torch.Tensor) and out.is_meta and _is_view(func):
            self._views.append((out, p, chain + [(func, args[1:], kwargs)]))
        return out

    def finish(self) -> dict[int, tuple[nn.Parameter, torch.Tensor]]:
        self._cut()
        self._views.clear()
        return self.rows


def _is_view(func: Any) -> bool:
    returns = func._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write


#: glibc ``mallopt`` parameter numbers (malloc.h): M_MMAP_THRESHOLD, M_MMAP_MAX.
_M_MMAP_THRESHOLD, _M_MMAP_MAX = -3, -4


def return_freed_memory_to_os(threshold: int = 1 << 20) -> bool:
    """Serve host allocations of ``threshold`` bytes or more with their own ``mmap`` (glibc only).

    The sharded build allocates and frees one full-size scratch tensor per parameter while it keeps
    this rank's rows. With glibc's defaults (an mmap threshold that rises to 32 MB after the first
    large free) or with ``MALLOC_MMAP_MAX_=0`` (the Makefile's setting for fast single-process
    steps), the freed scratch tensors fragment the heap between the kept rows: the 2B build held
    7.6 GB resident for 4.4 GB of rows (measured; 4.85 GB with this setting). A fixed threshold with
    mmap allowed returns every freed tensor of 1 MiB or more to the OS; it stays set for the
    process (the training step's gathered units are freed the same way). Returns False where
    ``mallopt`` is missing.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        allowed = libc.mallopt(_M_MMAP_MAX, 65536)  # glibc's default count, undoing MALLOC_MMAP_MAX_=0
        return bool(allowed and libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


#: Parameter bytes on the host from which a single-process run also gets the fixed mmap threshold of
#: :func:`return_freed_memory_to_os`: the 2B preset's GRPO step on CPU peaked at 12.3 GB with glibc's
#: default and at 10.4 GB with it, in the same time (``benchmarks/RESULTS.md``). Small models keep
#: the process's setting (the Makefile's ``MALLOC_MMAP_MAX_=0`` keeps their large per-step logits in
#: the heap instead of page-faulting them afresh each step).
LARGE_HOST_MODEL_BYTES = 10**9


def return_freed_memory_if_large(model: nn.Module) -> bool:
    """:func:`return_freed_memory_to_os` when ``model`` holds at least :data:`LARGE_HOST_MODEL_BYTES`
    of parameters in host memory (``parameters()`` yields a tied tensor once); returns whether it
    was set."""
    host = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cpu")
    return host >= LARGE_HOST_MODEL_BYTES and return_freed_memory_to_os()


def build_on_meta(
    spec: Any,
    rank: int = 0,
    world: int = 1,
    record: bool = True,
    keep_whole: Callable[[nn.Module], Any] | None = None,
    whole_dtype: torch.dtype | None = None,
) -> tuple[nn.Module, dict]:
    """``spec.build()`` with meta parameters; returns (model, name -> this rank's rows).

    With ``record`` the random initialisation is replayed (see module docstring); without it no
    random numbers are drawn (a checkpoint will fill every weight). LoRA adapters added by
    ``spec.prepare`` are recorded either way: their init draws from the same generator right after
    the backbone, as in an ordinary build. ``keep_whole(model)`` names parameters whose recorded
    value is kept whole rather than cut to this rank's rows (the ones FSDP will not shard); a
    first build without recording finds where in the creation order they are; ``whole_dtype``
    is the dtype they are kept in (None: their own).
    """
    if record and world > 1:
        return_freed_memory_to_os()
    whole: frozenset[int] = frozenset()
    if keep_whole is not None and record and spec.checkpoint is None:
        with torch.random.fork_rng(devices=[]):  # the adapters' init draws: leave the generator as it was
            probe, order = _build_meta(spec, RecordShards([], rank, world), record=False)
        ids = {id(p) for n, p in probe.named_parameters() if n in set(keep_whole(probe))}
        whole = frozenset(i for i, p in enumerate(order.tracked) if id(p) in ids)
    model, made = _build_meta(spec, RecordShards([], rank, world, whole, whole_dtype), record)
    return model, _recorded_rows(model, made, spec)


def _build_meta(spec: Any, recorder: RecordShards, record: bool) -> tuple[nn.Module, RecordShards]:
    """The meta build itself; returns the model and the recorder (its ``tracked``: creation order)."""
    from univg.model.backbone import build_from_config, checkpoint_config

    if spec.quantization is not None:
        raise ValueError("FSDP2 with meta init does not support quantised backbones (bitsandbytes)")
    with meta_parameters(
        recorder.start if record and spec.checkpoint is None else None, recorder.drop
    ) as made:
        recorder.tracked = made
        if spec.checkpoint is None and record:
            with recorder:
                model = build_from_config(spec.config(), spec.torch_dtype, None, spec.attn_implementation)
        else:
            config = spec.config() if spec.checkpoint is None else checkpoint_config(spec.checkpoint)
            model = build_from_config(config, spec.torch_dtype, None, spec.attn_implementation)
    # adapters are made after the backbone, as in an ordinary build: recorded whatever the source
    with meta_parameters(recorder.start, recorder.drop) as made:
        made.extend(recorder.tracked)
        recorder.tracked = made
        with recorder:
            model = spec.prepare(model)
    return model, recorder


def _recorded_rows(model: nn.Module, recorder: RecordShards, spec: Any) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    rows = {names[k]: t for k, (_, t) in recorder.finish().items() if k in names}
    if spec.lora is not None and spec.torch_dtype != torch.float32:
        # an ordinary build casts new adapters to the backbone's dtype and back up to fp32 (peft's
        # autocast_adapter_dtype); peft skips that cast for meta adapters, so round them here
        for name, t in rows.items():
            if ".lora_" in name:
                rows[name] = t.to(spec.torch_dtype).to(t.dtype)
    return rows


def materialise(model: nn.Module, rows: dict[str, torch.Tensor], *sources: Source, mesh: Any = None) -> None:
    """Give a sharded meta model real shards: the recorded ``rows`` (``rows`` is emptied), then sources.

    A source is called with (parameter name, local shard) and returns True when it wrote the shard.
    Every parameter must be written by something: a missing one raises naming it. Recorded rows
    become the shards themselves (``load_state_dict(assign=True)``, one parameter at a time), so
    the rank never holds its shard twice. A parameter FSDP does not shard (replicated, see
    ``FSDPSettings.replicate_frozen_root``) takes its recorded whole value, or else is filled as
    this rank's rows like the rest (checkpoint readers) and gathered whole over ``mesh``.
    """
    from torch.distributed.tensor import DTensor

    shared: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for pname, p in module._parameters.items():
            if p is not None:
                shared.setdefault(id(p), []).append((module, pname))
    missing = []
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            if not p.is_meta:
                continue
            local = rows.pop(name, None)
            # not sharded by FSDP: sources fill this rank's rows like the rest, gathered below
            replicated = not isinstance(p, DTensor) and mesh is not None and mesh.size() > 1
            whole = None  # a recorded whole value (random init of a replicated parameter)
            if isinstance(p, DTensor):
                shape = p.to_local().shape
            elif replicated:
                rank, world = mesh.get_local_rank(), mesh.size()
                shape = rank_rows(torch.empty(p.shape, device="meta"), rank, world).shape
                if local is not None and local.shape == p.shape:
                    whole, local = local, rank_rows(local, rank, world)  # a view: sources write into it
            else:
                shape = p.shape
            recorded = local is not None
            if local is None:
                local = torch.empty(shape, dtype=p.dtype)
            elif local.shape != shape:
                raise RuntimeError(f"sharded build: {name} rows {tuple(local.shape)} != shard {tuple(shape)}")
            written = False
            for source in sources:
                written = source(name, local) or written
            if not (recorded or written):
                missing.append(name)
            if isinstance(p, DTensor):
                value = DTensor.from_local(
                    local.to(p.dtype),
                    p.device_mesh,
                    p.placements,
                    shape=p.shape,
                    stride=p.stride(),
                    run_check=False,
                )
            elif replicated and whole is not None and not written:
                value = whole.to(p.dtype)
            elif replicated:
                value = _gather_rows(local.to(p.dtype), mesh, p.shape)
            else:
                value = local.to(p.dtype)
            new = nn.Parameter(value, requires_grad=p.requires_grad)
            for module, pname in shared[id(p)]:  # tied weights stay one parameter
                module._parameters[pname] = new
    _reset_fsdp_params(model)
    if missing:
        raise RuntimeError(f"sharded build: parameters left uninitialised: {missing[:5]} ({len(missing)})")


def _gather_rows(local: torch.Tensor, mesh: Any, shape: torch.Size) -> torch.Tensor:
    """The whole tensor from every rank's dim-0 chunk (``torch.chunk`` layout), on this host."""
    from torch.distributed.tensor import DTensor, Shard

    stride = torch.empty(shape, device="meta").stride()
    whole = DTensor.from_local(local, mesh, [Shard(0)], shape=shape, stride=stride, run_check=False)
    return whole.full_tensor().to(local.device)


def _reset_fsdp_params(model: nn.Module) -> None:
    """Let FSDP2 pick up the parameters just assigned (what ``FSDPModule._apply`` does after ``to_empty``)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            for group in _param_groups(module._get_fsdp_state()):
                for fsdp_param in group.fsdp_params:
                    fsdp_param.reset_sharded_param()


def _param_groups(state: Any) -> list[Any]:
    """An FSDP2 state's parameter groups: a list in torch 2.13, one optional group in torch 2.11."""
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is not None:
        return list(groups)
    group = getattr(state, "_fsdp_param_group", None)
    return [group] if group is not None else []


__all__ = [
    "RecordShards",
    "build_on_meta",
    "materialise",
    "meta_parameters",
    "return_freed_memory_if_large",
    "return_freed_memory_to_os",
]
