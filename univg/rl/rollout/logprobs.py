"""Scoring completions: per-token log-probs under a policy, old policy or reference.

The prompt minus its last token is run once per prompt (``shared_prefix=True``; vision included,
with gradient when the caller needs it), its keys/values are repeated for the G rows, and only
``[last prompt token, completion]`` goes through the decoder for each row. It is an exact rewrite
of the plain computation (same maths, float rounding aside); ``shared_prefix=False`` repeats each
prompt G times: for comparison, and the path under gradient checkpointing and FSDP.

On both paths the 151,936-way head sees only the real completion tokens, never the prompt or the
padding, through a tiled log-prob function (:func:`head_logprobs`) that never holds the
``[tokens, vocab]`` logits, in the forward or for the backward. For the length of one forward the
model's output head is replaced by a module that returns these log-probs in place of logits
(:func:`log_prob_head`), so the model is still called as a whole: FSDP's hooks gather the head
as for any forward. ``tiled_head=False`` computes the full logits instead (the reference).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from univg.model.tokenizer import mm_token_type_ids
from univg.rl.rollout.batch import (
    _hf_model,
    _is_fsdp,
    check_left_padded,
    images_per_prompt,
    model_inputs,
    repeat_prompts,
    rope_positions,
)

#: Completion tokens per tile of the chunked head (rows of a [tokens, vocab] float32 tile).
HEAD_TOKENS_PER_TILE = 64
_HALF = (torch.bfloat16, torch.float16)


def _plain_head(model: nn.Module) -> nn.Linear | None:
    """The model's output head when log-probs can be taken from it in tiles: a bias-free
    ``nn.Linear`` (None for anything else, e.g. LoRA on ``lm_head``: then the logits are computed)."""
    hf = _hf_model(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    return head if type(head) is nn.Linear and head.bias is None else None


class _LogProbHead(nn.Module):
    """Stands in for the output head during one forward: hidden states [r, >= L, H] in, the
    log-probs of ``targets`` [r, L] out (0 where not ``valid``), via :func:`head_logprobs` on the
    head's weight as it is at call time (under FSDP: gathered by the forward's hooks)."""

    def __init__(self, head: nn.Linear, targets: torch.Tensor, valid: torch.Tensor, temperature: float):
        super().__init__()
        self._head = (head,)  # a tuple: not registered, the model's parameters stay as they are
        self.targets, self.valid, self.temperature = targets, valid, temperature

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden[:, : self.targets.shape[1]]
        lp = head_logprobs(
            hidden[self.valid], self._head[0].weight, self.targets[self.valid], self.temperature
        )
        return torch.zeros(self.valid.shape, dtype=lp.dtype, device=lp.device).masked_scatter(self.valid, lp)


@contextmanager
def log_prob_head(
    model: nn.Module, targets: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0
) -> Iterator[bool]:
    """Within the block, ``model(...).logits`` holds log p(``targets``) [r, L] (0 where not
    ``valid``) instead of [r, L, V] logits: position i of the head's input scores ``targets[:, i]``.
    Yields False (and changes nothing) when the head is not a plain ``nn.Linear``."""
    head = _plain_head(model)
    if head is None:
        yield False
        return
    hf = _hf_model(model)
    name = next(n for n, m in hf.named_modules() if m is head)
    parent, _, attr = name.rpartition(".")
    owner = hf.get_submodule(parent) if parent else hf
    setattr(owner, attr, _LogProbHead(head, targets, valid, temperature))
    try:
        yield True
    finally:
        setattr(owner, attr, head)


def _compute_weight(weight: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """The head weight as the tiles use it: a 16-bit weight as it is (no float32 copy of the whole
    [V, H] weight: 1 GB for 2B, 2 GB for 7B), any other in the logits' dtype ``dt``."""
    return weight if weight.dtype in _HALF else weight.to(dt)


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``a @ b`` into ``out`` (float32 or float64). With a 16-bit ``b`` the product is taken in its
    dtype (rounded as the head itself rounds its logits) and then widened."""
    if b.dtype == out.dtype:
        return torch.mm(a.to(out.dtype), b, out=out)
    return out.copy_(torch.mm(a.to(b.dtype), b))


class _HeadLogProb(torch.autograd.Function):
    """log softmax(h W^T / T)[target] for each token, in tiles of tokens: the [T, V] logits exist
    one tile at a time (a reused buffer), in the forward and again (recomputed) in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, tile, half):  # type: ignore[override]
        # half: the 16-bit dtype an fp32 head's logits are rounded in (autocast), or None
        n = hidden.shape[0]
        dt = torch.promote_types(hidden.dtype, torch.float32)  # float32 logits (float64 for gradcheck)
        out = torch.empty(n, dtype=dt, device=hidden.device)
        lse = torch.empty(n, dtype=dt, device=hidden.device)
        w = _compute_weight(weight if half is None else weight.to(half), dt)  # a transient copy
        buf = torch.empty(min(tile, n), w.shape[0], dtype=dt, device=hidden.device)
        for s in range(0, n, tile):
            h = hidden[s : s + tile]
            z = _mm_into(h, w.t(), buf[: h.shape[0]])  # [tile, V]
            if inv_temp != 1.0:
                z.mul_(inv_temp)
            tgt = z.gather(1, targets[s : s + tile, None]).squeeze(1)
            m = z.amax(dim=1, keepdim=True)
            lse[s : s + tile] = z.sub_(m).exp_().sum(dim=1).log_() + m.squeeze(1)
            out[s : s + tile] = tgt - lse[s : s + tile]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.inv_temp, ctx.tile, ctx.half = inv_temp, tile, half
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        if ctx.half is not None or (weight.dtype in _HALF and ctx.needs_input_grad[1]):
            return _backward_by_vocab_blocks(ctx, grad, hidden, weight, targets, lse)
        inv_temp, tile = ctx.inv_temp, ctx.tile
        n = hidden.shape[0]
        dt = lse.dtype
        w = _compute_weight(weight, dt)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty(hidden.shape, dtype=dt, device=hidden.device) if need_h else None
        gw = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
        g_all = grad.to(dt) * inv_temp  # [T]
        buf = torch.empty(min(tile, n), w.shape[0], dtype=dt, device=hidden.device)
        for s in range(0, n, tile):
            h = hidden[s : s + tile].to(dt)
            z = _mm_into(h, w.t(), buf[: h.shape[0]])  # [tile, V]
            if inv_temp != 1.0:
                z.mul_(inv_temp)
            # d logp / dz = onehot(target) - softmax(z), times the incoming grad and 1/T
            g = g_all[s : s + tile, None]
            p = z.sub_(lse[s : s + tile, None]).exp_().mul_(-g)
            p.scatter_add_(1, targets[s : s + tile, None], g)
            if gh is not None:
                _mm_into(p, w, gh[s : s + tile])
            if gw is not None:
                gw.addmm_(p.t(), h)
        return gh.to(hidden.dtype) if gh is not None else None, gw, None, None, None, None


