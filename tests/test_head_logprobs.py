"""The tiled head under 16-bit compute: it scores the distribution generation samples from, and its
backward allocates no float32 copy of a 16-bit head's [V, H] gradient."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from univg.rl.rollout import head_logprobs


def _peaked(v: int = 300, hdim: int = 16, tokens: int = 20, seed: int = 0):
    """Hidden states and an fp32 head whose logits are large (a trained, confident head), where
    rounding the logits to bf16 moves log-probs by a lot more than float32 rounding does."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hdim, generator=g)
    w = torch.randn(v, hdim, generator=g) * 4.0
    t = torch.randint(0, v, (tokens,), generator=g)
    return h, w, t


def test_under_bf16_autocast_the_scored_logits_are_the_sampled_ones() -> None:
    # What generation samples from under bf16-mixed: the head's autocast (bf16) logits, widened for
    # the softmax. Float32 logits would score up to ~0.2 nats apart from them here.
    h, w, t = _peaked()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sampled_logits = torch.nn.functional.linear(h, w)  # bf16, as lm_head under autocast
        tiled = head_logprobs(h, w, t, temperature=0.7, tile=8)
    sampled = torch.log_softmax(sampled_logits.float() / 0.7, -1).gather(1, t[:, None]).squeeze(1)
    fp32 = torch.log_softmax(h @ w.t() / 0.7, -1).gather(1, t[:, None]).squeeze(1)
    assert float((fp32 - sampled).abs().max()) > 0.05  # the two distributions do differ here
    torch.testing.assert_close(tiled, sampled, atol=1e-5, rtol=1e-5)
    # outside autocast the float32 head is scored in float32
    torch.testing.assert_close(head_logprobs(h, w, t, temperature=0.7, tile=8), fp32, atol=1e-5, rtol=1e-5)


def test_under_bf16_autocast_the_gradient_reaches_the_float32_weight() -> None:
    h, w, t = _peaked(v=60, tokens=9)
    h.requires_grad_()
    w.requires_grad_()
    g = torch.randn(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (head_logprobs(h, w, t, tile=4) * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.functional.linear(h, w)
    (torch.log_softmax(logits.float(), -1).gather(1, t[:, None]).squeeze(1) * g).sum().backward()
    assert gw.dtype == torch.float32
    # autograd's reference takes its backward products in bf16; ours accumulates in float32
    torch.testing.assert_close(gh, h.grad, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(gw, w.grad, atol=3e-2, rtol=3e-2)


class _Allocations(TorchDispatchMode):
    """Records (dtype, numel) of every tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[tuple[torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.made.append((x.dtype, x.numel()))
        return out


def test_a_bf16_head_backward_makes_no_float32_copy_of_its_gradient() -> None:
    # The backward writes the weight's gradient in bf16 directly: no float32 [V, H] buffer copied
    # to bf16 afterwards (6 bytes per head element beside the 2 of the gradient itself).
    torch.manual_seed(0)
    v, hdim, n = 4000, 32, 50
    h = torch.randn(n, hdim, requires_grad=True)
    w = torch.randn(v, hdim).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, v, (n,))
    lp = head_logprobs(h, w, t, tile=8)
    with _Allocations() as seen:
        lp.sum().backward()
    head = v * hdim
    big = [(dt, k) for dt, k in seen.made if k >= head // 2]
    assert big and all(dt == torch.bfloat16 for dt, _ in big), big  # the gradient (and autograd's hand-over)
    assert w.grad.dtype == torch.bfloat16
