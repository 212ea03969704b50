"""Sampling completions and scoring their tokens (log-probs) with a Qwen2-VL policy.

Prompt batches are LEFT padded, so every prompt ends at the same position P and completions start
at P. Two kinds of work are shared across the G completions of a prompt (docs/design.md section 8):

- **generation** (``engine="shared"``, the default for G > 1): each prompt's images are encoded
  once and the prompt prefilled once; the KV cache (and the per-row M-RoPE offset) is then
  repeated G times and the G continuations are decoded from it by our own loop.
- **log-probs** (``shared_prefix=True``): the prompt minus its last token is run once per prompt
  (vision included, with gradient when the caller needs it), its keys/values are repeated for the
  G rows, and only ``[last prompt token, completion]`` goes through the decoder for each row. The
  151,936-way head sees only the real completion tokens, never the prompt or the padding, through
  a chunked log-prob function that never holds the ``[tokens, vocab]`` logits for backward.

Both are exact rewrites of the plain computations (same maths, float rounding aside);
``engine="hf"`` and ``shared_prefix=False`` keep the plain paths for comparison and as fallbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from univg.tokenizer import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_ID, mm_token_type_ids

#: Token ids that end a completion: <|im_end|> and <|endoftext|>.
EOS_IDS: tuple[int, ...] = (151645, 151643)
PAD_ID = 151643

#: Keys of a prompt batch that the model's forward takes.
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")

#: Tokens never sampled: a vision placeholder in a completion would not match any image features
#: (transformers' Qwen2-VL forward counts them); TRL suppresses the image token for the same reason.
SUPPRESS_IDS: tuple[int, ...] = (IMAGE_TOKEN_ID, VIDEO_TOKEN_ID)

#: Rollout engines of :func:`generate`.
ENGINES = ("auto", "shared", "hf")

#: Completion tokens per tile of the chunked head (rows of a [tokens, vocab] float32 tile).
HEAD_TOKENS_PER_TILE = 64


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch that Qwen2-VL's forward takes."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch and batch[k] is not None}


@dataclass
class Rollout:
    """G completions for each of B prompts, laid out [prompt0 x G, prompt1 x G, ...]."""

    prompt: dict[str, torch.Tensor]  # model inputs of the B prompts; input_ids [B, P] left padded
    completion_ids: torch.Tensor  # [B*G, C], PAD after the end
    completion_mask: torch.Tensor  # [B*G, C], 1 up to and including the first end token
    texts: list[str]  # B*G decoded completions, end token excluded
    truncated: torch.Tensor  # [B*G] bool: no end token within max_new_tokens
    group_size: int
    #: [B*G, C] log-prob of each sampled token under the distribution it was drawn from (after
    #: temperature, top-k, top-p and any other processing; 0 where masked), when asked for
    #: (``generate(..., record_logprobs=True)``): the run-time check that the distribution the loss
    #: scores is the one that was sampled.
    sampler_logp: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return int(self.prompt["input_ids"].shape[0])


def images_per_prompt(input_ids: torch.Tensor) -> list[int]:
    """Number of images in each row (one ``<|vision_start|>`` per image)."""
    return (input_ids == VISION_START_ID).sum(dim=1).tolist()


def repeat_prompts(inputs: Mapping[str, torch.Tensor], group_size: int) -> dict[str, torch.Tensor]:
    """Repeat each prompt ``group_size`` times (rows and their images) -> [B*G, ...]."""
    if group_size == 1:
        return dict(inputs)
    out = {
        k: v.repeat_interleave(group_size, dim=0)
        for k, v in inputs.items()
        if k not in ("pixel_values", "image_grid_thw")
    }
    if "pixel_values" in inputs:
        grid = inputs["image_grid_thw"]  # [n_images, 3]
        patches = grid.prod(dim=1)  # [n_images]
        counts = images_per_prompt(inputs["input_ids"])
        img_starts = torch.cumsum(torch.tensor([0] + counts), 0)
        patch_starts = torch.cumsum(torch.cat([patches.new_zeros(1), patches]), 0)
        pix, grids = [], []
        for b in range(len(counts)):
            i0, i1 = int(img_starts[b]), int(img_starts[b + 1])
            p0, p1 = int(patch_starts[i0]), int(patch_starts[i1])
            for _ in range(group_size):
                pix.append(inputs["pixel_values"][p0:p1])
                grids.append(grid[i0:i1])
        out["pixel_values"] = torch.cat(pix)
        out["image_grid_thw"] = torch.cat(grids)
    return out


def completion_mask(completion_ids: torch.Tensor, eos_ids: tuple[int, ...] = EOS_IDS) -> torch.Tensor:
    """1 up to and including the first end token of each row, 0 after. [N, C] long.

    >>> completion_mask(torch.tensor([[5, 151645, 9, 9], [5, 6, 7, 8]])).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1]]
    """
    is_end = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos_ids:
        is_end |= completion_ids == e
    # number of end tokens strictly before each position
    before = torch.cumsum(is_end.long(), dim=1) - is_end.long()
    return (before == 0).long()


def decode_completions(tokenizer: Any, completion_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Decode each completion up to (not including) its end token, special tokens kept."""
    texts = []
    for ids, m in zip(completion_ids.tolist(), mask.tolist()):
        n = sum(m)
        if n and ids[n - 1] in EOS_IDS:
            n -= 1
        texts.append(tokenizer.decode(ids[:n], skip_special_tokens=False))
    return texts


