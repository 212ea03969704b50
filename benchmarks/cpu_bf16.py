"""bf16 matrix products computed in fp32 tiles, for CPUs without native bf16 arithmetic.

PyTorch multiplies bf16 matrices on an x86 CPU with oneDNN only when the CPU has AVX-512 (or AMX);
otherwise it falls back to a portable loop whose speed depends on the operands' layout. On an
AVX2-only CPU we measured 9.5 GFLOP/s for ``x @ W.T`` (a linear layer's forward) but 0.6 GFLOP/s
for ``g @ W`` (its input gradient), against 66-78 GFLOP/s in fp32. A bf16 training step there is
dominated by the backward's products: more than two CPU-hours for the 2B preset.

:class:`Fp32MatmulOnCPU` is a dispatch mode that computes ``mm``, ``addmm`` and ``bmm`` of 16-bit CPU
tensors as fp32 products of tiles (at most :data:`TILE_ELEMS` elements of each operand, and of
the fp32 product, at a time) and writes the result back in the operands' dtype. The result is what
the native kernel computes (fp32 accumulation, one rounding at the end) up to summation order;
the tensors autograd saves, and so the step's memory, are unchanged except for the bounded fp32
tiles (a few at a time: each operand's, the product's, an ``addmm`` bias's). It only exists to
let memory benchmarks finish on such CPUs; training code never uses it.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

TILE_ELEMS = 1 << 22  # 4 Mi elements: 16 MB per fp32 tile
_HALF = (torch.bfloat16, torch.float16)
aten = torch.ops.aten


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def tiled_mm(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, beta: float = 1, alpha: float = 1
) -> torch.Tensor:
    """``beta * bias + alpha * (a @ b)`` for 2-D 16-bit tensors in fp32 tiles, returned in ``a.dtype``."""
    m, k = a.shape
    n = b.shape[1]
    out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    rows = min(m, max(1, TILE_ELEMS // max(k, 1)))  # a's tile: rows x k
    cols = max(1, TILE_ELEMS // max(k, rows))  # b's tile k x cols, the product's rows x cols
    if bias is not None:
        bias = bias.expand(m, n)
    for i in range(0, m, rows):
        a32 = a[i : i + rows].float()
        for j in range(0, n, cols):
            tile = a32 @ b[:, j : j + cols].float()
            if alpha != 1:
                tile *= alpha
            if bias is not None and beta != 0:
                tile += beta * bias[i : i + rows, j : j + cols].float()
            out[i : i + rows, j : j + cols] = tile
    return out


def _addmm(bias, a, b, *, beta=1, alpha=1):
    return tiled_mm(a, b, bias, beta, alpha)


def _bmm(a, b):
    return torch.stack([tiled_mm(x, y) for x, y in zip(a, b)])


_IMPL = {aten.mm.default: tiled_mm, aten.addmm.default: _addmm, aten.bmm.default: _bmm}


class Fp32MatmulOnCPU(TorchDispatchMode):
    """Within this mode, 16-bit CPU ``mm``/``addmm``/``bmm`` run as fp32 tile products (see module)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = _IMPL.get(func)
        if impl is not None:
            mats = args[-2:]
            if all(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype in _HALF for t in mats):
                return impl(*args, **kwargs)
        return func(*args, **kwargs)


#: ``--bf16-matmul`` choices: PyTorch's kernel, fp32 tiles, or tiles where the CPU lacks bf16.
CHOICES = ("auto", "native", "fp32")


def matmul_context(choice: str) -> tuple[contextlib.AbstractContextManager, str]:
    """(context to train in, what the JSON line records) for a ``--bf16-matmul`` choice."""
    if choice not in CHOICES:
        raise ValueError(f"--bf16-matmul: one of {CHOICES}, got {choice!r}")
    if choice == "fp32" or (choice == "auto" and not native_bf16_cpu()):
        return Fp32MatmulOnCPU(), "fp32-tiles"
    return contextlib.nullcontext(), "native"


def add_argument(parser) -> None:
    """The ``--bf16-matmul`` flag, as the CPU benchmarks take it."""
    parser.add_argument(
        "--bf16-matmul",
        default="auto",
        choices=CHOICES,
        help="16-bit CPU matrix products: PyTorch's kernel, fp32 tiles, or tiles where the CPU lacks bf16",
    )
