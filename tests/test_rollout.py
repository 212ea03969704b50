"""Rollouts and log-probs: the shared-prefill / shared-prefix paths change no result.

- greedy completions of the shared-prefill engine equal transformers' ``generate`` token for token;
- log-probs, the GRPO loss and its gradients are the same with and without the shared prefix;
- stop tokens, masks, truncation, ``min_new_tokens`` and row compaction on a scripted model;
- sampling: seeded draws reproduce, top-k / top-p keep exactly the hand-derived token sets.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.model.backbone import BackboneSpec
from univg.rl.loss import grpo_loss_terms
from univg.rl.rollout import (
    EOS_IDS,
    PAD_ID,
    completion_logprobs,
    completion_mask,
    draw_categorical,
    generate,
    head_logprobs,
    sample_next,
)

IM_END, ENDOFTEXT = EOS_IDS
V = 151936


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BackboneSpec(preset="tiny", overrides={"tie_word_embeddings": False}).build()


# ------------------------------------------------------------------------------ shared prefill


def test_greedy_shared_prefill_equals_transformers_generate(model, prompts, tokenizer) -> None:
    hf = generate(model, prompts, tokenizer, group_size=3, max_new_tokens=6, engine="hf")
    shared = generate(model, prompts, tokenizer, group_size=3, max_new_tokens=6, engine="shared")
    assert shared.completion_ids.shape == (6, 6)
    assert torch.equal(shared.completion_ids, hf.completion_ids)
    assert torch.equal(shared.completion_mask, hf.completion_mask)
    assert shared.texts == hf.texts
    # greedy: the G rows of a group agree, and the two prompts' completions differ
    assert torch.equal(shared.completion_ids[0], shared.completion_ids[2])
    assert not torch.equal(shared.completion_ids[0], shared.completion_ids[3])
    assert generate(model, prompts, tokenizer, max_new_tokens=6).completion_ids.tolist() == [
        shared.completion_ids[0].tolist(),
        shared.completion_ids[3].tolist(),
    ]  # "auto" with G = 1


def test_generate_restores_train_mode_and_rejects_bad_input(model, prompts, tokenizer) -> None:
    model.train()
    generate(model, prompts, tokenizer, max_new_tokens=2)
    assert model.training
    right = {k: v.flip(1) if v.dim() == 2 else v for k, v in prompts.items()}  # padding now at the end
    with pytest.raises(ValueError, match="LEFT padded"):
        generate(model, right, tokenizer, max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown rollout engine 'vllm'"):
        generate(model, prompts, tokenizer, engine="vllm")


def test_sampling_is_reproducible_with_a_seed(model, prompts, tokenizer) -> None:
    kw = dict(group_size=4, max_new_tokens=4, do_sample=True)
    torch.manual_seed(7)
    a = generate(model, prompts, tokenizer, **kw).completion_ids
    torch.manual_seed(7)
    b = generate(model, prompts, tokenizer, **kw).completion_ids
    torch.manual_seed(8)
    c = generate(model, prompts, tokenizer, **kw).completion_ids
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # a random tiny model is close to uniform over 151,936 tokens: the 4 rows of a group differ
    assert len({tuple(r) for r in a[:4].tolist()}) == 4
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d = generate(model, prompts, tokenizer, generator=g1, **kw).completion_ids
    e = generate(model, prompts, tokenizer, generator=g2, **kw).completion_ids
    assert torch.equal(d, e)


# ------------------------------------------------------------------------------ scripted model


class ScriptedLM(nn.Module):
    """Text-only stand-in for the policy: the next-token logits depend only on the last input token.

    ``table[tok] = (best, second)``: logit 10 for ``best``, 5 for ``second``, 0 elsewhere. Records
    the batch size of every call, so row compaction is visible.
    """

    def __init__(self, table: dict[int, tuple[int, int]]) -> None:
        super().__init__()
        self.table = table
        self.config = SimpleNamespace(get_text_config=lambda decoder=True: SimpleNamespace(layer_types=None))
        self.batch_sizes: list[int] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        self.batch_sizes.append(int(input_ids.shape[0]))
        logits = torch.zeros(input_ids.shape[0], 1, V)
        for i, tok in enumerate(input_ids[:, -1].tolist()):
            best, second = self.table[tok]
            logits[i, 0, best], logits[i, 0, second] = 10.0, 5.0
        return SimpleNamespace(logits=logits)


@pytest.fixture()
def scripted(monkeypatch):
    # the scripted model has no layers: an empty cache stands in for DynamicCache(config=...)
    from transformers import DynamicCache

    monkeypatch.setattr("transformers.DynamicCache", lambda *a, **k: DynamicCache())
    # prompt 0 ends with 1: 1 -> 2 -> <|im_end|>; prompt 1 ends with 5: 5 -> 6 -> 7 -> 6 -> 7 ... never ends
    # (with the end tokens forbidden: 2 -> 4 -> 9 -> 9 ...)
    table = {
        1: (2, 3),
        2: (IM_END, 4),
        4: (IM_END, 9),
        9: (IM_END, 9),
        5: (6, ENDOFTEXT),
        6: (7, 8),
        7: (6, 8),
    }
    return ScriptedLM(table)


def _text_prompts():
    return {
        "input_ids": torch.tensor([[0, 0, 1], [PAD_ID, 4, 5]]),
        "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]]),
    }


def test_stop_tokens_masks_and_truncation(scripted, tokenizer) -> None:
    r = generate(scripted, _text_prompts(), tokenizer, group_size=2, max_new_tokens=5)
    # rows 0-1 stop at <|im_end|> (kept, masked 1), then PAD; rows 2-3 run the full 5 tokens
    assert r.completion_ids.tolist() == [
        [2, IM_END, PAD_ID, PAD_ID, PAD_ID],
        [2, IM_END, PAD_ID, PAD_ID, PAD_ID],
        [6, 7, 6, 7, 6],
        [6, 7, 6, 7, 6],
    ]
    assert r.completion_mask.tolist() == [[1, 1, 0, 0, 0]] * 2 + [[1] * 5] * 2
    assert r.truncated.tolist() == [False, False, True, True]
    assert r.texts[0] == tokenizer.decode([2]) and r.texts[2] == tokenizer.decode([6, 7, 6, 7, 6])
    # one prefill of the 2 prompts (not 4), decoding on 4 rows, then only the 2 unfinished rows
    assert scripted.batch_sizes == [2, 4, 2, 2, 2]


def test_min_new_tokens_forbids_the_end_tokens(scripted, tokenizer) -> None:
    r = generate(scripted, _text_prompts(), tokenizer, group_size=1, max_new_tokens=4, min_new_tokens=3)
    # after 2 and 4 the best token is <|im_end|>: forbidden for the first 3 tokens, allowed at the 4th
    assert r.completion_ids.tolist() == [[2, 4, 9, IM_END], [6, 7, 6, 7]]
    assert r.truncated.tolist() == [False, True]


def test_all_rows_finished_stops_early(scripted, tokenizer) -> None:
    inputs = {k: v[:1] for k, v in _text_prompts().items()}
    r = generate(scripted, inputs, tokenizer, group_size=3, max_new_tokens=50)
    assert r.completion_ids.shape == (3, 2)  # no decoding past the last end token
    assert not bool(r.truncated.any())


# ------------------------------------------------------------------------------ log-probs


def _completions(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random completions with an end token at varied positions (lengths c, 1, 3, ...) and PAD after."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 150000, (n, c), generator=g)
    for i in range(n):
        end = [c, 1, 3, c - 2, 2, c - 1][i % 6]  # 1-based position of the end token (c: none)
        if end < c:
            ids[i, end - 1] = IM_END
            ids[i, end:] = PAD_ID
    return ids, completion_mask(ids)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_logprobs_identical_with_and_without_shared_prefix(model, prompts, chunk_size) -> None:
    ids, mask = _completions(8, 7)
    assert mask.sum(1).tolist() == [7, 1, 3, 5, 2, 6, 7, 1]
    model.eval()
    with torch.no_grad():  # the reference: prompts repeated, full [N, C, V] logits
        plain = completion_logprobs(model, prompts, ids, mask, 4, shared_prefix=False, tiled_head=False)
        shared = completion_logprobs(model, prompts, ids, mask, 4, chunk_size=chunk_size, shared_prefix=True)
        plain_tiled = completion_logprobs(
            model, prompts, ids, mask, 4, chunk_size=chunk_size, shared_prefix=False
        )
    torch.testing.assert_close(shared, plain, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(plain_tiled, plain, atol=2e-5, rtol=1e-5)
    assert (plain_tiled[mask == 0] == 0).all()
    assert (shared[mask == 0] == 0).all()
    # a real log-probability: negative, near -ln(151936) for a random model
    assert float(shared[mask == 1].mean()) == pytest.approx(-math.log(V), abs=1.0)
    # temperature divides the logits in both paths
    with torch.no_grad():
        hot_plain = completion_logprobs(
            model, prompts, ids, mask, 4, temperature=0.7, shared_prefix=False, tiled_head=False
        )
        hot = completion_logprobs(model, prompts, ids, mask, 4, temperature=0.7, shared_prefix=True)
    torch.testing.assert_close(hot, hot_plain, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(hot, shared)


def _loss_and_grads(model, prompts, ids, mask, adv, ref, shared: bool, tiled_head: bool = True):
    model.zero_grad(set_to_none=True)
    logp = completion_logprobs(model, prompts, ids, mask, 4, shared_prefix=shared, tiled_head=tiled_head)
    terms = grpo_loss_terms(logp, None, ref, adv, torch.ones(8), mask, beta=0.04)
    terms.loss.backward()
    named = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return terms.loss.detach(), named


def test_grpo_loss_and_gradients_identical_with_shared_prefix(model, prompts) -> None:
    ids, mask = _completions(8, 6, seed=1)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 0.0])
    with torch.no_grad():
        ref = completion_logprobs(model, prompts, ids, mask, 4, shared_prefix=False) + 0.01
    model.train()
    loss_a, grads_a = _loss_and_grads(model, prompts, ids, mask, adv, ref, shared=False, tiled_head=False)
    loss_b, grads_b = _loss_and_grads(model, prompts, ids, mask, adv, ref, shared=True)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert "lm_head.weight" in grads_a and "model.language_model.layers.0.self_attn.q_proj.weight" in grads_a
    assert not any(k.startswith("model.visual") for k in grads_a)  # frozen tower
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], atol=1e-6, rtol=1e-4, msg=k)
    model.zero_grad(set_to_none=True)


def test_tiled_head_on_the_repeated_prompt_matches_full_logits(prompts, monkeypatch) -> None:
    # the path of configs/grpo_diff.yaml (gradient checkpointing: prompts repeated) and of FSDP:
    # the head swapped for the tiled log-prob function gives the loss and every gradient of the
    # full [N, C, V] logits, the tied head/embedding included; the model's head is put back after
    torch.manual_seed(0)
    ckpt = BackboneSpec(preset="tiny", gradient_checkpointing=True).build().train()
    head = ckpt.lm_head
    ids, mask = _completions(8, 6, seed=4)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 0.0])
    with torch.no_grad():
        ref = completion_logprobs(ckpt, prompts, ids, mask, 4, shared_prefix=False, tiled_head=False) - 0.02
    loss_a, grads_a = _loss_and_grads(ckpt, prompts, ids, mask, adv, ref, shared=False, tiled_head=False)
    import univg.rl.rollout.logprobs as lp_module

    # the head really went through the tiled function, once, on the real tokens only: lengths
    # 6, 1, 3, 4, 2, 5, 6, 1 (see _completions)
    tiled_rows = []
    real = lp_module.head_logprobs
    monkeypatch.setattr(lp_module, "head_logprobs", lambda h, *a: tiled_rows.append(len(h)) or real(h, *a))
    loss_b, grads_b = _loss_and_grads(ckpt, prompts, ids, mask, adv, ref, shared=False)
    assert tiled_rows == [int(mask.sum())] == [28]
    assert ckpt.lm_head is head and type(head) is nn.Linear
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert any(p is head.weight for n, p in ckpt.named_parameters() if n in grads_a)  # tied: one name
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], atol=1e-6, rtol=1e-4, msg=k)
    ckpt.zero_grad(set_to_none=True)


def test_head_logprobs_with_a_bf16_weight_rounds_logits_like_the_head() -> None:
    # a 16-bit head (FSDP's bf16 all-gathers, a bf16 backbone) is used as it is, no float32 copy of
    # it: each tile's logits are what the bf16 head computes, widened to float32 for the softmax
    torch.manual_seed(1)
    h = torch.randn(11, 8, requires_grad=True)
    w = torch.randn(50, 8).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 50, (11,))
    g = torch.randn(11)
    lp = head_logprobs(h, w, t, temperature=0.8, tile=4)
    (lp * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    logits = (h.to(torch.bfloat16) @ w.t()).float() / 0.8
    ref = torch.log_softmax(logits, -1).gather(1, t[:, None]).squeeze(1)
    (ref * g).sum().backward()
    torch.testing.assert_close(lp, ref.detach(), atol=1e-5, rtol=1e-5)
    assert gh.dtype == torch.float32 and gw.dtype == torch.bfloat16
    # the reference's bf16 matmuls in the backward round more than the tiled float32 accumulation
    torch.testing.assert_close(gh, h.grad, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gw, w.grad, atol=2e-2, rtol=2e-2)


def test_gradient_checkpointing_falls_back_to_the_repeated_prompt(prompts) -> None:
    torch.manual_seed(0)
    ckpt = BackboneSpec(preset="tiny", gradient_checkpointing=True).build().train()
    ids, mask = _completions(8, 5, seed=2)
    auto = completion_logprobs(ckpt, prompts, ids, mask, 4)  # checkpointed layers drop the cache
    plain = completion_logprobs(ckpt, prompts, ids, mask, 4, shared_prefix=False, tiled_head=False)
    torch.testing.assert_close(auto, plain, atol=2e-5, rtol=1e-5)
    auto.sum().backward()
    assert ckpt.lm_head.weight.grad is not None


@pytest.mark.slow
def test_grpo_module_loss_is_the_same_on_both_paths(prompts, processor, monkeypatch) -> None:
    from univg.modules import GRPOModule

    samples = generate_samples(2, tasks=["single"], image_size=56, seed=0)
    batch = GroundingCollator(processor, mode="generate")(samples)
    torch.manual_seed(0)
    m = GRPOModule(backbone=BackboneSpec(preset="tiny"), group_size=4, max_completion_length=6, beta=0.04)
    m.configure_model()
    torch.manual_seed(0)
    scored = m.score(batch)
    assert scored.ref_logp is not None and scored.ref_logp.shape == scored.rollout.completion_ids.shape
    shared = m.loss_terms(scored).loss
    plain_fn = functools.partial(completion_logprobs, shared_prefix=False, tiled_head=False)
    monkeypatch.setattr("univg.modules.grpo.module.completion_logprobs", plain_fn)
    torch.manual_seed(0)
    plain_scored = m.score(batch)
    assert torch.equal(plain_scored.rollout.completion_ids, scored.rollout.completion_ids)
    torch.testing.assert_close(plain_scored.ref_logp, scored.ref_logp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(m.loss_terms(plain_scored).loss, shared, atol=1e-5, rtol=1e-5)


def test_head_logprobs_gradients_match_autograd() -> None:
    torch.manual_seed(0)
    h = torch.randn(13, 6, requires_grad=True)
    w = torch.randn(40, 6, requires_grad=True)
    t = torch.randint(0, 40, (13,))
    g = torch.randn(13)
    (head_logprobs(h, w, t, temperature=0.5, tile=4) * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.log_softmax(h @ w.t() / 0.5, -1).gather(1, t[:, None]).squeeze(1)
    (ref * g).sum().backward()
    torch.testing.assert_close(gh, h.grad)
    torch.testing.assert_close(gw, w.grad)


# ------------------------------------------------------------------------------ sampling


def test_draw_categorical_frequencies_and_zero_weights() -> None:
    g = torch.Generator().manual_seed(0)
    # weights spread over several 1024-wide blocks and a short last block; zeros never drawn
    w = torch.zeros(1, 5000)
    w[0, [3, 1500, 4999]] = torch.tensor([1.0, 2.0, 1.0])
    draws = draw_categorical(w.expand(20000, -1), g)
    counts = torch.bincount(draws, minlength=5000)
    assert set(torch.nonzero(counts).squeeze(1).tolist()) == {3, 1500, 4999}
    # expected 5000 / 10000 / 5000; 4 standard deviations is about 250
    assert abs(int(counts[3]) - 5000) < 250 and abs(int(counts[1500]) - 10000) < 300
    # one row with all weight on one class: always that class
    assert draw_categorical(torch.eye(6)[[4, 0]], g).tolist() == [4, 0]


def test_top_k_and_top_p_keep_the_hand_derived_sets() -> None:
    torch.manual_seed(0)
    # probabilities 0.6, 0.3, 0.1 (logits log p) and ~0 elsewhere
    logits = torch.full((1, 50), -30.0)
    logits[0, [7, 11, 2]] = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    rows = logits.expand(3000, -1)
    # greedy and top-k 1 pick the argmax
    assert set(sample_next(rows, do_sample=False).tolist()) == {7}
    assert set(sample_next(rows, do_sample=True, top_k=1).tolist()) == {7}
    # top-p 0.5: the smallest set with mass >= 0.5 is {7}; 0.8 adds 11; 0.95 adds 2
    assert set(sample_next(rows, do_sample=True, top_p=0.5).tolist()) == {7}
    assert set(sample_next(rows, do_sample=True, top_p=0.8).tolist()) == {7, 11}
    assert set(sample_next(rows, do_sample=True, top_p=0.95).tolist()) == {7, 11, 2}
    # top-k 2 renormalises over {7, 11}: 2/3 of the draws are 7
    d = sample_next(rows, do_sample=True, top_k=2)
    assert set(d.tolist()) == {7, 11}
    assert float((d == 7).float().mean()) == pytest.approx(2 / 3, abs=0.04)


# ------------------------------------------------------------------------------ benchmark smoke


@pytest.mark.slow
def test_benchmark_quick_mode_runs(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_step.py"
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(script), "--quick", "--prompts", "1", "--variants", "ours,trl-completion-only"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours vs trl-completion-only:" in proc.stdout
    assert "completions_per_step=8" in proc.stdout


def test_lora_policy_and_reference_on_the_shared_prefix(prompts) -> None:
    from univg.model.backbone import LoRASpec

    torch.manual_seed(0)
    lora = BackboneSpec(preset="tiny", lora=LoRASpec(r=4, dropout=0.0)).build().train()
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (adapter = identity): make the adapter matter
            torch.nn.init.normal_(p, std=0.5)
    ids, mask = _completions(8, 5, seed=3)
    plain = completion_logprobs(lora, prompts, ids, mask, 4, shared_prefix=False, tiled_head=False)
    shared = completion_logprobs(lora, prompts, ids, mask, 4, shared_prefix=True)
    torch.testing.assert_close(shared, plain, atol=2e-5, rtol=1e-5)
    shared.sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)
    with torch.no_grad(), lora.disable_adapter():
        ref_plain = completion_logprobs(lora, prompts, ids, mask, 4, shared_prefix=False, tiled_head=False)
        ref_shared = completion_logprobs(lora, prompts, ids, mask, 4, shared_prefix=True)
    torch.testing.assert_close(ref_shared, ref_plain, atol=2e-5, rtol=1e-5)
    assert (ref_shared - shared.detach()).abs().max() > 1e-3  # the adapter changed the policy