# --------------------------------------------------------------------------------- model plumbing
def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - every supported torch has it
        return False
    return any(isinstance(m, FSDPModule) for m in (model, _hf_model(model)))


def _split_head(model: nn.Module) -> tuple[nn.Module, torch.Tensor] | None:
    """(decoder that returns hidden states, head weight [V, H]) when the head can be run apart.

    Not under FSDP (the root's hooks gather the head and embedding only when the root is called)
    nor for a head that is not a plain bias-free ``nn.Linear`` (e.g. LoRA on ``lm_head``).
    """
    hf = _hf_model(model)
    inner = getattr(hf, "model", None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if inner is None or type(head) is not nn.Linear or head.bias is not None or _is_fsdp(model):
        return None
    return inner, head.weight


def rope_positions(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2-VL's 3-D (M-RoPE) positions of left-padded prompts: [3, B, P] (0 on padding).

    Text tokens carry the same value on the three axes; the next token after a prompt sits at
    ``positions[:, b, -1] + 1`` (the last prompt token is text).
    """
    ids = inputs["input_ids"]
    types = inputs.get("mm_token_type_ids")
    if types is None:
        types = mm_token_type_ids(ids)
    if "image_grid_thw" not in inputs:
        pos = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return pos[None].expand(3, -1, -1).contiguous()
    pos, _ = _hf_model(model).model.get_rope_index(
        ids,
        mm_token_type_ids=types,
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    return pos


def _check_left_padded(inputs: Mapping[str, torch.Tensor]) -> None:
    last = inputs["input_ids"][:, -1]
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise ValueError("rollout: prompts must be LEFT padded (a row's last position is padding)")
    if bool(((last == IMAGE_TOKEN_ID) | (last == VIDEO_TOKEN_ID)).any()):
        raise ValueError("rollout: a prompt ends in a vision token; prompts end with the assistant header")


# --------------------------------------------------------------------------------- sampling
def sampling_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0
) -> torch.Tensor:
    """float32 logits [N, V] of the distribution a draw comes from: temperature, then top-k (0 = off)
    and top-p (1.0 = off) as ``-inf``, in transformers' order.

    >>> sampling_logits(torch.tensor([[0.0, 2.0, 1.0]]), top_k=2).tolist()
    [[-inf, 2.0, 1.0]]
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= 1.0 - top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token of each row from ``logits`` [N, V]: argmax, or a draw from
    :func:`sampling_logits`. Returns [N] long.

    >>> sample_next(torch.tensor([[0.0, 2.0, 1.0]]), do_sample=False).tolist()
    [1]
    >>> sample_next(torch.tensor([[0.0, 2.0, 1.0]]), do_sample=True, top_k=1).tolist()
    [1]
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    return draw(sampling_logits(logits, temperature, top_p, top_k), generator)


def draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from processed float logits [N, V] (``-inf`` = excluded). Returns [N] long."""
    if logits.device.type != "cpu":
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_()  # [N, V] unnormalised probabilities
    return draw_categorical(weights, generator)


#: Classes per block of :func:`draw_categorical`.
_BLOCK = 1024


def draw_categorical(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from unnormalised non-negative ``weights`` [N, V]. Returns [N] long.

    The same distribution as ``torch.multinomial(weights, 1)`` but ~4x faster on CPU over a
    151,936-way vocabulary: an inverse-CDF draw in two levels (block sums, then one block's
    cumulative sum, both in float64), so only one uniform number per row and two passes over V.

    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    >>> torch.stack([draw_categorical(w, g) for _ in range(4000)]).float().mean(0).tolist()[1]
    0.0
    >>> round(float((torch.stack([draw_categorical(w, g) for _ in range(4000)])[:, 0] == 2).float().mean()), 1)
    0.8
    """
    n, v = weights.shape
    nb = -(-v // _BLOCK)
    full = v // _BLOCK
    sums = weights.new_zeros(n, nb, dtype=torch.float64)
    if full:
        sums[:, :full] = weights[:, : full * _BLOCK].reshape(n, full, _BLOCK).sum(-1, dtype=torch.float64)
    if full < nb:
        sums[:, full] = weights[:, full * _BLOCK :].sum(-1, dtype=torch.float64)
    block_cdf = sums.cumsum(dim=-1)  # [N, nb]
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64, device=weights.device) * block_cdf[:, -1:]
    blk = torch.searchsorted(block_cdf, u, right=True).clamp_(max=nb - 1)  # [N, 1]
    # the chosen block must carry weight (u sits strictly below the total, but guard rounding)
    blk = torch.where(sums.gather(1, blk) > 0, blk, (sums > 0).long().cumsum(-1).argmax(-1, keepdim=True))
    below = torch.where(blk > 0, block_cdf.gather(1, (blk - 1).clamp(min=0)), torch.zeros_like(u))
    cols = blk * _BLOCK + torch.arange(_BLOCK, device=weights.device)  # [N, BLOCK]
    inside = cols < v
    w_blk = weights.gather(1, cols.clamp(max=v - 1)).double() * inside  # [N, BLOCK]
    cdf = w_blk.cumsum(dim=-1)
    j = torch.searchsorted(cdf, u - below, right=True)  # [N, 1]
    # rounding could land past the block's last positive weight: take that weight instead
    last = (w_blk > 0).long().cumsum(-1).argmax(-1, keepdim=True)
    j = torch.minimum(j, last)
    return (blk * _BLOCK + j).squeeze(1)


def finish_rollout(
    ids: torch.Tensor,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    group_size: int,
    lengths: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
) -> Rollout:
    """Mask after the first end token, flag truncation, decode. ``ids`` [N, C].

    ``lengths`` [N] (optional): each row's own length when the rows were padded to C (a row that
    stops short without an end token is truncated and masked after its last token).
    ``sampler_logp`` [N, C] (optional): the sampled tokens' log-probs, kept where the mask is 1.
    """
    mask = completion_mask(ids)
    if lengths is not None:
        mask = mask * (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None])
    ids = ids.masked_fill(mask == 0, PAD_ID)
    if ids.shape[1] == 0:
        truncated = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    else:
        kept = mask.sum(1)  # [N]
        end_tok = ids.gather(1, (kept - 1).clamp(min=0)[:, None]).squeeze(1)  # last kept token
        truncated = (kept == 0) | ~torch.isin(end_tok, torch.tensor(EOS_IDS, device=ids.device))
    texts = decode_completions(tokenizer, ids, mask)
    if sampler_logp is not None:
        sampler_logp = sampler_logp * mask.to(sampler_logp.dtype)
    return Rollout(dict(inputs), ids, mask, texts, truncated, group_size, sampler_logp)


@torch.no_grad()
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
    engine: str = "auto",
    generator: torch.Generator | None = None,
    record_logprobs: bool = False,
    repetition_penalty: float = 1.0,
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
            ids, logp = _generate_hf(model, inputs, repetition_penalty=repetition_penalty, **settings)
        else:
            ids, logp = _generate_shared(model, inputs, generator=generator, **settings)
    finally:
        model.train(was_training)
    return finish_rollout(ids, tokenizer, inputs, group_size, sampler_logp=logp)


def explicit_generation_config(
    group_size: int,
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
) -> Any:
    """A ``GenerationConfig`` that states every setting that changes which tokens come out.

    transformers fills each field left ``None`` from the model's own ``generation_config`` (a
    released checkpoint's ``generation_config.json``), so every processor and warper is set here to
    its neutral value; :func:`_generate_hf` also hides the model's config during the call.
    """
    from transformers import GenerationConfig

    greedy = not do_sample
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=1 if greedy else group_size,
        # greedy ignores the warpers; None keeps transformers from warning about unused flags
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else top_k,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        length_penalty=1.0,
        renormalize_logits=False,
        remove_invalid_values=False,
        pad_token_id=PAD_ID,
        eos_token_id=list(EOS_IDS),
        suppress_tokens=list(SUPPRESS_IDS),
        use_cache=True,
        return_dict_in_generate=True,
    )


