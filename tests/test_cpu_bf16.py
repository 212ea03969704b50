"""benchmarks/cpu_bf16.py: 16-bit CPU matrix products as fp32 tiles, against fp32 products of the
same bf16 values (one rounding at the end is the whole difference) and against autograd in fp32."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import cpu_bf16  # noqa: E402
from cpu_bf16 import Fp32MatmulOnCPU, tiled_mm  # noqa: E402


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 12 elements, so every product below is cut into several row and column tiles."""
    monkeypatch.setattr(cpu_bf16, "TILE_ELEMS", 12)


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(7, 5, 9), (20, 2, 30), (3, 40, 4)],  # 4 x 5 tiles of 2 x 2; 4 x 15 of 6 x 2; 3 x 4 of 1 x 1
)
def test_tiled_mm_is_the_fp32_product_of_the_bf16_values_rounded_once(small_tiles, m, k, n):
    a, b = _bf16(m, k, seed=0), _bf16(k, n, seed=1)
    out = tiled_mm(a, b)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    torch.testing.assert_close(out, (a.float() @ b.float()).to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("bias_shape", [(9,), (7, 9)])
def test_addmm_applies_beta_and_alpha_like_torch_in_fp32(small_tiles, bias_shape):
    a, b, bias = _bf16(7, 5, seed=0), _bf16(5, 9, seed=1), _bf16(*bias_shape, seed=2)
    with Fp32MatmulOnCPU():
        out = torch.addmm(bias, a, b, beta=0.5, alpha=2.0)
    expected = (0.5 * bias.float() + 2.0 * (a.float() @ b.float())).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_bmm_and_linear_route_through_the_tiles_and_fp32_is_left_alone(small_tiles):
    a, b = _bf16(3, 4, 5, seed=0), _bf16(3, 5, 6, seed=1)
    with Fp32MatmulOnCPU():
        out = torch.bmm(a, b)
        lin = torch.nn.functional.linear(a, b[0].t())  # a 3-D input: folded into one mm
        f32 = a.float() @ b[0].float()
    torch.testing.assert_close(out, (a.float() @ b.float()).to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(lin, (a.float() @ b[0].float()).to(torch.bfloat16), rtol=0, atol=0)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32, torch.matmul(a.float(), b[0].float()), rtol=0, atol=0)


def test_gradients_through_the_mode_match_autograd_in_fp32(small_tiles):
    """A bf16 linear layer's input and weight gradients (the backward's products run in the mode too)."""
    x = _bf16(6, 5, seed=0).requires_grad_()
    w = _bf16(4, 5, seed=1).requires_grad_()
    with Fp32MatmulOnCPU():
        torch.nn.functional.linear(x, w).float().square().sum().backward()
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    torch.nn.functional.linear(x32, w32).square().sum().backward()
    # bf16 rounds the forward output and each gradient product once: a few bf16 ulps
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad.float(), w32.grad, rtol=2e-2, atol=2e-2)


def test_matmul_context_picks_the_tiles_where_asked_and_rejects_typos(monkeypatch):
    ctx, kind = cpu_bf16.matmul_context("fp32")
    assert isinstance(ctx, Fp32MatmulOnCPU) and kind == "fp32-tiles"
    assert cpu_bf16.matmul_context("native")[1] == "native"
    for native, expected in ((True, "native"), (False, "fp32-tiles")):
        monkeypatch.setattr(cpu_bf16, "native_bf16_cpu", lambda native=native: native)
        assert cpu_bf16.matmul_context("auto")[1] == expected
    with pytest.raises(ValueError, match="bf16-matmul.*'fp23'"):
        cpu_bf16.matmul_context("fp23")