def _backward_by_vocab_blocks(ctx, grad, hidden, weight, targets, lse):  # type: ignore[no-untyped-def]
    """The backward of a 16-bit head (or of an fp32 one rounded as 16-bit under autocast), by blocks
    of vocabulary rows over every token, not tiles of tokens: each block of the weight's gradient is
    finished at once and written in the weight's dtype, so a 16-bit head gets no float32 [V, H]
    gradient (2 GiB at 7B) nor a copy of it, and an fp32 head under autocast is rounded one block at
    a time. One block of logits holds at most ``tile`` x V elements, as a forward tile does."""
    inv_temp, tile = ctx.inv_temp, ctx.tile
    n, vocab = hidden.shape[0], weight.shape[0]
    dt = lse.dtype
    gh = torch.zeros(hidden.shape, dtype=dt, device=hidden.device) if ctx.needs_input_grad[0] else None
    gw = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
    g_all = (grad.to(dt) * inv_temp)[:, None]  # [T, 1]
    h = hidden.to(dt)  # [T, H]
    block = max(1, (tile * vocab) // max(n, 1))
    for v0 in range(0, vocab, block):
        w = weight[v0 : v0 + block] if ctx.half is None else weight[v0 : v0 + block].to(ctx.half)  # [b, H]
        z = _mm_into(hidden, w.t(), torch.empty(n, w.shape[0], dtype=dt, device=h.device))  # [T, b]
        if inv_temp != 1.0:
            z.mul_(inv_temp)
        # d logp / dz = onehot(target) - softmax(z), times the incoming grad and 1/T
        p = z.sub_(lse[:, None]).exp_().mul_(-g_all)  # [T, b]
        rows = ((targets >= v0) & (targets < v0 + w.shape[0])).nonzero().squeeze(1)
        p[rows, targets[rows] - v0] += g_all[rows, 0]
        if gh is not None:
            gh.addmm_(p, w.to(dt))
        if gw is not None:
            gw[v0 : v0 + block] = p.t() @ h
    return gh.to(hidden.dtype) if gh is not None else None, gw, None, None, None, None


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tile: int | None = None,
) -> torch.Tensor:
    """log p(target) under ``softmax(hidden @ weight.T / temperature)``: hidden [T, H], weight [V, H],
    targets [T] -> [T] float32 (float64 for float64 inputs), never holding more than ``tile`` rows
    of logits. A 16-bit weight, or a float32 one under 16-bit autocast, gives logits rounded as that
    head's own (the ones sampled from), widened to float32 for the softmax.

    >>> h, w = torch.randn(5, 3), torch.randn(7, 3)
    >>> t = torch.tensor([0, 6, 2, 2, 1])
    >>> ref = torch.log_softmax(h @ w.t() / 0.7, -1).gather(1, t[:, None]).squeeze(1)
    >>> torch.allclose(head_logprobs(h, w, t, 0.7, tile=2), ref, atol=1e-6)
    True
    """
    # Under autocast the head's logits are 16-bit products, and generation samples from them: the same
    # rounding here, so the log-probs the loss scores are of the distribution sampled from.
    device = hidden.device.type
    half = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    half = half if weight.dtype == torch.float32 and half in _HALF else None
    return _HeadLogProb.apply(hidden, weight, targets, 1.0 / temperature, tile or HEAD_TOKENS_PER_TILE, half)


