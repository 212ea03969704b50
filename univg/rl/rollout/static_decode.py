"""A capture-safe decode loop: a static KV cache, fixed shapes every step, no host sync per token.

:func:`univg.rl.rollout.generate` (``engine="shared"``) prefills each prompt once and repeats its
cache G times; the eager loop then drops finished rows and asks the host every token whether it may
stop. :class:`StaticDecoder` decodes the same G continuations so that one decode step is the same
computation every time, which ``torch.compile`` can turn into one graph (CPU: inductor; CUDA:
``mode="reduce-overhead"``, i.e. CUDA graphs):

- **cache**: a transformers ``StaticCache`` of ``prompt length + max_new_tokens`` slots (rounded up to
  ``cache_len_multiple``, so prompts of nearby lengths reuse one captured graph), allocated once and
  kept between calls while the shape holds; the repeated prompt keys/values are copied into its
  first slots. Each step writes its token's keys/values at the cache's own (device) counter;
  slots past it are hidden by the causal mask, the padding of each prompt by a fixed
  ``[N, cache length]`` attention mask.
- **finished rows stay in the batch**: their next token is forced to PAD and their log-prob to 0;
  what they compute is never read. M-RoPE positions are each row's ``prompt end + 1 + t``, as in
  the eager loop.
- **stop test every ``stop_check_every`` tokens**: the only host syncs; at most that many - 1
  steps run after the last row ended, and the completions are cut where the eager loop cuts them.
- **draws**: the same :func:`~univg.rl.rollout.draw.sampling_logits` and inverse-CDF draw as the
  eager loop. On CPU the random numbers are the ones the eager loop takes from the generator (it
  takes one per unfinished row and step): a window's numbers are drawn ahead, handed out to the
  unfinished rows in order on device, and at the stop test the generator is put where the eager
  loop would have left it. So the same seed gives the same completions, as far as the logits are
  the same: attending over the whole (masked) cache can round the last bit differently from the
  eager loop's shorter one, and a draw next to a token boundary then takes the neighbour (in
  float64 the two loops agree bit for bit). On other devices each step takes one number per row
  (the same distribution, another stream).

Only the model's forward is compiled (the draw keeps its generator outside the graph).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

from univg.rl.rollout.batch import EOS_IDS, PAD_ID, SUPPRESS_IDS, _hf_model
from univg.rl.rollout.draw import draw, sampling_logits

#: ``torch.compile`` modes of the decode step (a typed knob: a typo fails at parse time).
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

#: Devices whose draws take the eager loop's random numbers (elsewhere the eager loop draws with
#: ``torch.multinomial``, another stream anyway).
EAGER_STREAM_DEVICES: tuple[str, ...] = ("cpu",)


def _forward(
    model: nn.Module, cache: Any, tok: torch.Tensor, pos: torch.Tensor, att: torch.Tensor
) -> torch.Tensor:
    """One decode step: logits [N, V] of the next token after ``tok`` [N, 1] at ``pos`` [3, N, 1]."""
    out = model(input_ids=tok, attention_mask=att, position_ids=pos, cache=cache, use_cache=True)
    return out.logits[:, -1]


class StaticDecoder:
    """The decode loop of the shared-prefill engine with a static cache (see the module docstring).

    Keeps its cache (and compiled step) between calls, one instance per engine: a new cache would
    be a new graph input to compile or capture again. That cache holds 2 x layers x rows x KV heads
    x length x head dim values (7B, 16 rows x 1,792 slots in bf16: ~1.6 GB) until :meth:`release`
    or a call of another shape.

    Args:
        compile: run the decode step through ``torch.compile``.
        stop_check_every: decode steps between two stop tests (host syncs).
        cache_len_multiple: the cache length is rounded up to a multiple of this (fewer distinct
            shapes to compile or capture).
        compile_mode: ``torch.compile``'s mode; None: "reduce-overhead" on CUDA, the default elsewhere.
    """

    def __init__(
        self,
        compile: bool = False,
        stop_check_every: int = 8,
        cache_len_multiple: int = 64,
        compile_mode: CompileMode | None = None,
    ) -> None:
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile_mode {compile_mode!r}; choose one of {COMPILE_MODES}")
        if stop_check_every < 1:
            raise ValueError(f"stop_check_every must be >= 1, got {stop_check_every}")
        if cache_len_multiple < 1:
            raise ValueError(f"cache_len_multiple must be >= 1, got {cache_len_multiple}")
        self.compile = compile
        self.stop_check_every = stop_check_every
        self.cache_len_multiple = cache_len_multiple
        self.compile_mode = compile_mode
        self._cache: Any = None
        self._cache_key: tuple | None = None
        self._compiled: dict[str | None, Any] = {}
        #: decode steps run by the last call (stop tests make it up to ``stop_check_every`` - 1 more
        #: than the completions' length)
        self.last_steps = 0

    def release(self) -> None:
        """Free the cache (the next call allocates it again)."""
        self._cache = self._cache_key = None

    def __getstate__(self) -> dict[str, Any]:  # the cache and compiled step are rebuilt on first use
        return {**self.__dict__, "_cache": None, "_cache_key": None, "_compiled": {}}

    def __repr__(self) -> str:
        return (
            f"StaticDecoder(compile={self.compile}, stop_check_every={self.stop_check_every}, "
            f"cache_len_multiple={self.cache_len_multiple}, compile_mode={self.compile_mode!r})"
        )

    # ------------------------------------------------------------------------------------ pieces
    def _step_fn(self, device: torch.device) -> Any:
        if not self.compile:
            return _forward
        mode = self.compile_mode
        if mode is None and device.type == "cuda":
            mode = "reduce-overhead"
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(_forward, mode=mode)
        return self._compiled[mode]

    def static_cache(self, model: nn.Module, prompt_cache: Any, length: int) -> Any:
        """A static cache of ``length`` slots holding ``prompt_cache``'s keys/values (a repeated
        ``DynamicCache`` of N rows) in its first slots, its counter at the prompt length."""
        from transformers import StaticCache

        src = prompt_cache.layers
        k0 = src[0].keys
        key = (id(_hf_model(model)), len(src), tuple(k0.shape[:2]), k0.shape[-1], length, k0.dtype, k0.device)
        if self._cache_key != key:
            self._cache = None  # free the old one first
            cache = StaticCache(config=_hf_model(model).config, max_cache_len=length)
            if len(cache.layers) != len(src):
                raise ValueError(f"static cache: {len(cache.layers)} layers, the prompt's cache {len(src)}")
            for layer, s in zip(cache.layers, src):
                layer.lazy_initialization(s.keys, s.values)
            self._cache, self._cache_key = cache, key
        p = k0.shape[2]
        for layer, s in zip(self._cache.layers, src):
            layer.keys[:, :, :p].copy_(s.keys)
            layer.values[:, :, :p].copy_(s.values)
            layer.cumulative_length.fill_(p)
        return self._cache

    # ------------------------------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(
        self,
        model: nn.Module,
        prompt_cache: Any,
        logits: torch.Tensor,
        prompt_mask: torch.Tensor,
        next_pos: torch.Tensor,
        max_new_tokens: int,
        min_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        generator: torch.Generator | None = None,
        record_logprobs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode N rows from their prefill: ``prompt_cache`` (N rows of P positions), the first
        ``logits`` [N, V], ``prompt_mask`` [N, P] and ``next_pos`` [N] (each row's M-RoPE position of
        its first new token). Returns ids [N, C] (C <= ``max_new_tokens``) and, with
        ``record_logprobs``, the drawn tokens' log-probs [N, C]."""
        n, p = prompt_mask.shape
        device = logits.device
        steps = max_new_tokens
        length = -(-(p + steps) // self.cache_len_multiple) * self.cache_len_multiple
        cache = self.static_cache(model, prompt_cache, length)
        att = torch.cat([prompt_mask, prompt_mask.new_ones(n, length - p)], dim=1)  # [N, L]: fixed
        step = self._step_fn(device)
        cudagraphs = self.compile and device.type == "cuda"

        eos = torch.tensor(EOS_IDS, device=device)
        suppress = torch.tensor(SUPPRESS_IDS, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        tokens = torch.full((n, steps), PAD_ID, dtype=torch.long, device=device)
        logp = torch.zeros(n, steps, device=device) if record_logprobs else None
        k = self.stop_check_every
        # the eager loop's random numbers (CPU): one per unfinished row and step, in row order
        pooled = do_sample and device.type in EAGER_STREAM_DEVICES
        gen = generator if generator is not None else torch.default_generator
        pool = offset = state = None

        ran = 0
        for t in range(steps):
            if pooled and t % k == 0:
                state = gen.get_state()
                pool = torch.rand(n * min(k, steps - t), generator=gen, dtype=torch.float64)
                offset = torch.zeros((), dtype=torch.long)
            logits = logits.index_fill(1, suppress, float("-inf"))
            if t < min_new_tokens:
                logits = logits.index_fill(1, eos, float("-inf"))
            if do_sample:
                processed = sampling_logits(logits, temperature, top_p, top_k)  # [N, V]
                if pooled:
                    active = ~done
                    rank = active.long().cumsum(0) - 1  # [N]: index among the unfinished rows
                    u = pool[(offset + rank).clamp(0, pool.numel() - 1)][:, None]
                    offset = offset + active.sum()
                else:
                    u = torch.rand(n, 1, generator=generator, dtype=torch.float64, device=device)
                tok = draw(processed, uniform=u)
                if logp is not None:
                    lp = torch.log_softmax(processed, -1).gather(1, tok[:, None]).squeeze(1)
                    logp[:, t] = lp.masked_fill(done, 0.0)
            else:
                tok = logits.argmax(dim=-1)
            tok = tok.masked_fill(done, PAD_ID)
            tokens[:, t] = tok
            done = done | torch.isin(tok, eos)
            ran = t + 1
            if ran % k == 0 or ran == steps:  # the stop test: the only host sync
                if pooled:
                    all_done, used = torch.stack([done.all().long(), offset]).tolist()
                    if used != pool.numel():  # put the generator where the eager loop leaves it
                        gen.set_state(state)
                        if used:
                            torch.rand(used, generator=gen, dtype=torch.float64)
                else:
                    all_done = bool(done.all())
                if all_done or ran == steps:
                    break
            pos = (next_pos + t).view(1, n, 1).expand(3, n, 1)
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            logits = step(model, cache, tok[:, None], pos, att)
        self.last_steps = ran
        tokens = tokens[:, :ran]
        # cut where the eager loop stops: after the last row's first end token (or at ran)
        is_end = torch.isin(tokens, eos)
        ends = torch.where(is_end.any(1), is_end.long().argmax(1) + 1, ran)
        c = int(ends.max())
        return tokens[:, :c], (logp[:, :c] if logp is not None else None)
