"""The capture-safe decode loop (static KV cache, fixed shapes, stop test every k tokens) decodes what
the eager loop decodes.

On the tiny random Qwen2-VL, its ``<|im_end|>`` row of the head scaled up so that completions end
at different steps (greedy: per prompt; sampled: per row):

- in float64 (where the static cache's longer, masked attention rounds like the eager loop's):
  the raw outputs (tokens, PAD and log-prob 0 after a row's end, the completions' length) and the
  generator's state afterwards are bit for bit the eager loop's, greedy and sampled, for several
  stop-test intervals, left-padded image and text-only prompts of different lengths,
  ``min_new_tokens``, top-k / top-p / temperature, the global RNG, with and without ``torch.compile``;
- in float32 (the models' dtype): greedy completions equal the eager loop's and transformers'
  ``generate`` (dynamic and static cache), the draws take the same random numbers and their
  log-probs agree to float rounding (a draw next to a token boundary can then pick the neighbour);
  the per-step stream of other devices samples the eager loop's distribution (a chi-square test);
- the engine's options: eager by default, typed and validated.
"""

from __future__ import annotations

import copy

import pytest
import torch

from univg.engines import HFGenerate, SharedPrefill
from univg.model.backbone import BackboneSpec
from univg.model.tokenizer import IMAGE_TOKEN_ID
from univg.rl.rollout import (
    EOS_IDS,
    PAD_ID,
    SamplingSpec,
    explicit_generation_config,
    generate,
    repeat_prompts,
)
from univg.rl.rollout.sampling import generate_shared
from univg.rl.rollout.static_decode import StaticDecoder

IM_END = EOS_IDS[0]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_prompts(tokenizer):
    """Three text-only prompts of 3 lengths, left padded by hand."""
    rows = [tokenizer.encode(t) for t in ("a red box", "where is the small blue cup on the table", "hi")]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def _ending_model(dtype: torch.dtype) -> torch.nn.Module:
    """The tiny random model with its ``<|im_end|>`` head row x80: rows end at various steps."""
    torch.manual_seed(0)
    m = BackboneSpec(preset="tiny", overrides={"tie_word_embeddings": False}).build().eval()
    with torch.no_grad():
        m.lm_head.weight[IM_END] *= 80
    return m.to(dtype)


@pytest.fixture(scope="module")
def model():
    return _ending_model(torch.float64)


@pytest.fixture(scope="module")
def model32():
    return _ending_model(torch.float32)


@pytest.fixture(scope="module")
def decoder():
    """One decoder for the module: its cache is reused (and overwritten) from call to call."""
    return StaticDecoder(stop_check_every=3)


def _settings(**kw):
    base = dict(
        group_size=2,
        max_new_tokens=12,
        min_new_tokens=0,
        do_sample=False,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        record_logprobs=False,
    )
    return {**base, **kw}


def _raw(model, inputs, static_decoder, seed=5, **kw):
    """Raw ids, log-probs of ``generate_shared`` with a fresh generator, and that generator's next number."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ids, logp = generate_shared(
            model, dict(inputs), generator=g, static_decoder=static_decoder, **_settings(**kw)
        )
    return ids, logp, torch.rand(4, generator=g)


def _assert_same(eager, static, logp_atol=0.0):
    """Bit for bit: ids, log-probs (or to ``logp_atol``) and the generator's next numbers."""
    ids_e, logp_e, next_e = eager
    ids_s, logp_s, next_s = static
    assert ids_s.shape == ids_e.shape
    assert torch.equal(ids_s, ids_e)
    assert torch.equal(next_s, next_e)  # the generator is where the eager loop leaves it
    assert (logp_s is None) == (logp_e is None)
    if logp_e is not None:
        torch.testing.assert_close(logp_s, logp_e, atol=logp_atol, rtol=0)
        assert torch.equal(logp_s == 0, logp_e == 0)