def completion_logprobs(
    model: nn.Module,
    prompt: Mapping[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int = 1,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    *,
    shared_prefix: bool | None = None,
    tiled_head: bool = True,
) -> torch.Tensor:
    """Per-token log-probs of the completions under ``model``. Returns [N, C] float32 (0 where masked).

    ``prompt`` holds the B left-padded prompts, row b serving completions ``b*G .. b*G + G - 1``
    (N = B*G). ``chunk_size`` rows per decoder forward; rows are sorted by completion length and
    each chunk runs only up to its longest completion, so padding costs nothing.

    ``shared_prefix`` (default: on when possible) runs each prompt and its images once and
    repeats its keys/values for the G rows; it is off under gradient checkpointing with
    gradient (transformers drops the cache in checkpointed layers), where the prompt is repeated.
    ``tiled_head`` (default) scores the tokens with :func:`log_prob_head`; False computes the full
    ``[N, C, vocab]`` logits (the reference computation, for comparison).
    """
    inputs = model_inputs(prompt)
    if shared_prefix is None:
        shared_prefix = not torch.is_grad_enabled() or shared_prefix_allowed(model, model.training)
    passes = _logprobs_shared if shared_prefix else _logprobs_repeated
    return passes(
        model, inputs, completion_ids, completion_mask, group_size, chunk_size, temperature, tiled_head
    )


def shared_prefix_allowed(model: nn.Module, training: bool = True) -> bool:
    """Whether a log-prob pass *with gradient* may share the prompt prefix (``training``: the model
    will be in train mode). Not under gradient checkpointing in training (transformers drops the
    cache in checkpointed layers) nor under FSDP (the cache bypasses FSDP's hooks, so a layer is
    resharded before its backward runs). Passes without gradient can always share it; GRPO still
    follows this answer for them so that policy, old policy and reference use the same arithmetic.
    """
    hf = _hf_model(model)
    # is_gradient_checkpointing is deprecated in transformers 5 (a warning on each read): ask for it
    # only where the newer name is missing
    name = (
        "is_activation_checkpointing"
        if hasattr(hf, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    checkpointing = bool(getattr(hf, name, False))
    return not ((checkpointing and training) or _is_fsdp(model))


def _row_chunks(lengths: torch.Tensor, chunk_size: int | None) -> list[tuple[torch.Tensor, int]]:
    """Rows sorted by length (longest first) in chunks of ``chunk_size``: (row indices, max length)."""
    order = torch.argsort(lengths, descending=True, stable=True)
    chunk = chunk_size or len(order)
    out = []
    for s in range(0, len(order), chunk):
        rows = order[s : s + chunk]
        out.append((rows, int(lengths[rows].max())))
    return out


def _logprobs_shared(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int,
    chunk_size: int | None,
    temperature: float,
    tiled_head: bool = True,
) -> torch.Tensor:
    from transformers import DynamicCache

    check_left_padded(inputs)
    n, c = completion_ids.shape
    out = torch.zeros(n, c, dtype=torch.float32, device=completion_ids.device)
    lengths = completion_mask.sum(1)
    if n == 0 or int(lengths.max()) == 0:
        return out
    ids = inputs["input_ids"]
    p = ids.shape[1]
    pos = rope_positions(model, inputs)  # [3, B, P]
    # 1. prefix = prompt minus its last token, once per prompt (its images encoded here, once)
    prefix = {
        k: v[:, : p - 1]
        for k, v in inputs.items()
        if k in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    for k in ("pixel_values", "image_grid_thw"):
        if k in inputs:
            prefix[k] = inputs[k]
    cache = DynamicCache(config=_hf_model(model).config)
    if p > 1:  # the head runs on one position per prompt: its logits are not used
        model(**prefix, position_ids=pos[..., : p - 1], cache=cache, use_cache=True, logits_to_keep=1)
    kv = [(layer.keys, layer.values) for layer in cache.layers] if p > 1 else []
    prompt_of_row = torch.arange(n, device=ids.device) // group_size  # [N]
    last_tok = ids[:, -1]  # [B]
    last_pos = pos[0, :, -1]  # [B]: text token, the same on the three axes
    # 2. per chunk of rows: [last prompt token, completion[:-1]] through the decoder over the cached prefix
    for rows, length in _row_chunks(lengths, chunk_size):
        if length == 0:
            continue
        b = prompt_of_row[rows]
        step_ids = torch.cat([last_tok[b, None], completion_ids[rows, : length - 1]], dim=1)  # [r, L]
        att = torch.cat(
            [
                inputs["attention_mask"][b],
                completion_mask[rows, : length - 1].to(inputs["attention_mask"].dtype),
            ],
            dim=1,
        )  # [r, P - 1 + 1 + L - 1]
        step_pos = (
            (last_pos[b, None] + torch.arange(length, device=ids.device)).unsqueeze(0).expand(3, -1, -1)
        )
        row_cache = (
            DynamicCache([(k.index_select(0, b), v.index_select(0, b)) for k, v in kv]) if kv else None
        )
        targets = completion_ids[rows, :length]  # [r, L]
        valid = completion_mask[rows, :length].bool()  # [r, L]
        kw = dict(
            input_ids=step_ids,
            attention_mask=att,
            position_ids=step_pos,
            cache=row_cache,
            use_cache=row_cache is not None,
        )
        block = _score(model, kw, targets, valid, temperature, tiled_head)  # [r, L]
        out = out.index_put((rows[:, None], torch.arange(length, device=ids.device)[None]), block)
    return out


def _logprobs_repeated(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    group_size: int,
    chunk_size: int | None,
    temperature: float,
    tiled_head: bool = True,
) -> torch.Tensor:
    """The plain pass: each prompt (and its images) repeated G times, head on the last C + 1 positions."""
    full = repeat_prompts(inputs, group_size)
    n, c = completion_ids.shape
    chunk = chunk_size or n
    counts = images_per_prompt(full["input_ids"])
    patches = full["image_grid_thw"].prod(1) if "image_grid_thw" in full else None
    out = []
    img0 = 0
    pix0 = 0
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        ids = torch.cat([full["input_ids"][r0:r1], completion_ids[r0:r1]], dim=1)  # [r, P + C]
        att = torch.cat(
            [full["attention_mask"][r0:r1], completion_mask[r0:r1].to(full["attention_mask"].dtype)], 1
        )
        # vision tokens only in the prompt part: a sampled placeholder id is text to the model
        types = torch.cat(
            [mm_token_type_ids(full["input_ids"][r0:r1]), torch.zeros_like(completion_ids[r0:r1])], 1
        )
        kw: dict[str, Any] = dict(input_ids=ids, attention_mask=att, mm_token_type_ids=types)
        n_img = sum(counts[r0:r1])
        if patches is not None and n_img:
            n_pix = int(patches[img0 : img0 + n_img].sum())
            kw["pixel_values"] = full["pixel_values"][pix0 : pix0 + n_pix]
            kw["image_grid_thw"] = full["image_grid_thw"][img0 : img0 + n_img]
            img0 += n_img
            pix0 += n_pix
        # the head on the last C + 1 positions; the first C of them score the C completion tokens
        kw.update(use_cache=False, logits_to_keep=c + 1)
        out.append(
            _score(model, kw, completion_ids[r0:r1], completion_mask[r0:r1].bool(), temperature, tiled_head)
        )
    return torch.cat(out)


def _score(
    model: nn.Module,
    kw: dict[str, Any],
    targets: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    tiled_head: bool,
) -> torch.Tensor:
    """One forward: log p(``targets`` [r, L]) from the first L positions the head sees, 0 where not valid."""
    if tiled_head:
        with log_prob_head(model, targets, valid, temperature) as tiled:
            if tiled:
                return model(**kw).logits
    logits = model(**kw).logits[:, : targets.shape[1]].float()  # [r, L, V]
    if temperature != 1.0:
        logits = logits / temperature
    # log p(token) = logit[token] - logsumexp(logits): avoids materialising a second [r, L, V] tensor
    lp = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return lp * valid