class _SampledLogProbs:
    """A logits processor placed after the warpers: it keeps the last step's log-probabilities
    ([N, V], one step only) and, at the next step, takes the log-prob of the token drawn from them
    (the last column of ``input_ids``). :meth:`finish` takes the last step's."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length
        self.last: torch.Tensor | None = None
        self.taken: list[torch.Tensor] = []

    def _take(self, tokens: torch.Tensor) -> None:
        if self.last is not None:
            self.taken.append(self.last.gather(1, tokens[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_length:
            self._take(input_ids[:, -1])
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, C] log-probs of the completion tokens ``ids`` [N, C]."""
        if len(self.taken) < ids.shape[1]:
            self._take(ids[:, len(self.taken)])
        self.last = None
        return torch.stack(self.taken[: ids.shape[1]], dim=1) if ids.shape[1] else ids.float()


def _generate_hf(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    group_size: int,
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    record_logprobs: bool = False,
    repetition_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers import GenerationConfig, LogitsProcessorList
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    recorder = None
    if record_logprobs:
        # transformers puts a caller's processors before its warpers: to see what is sampled from,
        # the warpers come here in transformers' order, then the recorder (the config states none)
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        recorder = _SampledLogProbs(inputs["input_ids"].shape[1])
        processors.append(recorder)
        temperature, top_k, top_p = 1.0, 0, 1.0
    config = explicit_generation_config(
        group_size, max_new_tokens, min_new_tokens, do_sample, temperature, top_p, top_k
    )
    config.repetition_penalty = repetition_penalty  # 1.0 unless a caller passes one explicitly
    if not do_sample:
        # transformers refuses num_return_sequences > 1 for greedy search: repeat the prompts instead
        inputs = repeat_prompts(inputs, group_size)
    hf = _hf_model(model)
    own = hf.generation_config
    hf.generation_config = GenerationConfig()  # nothing inherited from the checkpoint's file
    try:
        out = model.generate(**inputs, generation_config=config, logits_processor=processors)
    finally:
        hf.generation_config = own
    ids = out.sequences[:, inputs["input_ids"].shape[1] :]  # [B*G, C]
    return ids, (recorder.finish(ids) if recorder is not None else None)


def _generate_shared(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prefill B prompts once, repeat the cache G times, decode. Returns ids [B*G, C] (C <= max) and,
    with ``record_logprobs``, the drawn tokens' log-probs [B*G, C]."""
    from transformers import DynamicCache

    _check_left_padded(inputs)
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


# --------------------------------------------------------------------------------- log-probs
class _HeadLogProb(torch.autograd.Function):
    """log softmax(h W^T / T)[target] for each token, in tiles of tokens: the [T, V] logits exist
    one tile at a time (a reused buffer), in the forward and again (recomputed) in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, tile):  # type: ignore[override]
        n = hidden.shape[0]
        dt = torch.promote_types(hidden.dtype, torch.float32)  # float32 logits (float64 for gradcheck)
        out = torch.empty(n, dtype=dt, device=hidden.device)
        lse = torch.empty(n, dtype=dt, device=hidden.device)
        w = weight.to(dt)
        buf = torch.empty(min(tile, n), w.shape[0], dtype=dt, device=hidden.device)
        for s in range(0, n, tile):
            z = torch.mm(hidden[s : s + tile].to(dt), w.t(), out=buf[: min(tile, n - s)])  # [tile, V]
            if inv_temp != 1.0:
                z.mul_(inv_temp)
            tgt = z.gather(1, targets[s : s + tile, None]).squeeze(1)
            m = z.amax(dim=1, keepdim=True)
            lse[s : s + tile] = z.sub_(m).exp_().sum(dim=1).log_() + m.squeeze(1)
            out[s : s + tile] = tgt - lse[s : s + tile]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.inv_temp, ctx.tile = inv_temp, tile
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        hidden, weight, targets, lse = ctx.saved_tensors
        inv_temp, tile = ctx.inv_temp, ctx.tile
        n = hidden.shape[0]
        dt = lse.dtype
        w = weight.to(dt)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty(hidden.shape, dtype=dt, device=hidden.device) if need_h else None
        gw = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None
        g_all = grad.to(dt) * inv_temp  # [T]
        buf = torch.empty(min(tile, n), w.shape[0], dtype=dt, device=hidden.device)
        for s in range(0, n, tile):
            h = hidden[s : s + tile].to(dt)
            z = torch.mm(h, w.t(), out=buf[: h.shape[0]])  # [tile, V]
            if inv_temp != 1.0:
                z.mul_(inv_temp)
            # d logp / dz = onehot(target) - softmax(z), times the incoming grad and 1/T
            g = g_all[s : s + tile, None]
            p = z.sub_(lse[s : s + tile, None]).exp_().mul_(-g)
            p.scatter_add_(1, targets[s : s + tile, None], g)
            if gh is not None:
                torch.mm(p, w, out=gh[s : s + tile])
            if gw is not None:
                gw.addmm_(p.t(), h)
        return (
            gh.to(hidden.dtype) if gh is not None else None,
            gw.to(weight.dtype) if gw is not None else None,
            None,
            None,
            None,
        )


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    tile: int | None = None,
) -> torch.Tensor:
    """log p(target) under ``softmax(hidden @ weight.T / temperature)``: hidden [T, H], weight [V, H],
    targets [T] -> [T] float32 (float64 for float64 inputs), never holding more than ``tile`` rows
    of logits.

    >>> h, w = torch.randn(5, 3), torch.randn(7, 3)
    >>> t = torch.tensor([0, 6, 2, 2, 1])
    >>> ref = torch.log_softmax(h @ w.t() / 0.7, -1).gather(1, t[:, None]).squeeze(1)
    >>> torch.allclose(head_logprobs(h, w, t, 0.7, tile=2), ref, atol=1e-6)
    True
    """
    return _HeadLogProb.apply(hidden, weight, targets, 1.0 / temperature, tile or HEAD_TOKENS_PER_TILE)


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
) -> torch.Tensor:
    """Per-token log-probs of the completions under ``model``. Returns [N, C] float32 (0 where masked).

    ``prompt`` holds the B left-padded prompts, row b serving completions ``b*G .. b*G + G - 1``
    (N = B*G). ``chunk_size`` rows per decoder forward; rows are sorted by completion length and
    each chunk runs only up to its longest completion, so padding costs nothing.

    ``shared_prefix`` (default: on when possible) runs each prompt and its images once and
    repeats its keys/values for the G rows; it is off under gradient checkpointing with
    gradient (transformers drops the cache in checkpointed layers), where the prompt is repeated.
    """
    inputs = model_inputs(prompt)
    if shared_prefix is None:
        shared_prefix = not torch.is_grad_enabled() or shared_prefix_allowed(model, model.training)
    if shared_prefix:
        return _logprobs_shared(
            model, inputs, completion_ids, completion_mask, group_size, chunk_size, temperature
        )
    return _logprobs_repeated(
        model, inputs, completion_ids, completion_mask, group_size, chunk_size, temperature
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
) -> torch.Tensor:
    from transformers import DynamicCache

    _check_left_padded(inputs)
    n, c = completion_ids.shape
    out = torch.zeros(n, c, dtype=torch.float32, device=completion_ids.device)
    lengths = completion_mask.sum(1)
    if n == 0 or int(lengths.max()) == 0:
        return out
    split = _split_head(model)
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
    if p > 1:
        if split is not None:
            split[0](**prefix, position_ids=pos[..., : p - 1], cache=cache, use_cache=True)
        else:
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
        if split is not None:
            hidden = split[0](**kw).last_hidden_state  # [r, L, H]
            lp = head_logprobs(hidden[valid], split[1], targets[valid], temperature)  # [T]
            block = torch.zeros(valid.shape, dtype=torch.float32, device=lp.device).masked_scatter(valid, lp)
        else:
            logits = model(**kw).logits.float()  # [r, L, V]
            if temperature != 1.0:
                logits = logits / temperature
            block = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            block = block * valid
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
        logits = model(**kw, use_cache=False, logits_to_keep=c + 1).logits[:, :-1]  # [r, C, V]
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        tok = completion_ids[r0:r1]
        # log p(token) = logit[token] - logsumexp(logits): avoids materialising a second [r, C, V] tensor
        lp = logits.gather(-1, tok[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        out.append(lp)
    return torch.cat(out) * completion_mask.to(torch.float32)