def _ends(ids):
    """1-based position of each row's first end token (0: none)."""
    is_end = torch.isin(ids, torch.tensor(EOS_IDS))
    return torch.where(is_end.any(1), is_end.long().argmax(1) + 1, 0).tolist()


# ------------------------------------------------------------------------------------ greedy


@pytest.mark.parametrize("every", [1, 3, 5, 64])
def test_greedy_raw_outputs_equal_the_eager_loop(model, prompts, every) -> None:
    eager = _raw(model, prompts, None)
    static = _raw(model, prompts, StaticDecoder(stop_check_every=every))
    _assert_same(eager, static)
    # the two prompts end at different steps, PAD after; the loop stopped after the last end
    assert _ends(eager[0]) == [9, 9, 4, 4]
    assert eager[0].shape == (4, 9)
    assert (eager[0][2:, 4:] == PAD_ID).all()


def test_greedy_equals_transformers_generate_in_float32(model32, prompts, tokenizer, decoder) -> None:
    kw = dict(group_size=2, max_new_tokens=12)
    static = generate(model32, prompts, tokenizer, static_decoder=decoder, **kw)
    eager = generate(model32, prompts, tokenizer, **kw)
    hf = generate(model32, prompts, tokenizer, engine="hf", **kw)
    assert torch.equal(static.completion_ids, eager.completion_ids)
    assert torch.equal(static.completion_ids, hf.completion_ids)
    assert static.texts == hf.texts and static.truncated.tolist() == hf.truncated.tolist() == [False] * 4
    assert _ends(static.completion_ids) == [9, 9, 4, 4]
    # transformers' own static cache
    from transformers import GenerationConfig

    config = explicit_generation_config(2, 12, 0, False, 1.0, 1.0, 0)
    config.cache_implementation = "static"
    own, model32.generation_config = model32.generation_config, GenerationConfig()
    try:
        with torch.no_grad():
            out = model32.generate(**repeat_prompts(prompts, 2), generation_config=config)
    finally:
        model32.generation_config = own
    assert torch.equal(out.sequences[:, prompts["input_ids"].shape[1] :], static.completion_ids)


def test_sampled_in_float32_equal_up_to_rounding(model32, prompts) -> None:
    kw = dict(group_size=6, do_sample=True, record_logprobs=True)
    (ids_e, logp_e, next_e), (ids_s, logp_s, next_s) = (
        _raw(model32, prompts, d, seed=1, **kw) for d in (None, StaticDecoder(stop_check_every=3))
    )
    # each row agrees up to its first different token (a draw next to a token boundary), its
    # log-probs to float rounding there
    c = min(ids_e.shape[1], ids_s.shape[1])
    same = (ids_e[:, :c] == ids_s[:, :c]).long().cumprod(1).bool()  # [N, c]: the common prefix
    assert float(same.float().mean()) > 0.9
    torch.testing.assert_close(logp_s[:, :c][same], logp_e[:, :c][same], atol=1e-5, rtol=0)


def _chi2_critical(df: int, z: float = 3.72) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.72: p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_device_stream_samples_the_same_distribution(model32, prompts, monkeypatch) -> None:
    # other devices take one number per row and step from the generator: another stream of the
    # same distribution. Run that path on CPU and compare each prompt's (token 1, token 2) pairs
    # with the eager loop's, from another seed
    import univg.rl.rollout.static_decode as sd

    monkeypatch.setattr(sd, "EAGER_STREAM_DEVICES", ())
    kw = dict(group_size=300, max_new_tokens=2, do_sample=True, top_k=3)
    ids_e = _raw(model32, prompts, None, seed=12, **kw)[0]
    ids_s = _raw(model32, prompts, StaticDecoder(), seed=13, **kw)[0]  # independent samples
    for rows in (slice(0, 300), slice(300, 600)):
        pairs_e = [tuple(r) for r in ids_e[rows].tolist()]
        pairs_s = [tuple(r) for r in ids_s[rows].tolist()]
        cats = sorted(set(pairs_e) | set(pairs_s))
        assert len(cats) > 3
        stat = 0.0
        for cat in cats:
            a, b = pairs_e.count(cat), pairs_s.count(cat)
            stat += (a - b) ** 2 / (a + b)  # two samples of equal size
        assert stat < _chi2_critical(len(cats) - 1), (stat, cats)


