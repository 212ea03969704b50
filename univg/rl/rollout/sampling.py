"""Sampling completions: the sampling settings, the draw, and our shared-prefill decoder.

Generation shares work across the G completions of a prompt (docs/design.md section 8): each
prompt's images are encoded once and the prompt prefilled once; the KV cache (and the per-row
M-RoPE offset) is then repeated G times and the G continuations are decoded from it by our own
loop (``engine="shared"``). ``engine="hf"`` runs transformers' ``generate`` instead
(:mod:`univg.rl.rollout.hf`): the plain path, for comparison and where ours cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from univg.rl.rollout.batch import (
    EOS_IDS,
    MODEL_KEYS,
    PAD_ID,
    SUPPRESS_IDS,
    Rollout,
    _hf_model,
    _is_fsdp,
    check_left_padded,
    finish_rollout,
    rope_positions,
)
from univg.rl.rollout.draw import draw, sampling_logits
from univg.rl.rollout.hf import generate_hf
from univg.rl.rollout.static_decode import StaticDecoder

#: Decoders of :func:`generate`: a typed knob, so a typo fails at parse time.
Decoder = Literal["auto", "shared", "hf"]
ENGINES: tuple[str, ...] = get_args(Decoder)


@dataclass(frozen=True)
class SamplingSpec:
    """How G completions per prompt are sampled: one value for GRPO's rollouts, the reward probe
    and every rollout engine (the module's ``group_size``, ``temperature``, ``top_p``, ``top_k``
    and ``max_completion_length``).

    Args:
        group_size: G completions per prompt.
        max_new_tokens: the longest completion.
        temperature, top_p, top_k: the distribution drawn from (top_k 0 and top_p 1.0 are off).
        do_sample: False decodes greedily (every completion of a group is then the same).

    >>> SamplingSpec(group_size=8, top_k=50).generate_kwargs()["top_k"]
    50
    >>> SamplingSpec(temperature=0.0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be > 0, got 0.0
    """

    group_size: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`generate` (and of the engines' ``generate``)."""
        return asdict(self)


def generate(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    tokenizer: Any,
    group_size: int = 1,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    *,
    min_new_tokens: int = 0,
    engine: Decoder = "auto",
    generator: torch.Generator | None = None,
    record_logprobs: bool = False,
    repetition_penalty: float = 1.0,
    static_decoder: StaticDecoder | None = None,
) -> Rollout:
    """Sample (or greedily decode) ``group_size`` completions per prompt, in eval mode, KV cached.

    Args:
        inputs: left-padded prompts (``input_ids`` [B, P], their images, ...).
        top_k: 0 disables top-k (transformers' default is 50): the paper samples with temperature
            1.0 and top_p 1.0 over the whole vocabulary.
        min_new_tokens: the end tokens are forbidden before this many tokens (benchmarks use it to
            force a completion length).
        engine: "shared" encodes each prompt's images and prefills it once, then decodes its G
            continuations from the repeated KV cache; "hf" runs transformers' ``generate`` with
            ``num_return_sequences=G`` (images and prefill repeated G times); "auto" is "shared"
            (both give the same greedy completions).
        generator: RNG of the draws ("shared" engine); None uses torch's global RNG.
        record_logprobs: when sampling, also return each drawn token's log-prob under the
            distribution it was drawn from (:attr:`Rollout.sampler_logp`).
        repetition_penalty: transformers' repetition penalty (1.0: none). Evaluation's
            ``decoding: checkpoint`` passes a checkpoint's own value explicitly; only the "hf"
            engine applies it, so "auto" picks "hf" when it is not 1.0.
        static_decoder: decode the "shared" engine's continuations with this capture-safe loop
            (static KV cache, fixed shapes, optionally compiled: :mod:`univg.rl.rollout.static_decode`)
            instead of the eager loop: the same completions and the same use of ``generator``
            (float rounding aside, :mod:`~univg.rl.rollout.static_decode`). Ignored when the "hf"
            engine runs.

    Every decoding setting is explicit: nothing is inherited from the checkpoint's
    ``generation_config.json`` (Qwen2-VL-Instruct ships ``repetition_penalty: 1.05``, ``top_k: 1``,
    ...), so the two engines sample the same distribution, the one the GRPO loss scores.

    Returns:
        a :class:`Rollout` of B*G completions, [prompt0 x G, prompt1 x G, ...].
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {engine!r}; choose one of {ENGINES}")
    if repetition_penalty != 1.0:
        if engine == "shared":
            raise ValueError("the 'shared' rollout engine has no repetition penalty; use engine 'hf'")
        engine = "hf"
    if engine == "auto" and _is_fsdp(model) and torch.distributed.is_initialized():
        # every rank must take part in every sharded forward: transformers' generate keeps ranks
        # stepping until all are done (synced_gpus); our decode loop drops finished rows and exits early
        engine = "hf"
    inputs = {k: v for k, v in inputs.items() if k in MODEL_KEYS}
    was_training = model.training
    model.eval()
    try:
        settings = dict(
            group_size=group_size,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            record_logprobs=record_logprobs and do_sample,
        )
        if engine == "hf":
            ids, logp = generate_hf(model, inputs, repetition_penalty=repetition_penalty, **settings)
        else:
            ids, logp = generate_shared(
                model, inputs, generator=generator, static_decoder=static_decoder, **settings
            )
    finally:
        model.train(was_training)
    return finish_rollout(ids, tokenizer, inputs, group_size, sampler_logp=logp)


def generate_shared(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    group_size: int,
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    generator: torch.Generator | None = None,
    record_logprobs: bool = False,
    static_decoder: StaticDecoder | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prefill B prompts once, repeat the cache G times, decode (with ``static_decoder`` when given).
    Returns ids [B*G, C] (C <= max) and, with ``record_logprobs``, the drawn tokens' log-probs [B*G, C]."""
    from transformers import DynamicCache

    check_left_padded(inputs)
    ids = inputs["input_ids"]
    device = ids.device
    g = group_size
    if max_new_tokens <= 0:
        empty = ids.new_zeros(ids.shape[0] * g, 0)
        return empty, (empty.float() if record_logprobs else None)
    pos = rope_positions(model, inputs)  # [3, B, P]
    cache = DynamicCache(config=_hf_model(model).config)
    out = model(**inputs, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)  # [N, V]
    cache.batch_repeat_interleave(g)  # the prompt's keys/values, once per continuation
    att = inputs["attention_mask"].repeat_interleave(g, dim=0)  # [N, P]
    next_pos = (pos[0, :, -1] + 1).repeat_interleave(g)  # [N]: M-RoPE offset of each row kept
    if static_decoder is not None:
        return static_decoder.decode(
            model,
            cache,
            logits,
            att,
            next_pos,
            max_new_tokens,
            min_new_tokens,
            do_sample,
            temperature,
            top_p,
            top_k,
            generator=generator,
            record_logprobs=record_logprobs,
        )
    n = logits.shape[0]
    eos = torch.tensor(EOS_IDS, device=device)
    suppress = torch.tensor(SUPPRESS_IDS, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.arange(n, device=device)  # rows still decoding, in cache order
    tokens = torch.full((n, max_new_tokens), PAD_ID, dtype=torch.long, device=device)
    logp = torch.zeros(n, max_new_tokens, device=device) if record_logprobs else None
    for t in range(max_new_tokens):
        logits[:, suppress] = float("-inf")
        if t < min_new_tokens:
            logits[:, eos] = float("-inf")
        if do_sample:
            processed = sampling_logits(logits, temperature, top_p, top_k)  # [n_active, V]
            tok = draw(processed, generator)  # [n_active]
            if logp is not None:
                logp[active, t] = torch.log_softmax(processed, -1).gather(1, tok[:, None]).squeeze(1)
        else:
            tok = logits.argmax(dim=-1)
        tokens[active, t] = tok
        finished = torch.isin(tok, eos)
        done[active[finished]] = True
        if bool(done.all()) or t == max_new_tokens - 1:
            return tokens[:, : t + 1], (logp[:, : t + 1] if logp is not None else None)
        if bool(finished.any()):
            # drop finished rows from the batch (cache, mask, positions): no compute on padding
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            att, tok, active = att[keep], tok[keep], active[keep]
        att = torch.cat([att, att.new_ones(att.shape[0], 1)], dim=1)
        step_pos = (next_pos[active] + t).view(1, -1, 1).expand(3, -1, 1)
        out = model(
            input_ids=tok[:, None], attention_mask=att, position_ids=step_pos, cache=cache, use_cache=True
        )
        logits = out.logits[:, -1]
    return tokens, logp  # unreachable: the loop returns at its last step