def test_text_only_prompts_of_three_lengths(model, text_prompts, decoder) -> None:
    for kw in (dict(group_size=2), dict(group_size=3, do_sample=True, record_logprobs=True)):
        eager = _raw(model, text_prompts, None, seed=2, **kw)
        _assert_same(eager, _raw(model, text_prompts, decoder, seed=2, **kw))
    assert len(set(_ends(eager[0]))) > 2


def test_vision_tokens_are_never_decoded(model, prompts) -> None:
    # the image token's head row made the most likely token everywhere: suppressed in both loops
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.lm_head.weight[IMAGE_TOKEN_ID] = m.lm_head.weight[IM_END] * 10
    for kw in (dict(group_size=2), dict(group_size=3, do_sample=True, record_logprobs=True)):
        eager = _raw(m, prompts, None, **kw)
        _assert_same(eager, _raw(m, prompts, StaticDecoder(), **kw))
        assert not (eager[0] == IMAGE_TOKEN_ID).any()


# ------------------------------------------------------------------------------------ sampled


@pytest.mark.parametrize("every", [1, 3, 5, 64])
def test_sampled_raw_outputs_and_generator_equal_the_eager_loop(model, prompts, every) -> None:
    kw = dict(group_size=6, do_sample=True, record_logprobs=True)
    eager = _raw(model, prompts, None, seed=1, **kw)
    _assert_same(eager, _raw(model, prompts, StaticDecoder(stop_check_every=every), seed=1, **kw))
    ends = _ends(eager[0])
    assert len(set(ends)) >= 5 and 0 in ends  # rows end at many different steps; some never
    logp = eager[1]
    assert (logp[eager[0] == PAD_ID] == 0).all() and (logp[:, 0] < 0).all()


def test_sampled_all_rows_end_early_and_stop_within_the_check_interval(model, prompts) -> None:
    kw = dict(group_size=4, max_new_tokens=40, do_sample=True, record_logprobs=True)
    decoder = StaticDecoder(stop_check_every=4)
    eager = _raw(model, prompts, None, seed=3, **kw)
    _assert_same(eager, _raw(model, prompts, decoder, seed=3, **kw))
    c = eager[0].shape[1]
    assert 0 not in _ends(eager[0]) and c < 40  # every row ended
    assert c <= decoder.last_steps < c + 4 and decoder.last_steps % 4 == 0


@pytest.mark.parametrize(
    "warp", [dict(temperature=0.7, top_k=50), dict(top_p=0.9), dict(temperature=1.3, top_p=0.95, top_k=1000)]
)
def test_sampling_warpers(model, prompts, decoder, warp) -> None:
    kw = dict(group_size=4, do_sample=True, record_logprobs=True, **warp)
    _assert_same(_raw(model, prompts, None, seed=4, **kw), _raw(model, prompts, decoder, seed=4, **kw))


def test_global_rng_is_used_like_the_eager_loop(model, prompts, tokenizer, decoder) -> None:
    kw = dict(group_size=4, max_new_tokens=12, do_sample=True)
    torch.manual_seed(11)
    eager = generate(model, prompts, tokenizer, **kw)
    after_eager = torch.rand(3)
    torch.manual_seed(11)
    static = generate(model, prompts, tokenizer, static_decoder=decoder, **kw)
    assert torch.equal(static.completion_ids, eager.completion_ids)
    assert torch.equal(torch.rand(3), after_eager)


def test_min_new_tokens(model, prompts, decoder) -> None:
    for kw in (dict(group_size=2, min_new_tokens=6), dict(group_size=4, min_new_tokens=6, do_sample=True)):
        eager = _raw(model, prompts, None, seed=6, **kw)
        _assert_same(eager, _raw(model, prompts, decoder, seed=6, **kw))
        ends = _ends(eager[0])
        assert min(e for e in ends if e) > kw["min_new_tokens"]
    without = _raw(model, prompts, None, seed=6, group_size=4, do_sample=True)
    assert min(e for e in _ends(without[0]) if e) <= 6  # the bound is not vacuous


def test_cache_is_reused_and_reallocated(model, prompts, text_prompts) -> None:
    decoder = StaticDecoder(cache_len_multiple=1)
    _raw(model, prompts, decoder)
    cache = decoder._cache
    _raw(model, prompts, decoder, group_size=2, do_sample=True)  # same shape: the same cache
    assert decoder._cache is cache
    assert cache.layers[0].keys.shape[2] == prompts["input_ids"].shape[1] + 12
    _assert_same(_raw(model, text_prompts, None), _raw(model, text_prompts, decoder))  # another shape
    assert decoder._cache is not cache
    _assert_same(_raw(model, prompts, None), _raw(model, prompts, decoder))  # back again, stale slots


# ------------------------------------------------------------------------------------ compiled


@pytest.mark.slow
def test_compiled_decode_step_equals_the_eager_loop(model, model32, prompts, tokenizer) -> None:
    decoder = StaticDecoder(compile=True, stop_check_every=3)
    # one shape (8 rows, one cache length) per dtype
    for kw in (
        dict(group_size=4),
        dict(group_size=4, do_sample=True, record_logprobs=True),
        dict(group_size=4, do_sample=True, min_new_tokens=5, top_k=50),
    ):
        eager, static = (_raw(model, prompts, d, seed=8, **kw) for d in (None, decoder))
        _assert_same(eager, static, logp_atol=1e-6)  # inductor's fused kernels round otherwise
    # float32, through the engine: greedy equals transformers' generate
    hf = generate(model32, prompts, tokenizer, group_size=4, max_new_tokens=12, engine="hf")
    ours = SharedPrefill(compile=True)
    ours.static_decoder = decoder  # its compiled step, recompiled for float32
    roll = ours.generate(model32, prompts, tokenizer, _greedy_spec(4, 12))
    assert torch.equal(roll.completion_ids, hf.completion_ids)


def _greedy_spec(g, t):
    return SamplingSpec(group_size=g, max_new_tokens=t, do_sample=False)


# ------------------------------------------------------------------------------------ engine


def test_engine_options(model32, prompts, tokenizer) -> None:
    assert SharedPrefill().static_decoder is None  # eager by default
    engine = SharedPrefill(static_cache=True, stop_check_every=2, cache_len_multiple=16)
    d = engine.static_decoder
    assert (d.compile, d.stop_check_every, d.cache_len_multiple) == (False, 2, 16)
    assert SharedPrefill(compile=True).static_cache  # compile implies the static cache
    with pytest.raises(ValueError, match="stop_check_every"):
        SharedPrefill(static_cache=True, stop_check_every=0)
    with pytest.raises(ValueError, match="compile_mode"):
        SharedPrefill(compile=True, compile_mode="reduce_overhead")
    spec = _greedy_spec(2, 12)
    a = engine.generate(model32, prompts, tokenizer, spec)
    b = SharedPrefill().generate(model32, prompts, tokenizer, spec)
    c = HFGenerate().generate(model32, prompts, tokenizer, spec)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_ids, c.completion_ids)
    assert d._cache is not None  # the static loop ran
    # a pickled engine (checkpoints, spawned workers) carries its options, not its cache
    import pickle

    again = pickle.loads(pickle.dumps(engine))
    assert again.static_decoder._cache is None and again.static_decoder.stop_check_every == 2
    assert copy.deepcopy(engine).static_decoder._cache is None
