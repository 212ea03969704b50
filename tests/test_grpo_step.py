"""GRPO on the path users run: schedule length, generation settings, one scoring arithmetic,
evaluation IoU, step-wide statistics, accumulation, num_iterations, per-source format.

The expected numbers are derived by hand in the comments.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scripted_engine import Scripted

from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.model.backbone import BackboneSpec
from univg.modules import GroundingModule, GRPOModule
from univg.rl.rewards import compute_rewards, iou_reward
from univg.rl.rollout import generate, model_inputs


@pytest.fixture(scope="module")
def four_prompts(processor):
    samples = generate_samples(4, tasks=["single"], image_size=56, seed=1)
    return GroundingCollator(processor, mode="generate")(samples)


def _module(**kw) -> GRPOModule:
    torch.manual_seed(0)
    kw.setdefault("group_size", 4)
    kw.setdefault("max_completion_length", 8)
    m = GRPOModule(backbone=kw.pop("backbone", BackboneSpec(preset="tiny")), **kw)
    m.configure_model()
    return m


def _answer(box) -> str:
    return f"<think>t</think><answer>({box[0]}, {box[1]}), ({box[2]}, {box[3]})</answer>"


# --------------------------------------------------------------------------------- 1. lr schedule
def _fake_trainer(batches: int, batch_size: int, max_steps: int = -1, world_size: int = 1):
    return SimpleNamespace(
        num_training_batches=batches,
        train_dataloader=SimpleNamespace(batch_size=batch_size),
        max_epochs=1,
        max_steps=max_steps,
        world_size=world_size,
        estimated_stepping_batches=batches,  # what Lightning reports under manual optimisation
    )


def test_grpo_schedule_counts_optimiser_steps_not_micro_batches():
    # GRPOModule's defaults: cosine, 1.5% warm-up; 16 micro-batches of 1 prompt, 4 prompts per step
    # -> 4 optimiser steps, warm-up ceil(0.015 * 4) = 1 step. By hand: step 0 warm-up 1/1 = 1.0;
    # steps 1..3 at progress 0, 1/3, 2/3: 0.5 (1 + cos(pi p)) = 1.0, 0.75, 0.25; after the last: 0.
    m = GRPOModule(prompts_per_step=4)
    m._trainer = _fake_trainer(batches=16, batch_size=1)
    assert m.optimizer_steps_total() == 4
    assert [round(m.lr_multiplier(k), 6) for k in range(5)] == [1.0, 1.0, 0.75, 0.25, 0.0]
    # (sized by micro-batches it would be 16 long: the 4 steps at 1.0, 1.0, 0.989, 0.957 of the peak)
    # num_iterations and max_steps count optimiser steps too
    m2 = GRPOModule(prompts_per_step=4, num_iterations=2)
    m2._trainer = _fake_trainer(batches=16, batch_size=1)
    assert m2.optimizer_steps_total() == 8
    m3 = GRPOModule(prompts_per_step=4)
    m3._trainer = _fake_trainer(batches=16, batch_size=2, max_steps=1)
    assert m3.optimizer_steps_total() == 1
    # a partial last step of the epoch is a step: 10 micro-batches of 1 with 4 per step -> 3
    m4 = GRPOModule(prompts_per_step=4)
    m4._trainer = _fake_trainer(batches=10, batch_size=1)
    assert m4.optimizer_steps_total() == 3


def test_schedules_match_transformers_after_the_warm_up():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup, get_linear_schedule_with_warmup

    from univg.modules.schedule import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    total, warm = 20, 3
    cos = get_cosine_with_min_lr_schedule_with_warmup(opt, warm, total, min_lr_rate=0.1).lr_lambdas[0]
    lin = get_linear_schedule_with_warmup(opt, 0, total).lr_lambdas[0]
    for k in range(warm, total + 1):
        assert warmup_cosine(k, total, warm, "cosine", 0.1) == pytest.approx(cos(k), abs=1e-9)
    for k in range(total + 1):  # the release's GRPO schedule: linear to 0, no warm-up
        assert warmup_cosine(k, total, 0, "linear") == pytest.approx(lin(k), abs=1e-9)
    # the one difference, documented: our warm-up trains at step 0 (1/3 of the peak), theirs at 0
    assert warmup_cosine(0, total, warm) == pytest.approx(1 / 3) and cos(0) == 0.0


# --------------------------------------------------------------------------------- 2. generation settings
def _bias_head_model(tokenizer_vocab: int = 151657):
    """A tiny model whose logits are a fixed bias (final norm zeroed): token 0 first, 1 and 5 just
    behind, everything else far below, so a repetition penalty changes the greedy choice."""
    model = BackboneSpec(preset="tiny").build().eval()
    model.model.language_model.norm.weight.data.zero_()
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight.data.zero_()
    head.bias.data.fill_(-10.0)
    head.bias.data[[0, 1, 5, 2, 3]] = torch.tensor([1.0, 0.99, 0.98, 0.97, 0.96])
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model, head.bias.detach().clone()


def _penalising(model) -> None:
    # what Qwen2-VL-7B-Instruct's generation_config.json ships
    gc = model.generation_config
    gc.repetition_penalty, gc.top_k, gc.top_p, gc.temperature, gc.do_sample = 1.05, 1, 0.001, 0.01, True


def test_hf_engine_ignores_the_checkpoints_generation_config(four_prompts, tokenizer):
    model, _ = _bias_head_model()
    _penalising(model)
    inputs = model_inputs(four_prompts)
    shared = generate(model, inputs, tokenizer, max_new_tokens=6, engine="shared")
    hf = generate(model, inputs, tokenizer, max_new_tokens=6, engine="hf")
    assert shared.completion_ids[0].tolist() == [0] * 6
    # the model's repetition_penalty 1.05 is not applied (with it, transformers gives [0, 1, 5, 2, 3, ...])
    assert torch.equal(hf.completion_ids, shared.completion_ids)
    assert model.generation_config.repetition_penalty == 1.05  # the model's own config is left as it was


@pytest.mark.parametrize("engine", ["shared", "hf"])
def test_sampled_distribution_is_the_scored_one(four_prompts, tokenizer, engine):
    model, bias = _bias_head_model()
    _penalising(model)
    torch.manual_seed(0)
    roll = generate(
        model,
        model_inputs(four_prompts),
        tokenizer,
        group_size=3,
        max_new_tokens=8,
        do_sample=True,
        temperature=0.005,  # sharp: token 0 is drawn again and again, where a penalty would bite
        top_k=0,
        engine=engine,
        record_logprobs=True,
    )
    # independent: the logits are the bias, so log p(token) = log_softmax(bias / T)[token]
    expected = torch.log_softmax(bias / 0.005, -1)[roll.completion_ids] * roll.completion_mask
    assert (roll.completion_ids[:, :3] == 0).float().mean() > 0.5
    assert torch.allclose(roll.sampler_logp, expected, atol=1e-4)


# --------------------------------------------------------------------------------- 3. one scoring arithmetic
def test_policy_and_reference_are_scored_alike_in_bf16_with_checkpointing(four_prompts, tokenizer):
    m = _module(beta=0.04, backbone=BackboneSpec(preset="tiny", gradient_checkpointing=True))
    with torch.no_grad():
        for model in (m.model, m.ref_model):  # logits of ~30, where bf16 rounding shows
            model.lm_head.weight.mul_(40.0)
    gt = four_prompts["boxes"].tolist()
    texts = [[_answer(gt[b]), "abc", _answer([1, 2, 3, 4]), "x y"] for b in range(4)]
    m.engine = Scripted(texts, tokenizer)
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = m.score(four_prompts)
        logp = m.logprobs(m.model, s.rollout)
        terms = m.loss_terms(s, logp=logp)
    mask = s.rollout.completion_mask.bool()
    assert logp.requires_grad
    # policy == reference at the first step: the same arithmetic gives the same numbers.
    # Before: policy by the repeated-prompt path with a bf16 head, reference by the shared-prefix
    # path with an fp32 head: max |delta logp| ~0.07 and KL ~6e-4 per token.
    assert float((logp.detach() - s.ref_logp)[mask].abs().max()) == 0.0
    assert float(terms.kl) == 0.0


# --------------------------------------------------------------------------------- 4. evaluation IoU
def test_evaluation_iou_is_the_reward_iou():
    m = GroundingModule(backbone=BackboneSpec(preset="tiny"))
    texts = ["<answer>(900, 900), (1100, 1100)</answer>", "<answer>(100, 100), (300, 300)</answer>"]
    gt = torch.tensor([[900, 900, 1000, 1000], [100, 100, 200, 200]])
    scored = m.score_completions(texts, gt)
    # by hand: the first box overshoots the frame; clamped to (900..1000) it is the ground truth
    # (unclamped it would score 100^2 / 200^2 = 0.25); the second: 100^2 / 200^2
    assert scored["iou_strict"] == pytest.approx([1.0, 0.25])
    assert scored["iou_strict"] == pytest.approx(iou_reward(texts, gt.tolist()))


# --------------------------------------------------------------------------------- 5. step-wide statistics
def _drive(m: GRPOModule, lr: float = 1e-2) -> torch.optim.Optimizer:
    """Let ``optimise`` run without a Trainer: plain AdamW, backward, no logging target."""
    params = [p for p in m.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    m.optimizers = lambda: opt  # type: ignore[method-assign]
    m.lr_schedulers = lambda: None  # type: ignore[method-assign]
    m.manual_backward = lambda loss: loss.backward()  # type: ignore[method-assign]
    m.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    m.log = lambda *a, **k: None  # type: ignore[method-assign]
    return opt


def _split(batch: dict, rows: list[int]) -> dict:
    from univg.modules.grpo.scored import select_prompt_rows

    keep = torch.zeros(batch["input_ids"].shape[0], dtype=torch.bool)
    keep[rows] = True
    out = select_prompt_rows(model_inputs(batch), keep)
    out["boxes"] = batch["boxes"][keep]
    out["answer_formats"] = [f for f, k in zip(batch["answer_formats"], keep.tolist()) if k]
    return out


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_accumulation_four_micro_batches_equal_one(four_prompts, tokenizer, loss_type):
    gt = four_prompts["boxes"].tolist()
    half = [[b[0], b[1], (b[0] + b[2]) // 2, b[3]] for b in gt]
    texts = [
        [_answer(gt[b]), "no", _answer(half[b]), "a much longer wrong answer " * (b + 1)] for b in range(4)
    ]
    fake = Scripted(texts, tokenizer)
    results = []
    for layout in ([[0, 1, 2, 3]], [[0], [1], [2], [3]]):
        m = _module(
            beta=0.04, phi="exp", loss_type=loss_type, scale_rewards="batch", normalize_phi=True, engine=fake
        )
        start = {n: p.detach().clone() for n, p in m.model.named_parameters()}
        _drive(m)
        buffer = []
        for rows in layout:
            fake.rows_for = lambda inputs, rows=rows: rows
            buffer.append(m.score(_split(four_prompts, rows)))
        m.optimise(buffer)
        results.append({n: p.detach().clone() for n, p in m.model.named_parameters()})
    whole, parts = results
    assert sum(float((whole[n] - p0).abs().sum()) for n, p0 in start.items()) > 0
    for n in whole:
        assert torch.allclose(whole[n], parts[n], atol=1e-6, rtol=1e-4), n


def test_normalize_phi_and_batch_scale_span_the_whole_step(four_prompts, tokenizer):
    gt = four_prompts["boxes"].tolist()
    # prompt 0: mIoU 0.5 (two exact), prompt 1: mIoU 0 (none), prompts 2, 3: mIoU 1 (all exact)
    texts = [
        [_answer(gt[0]), "x", _answer(gt[0]), "y"],
        ["a", "b", "c", "<answer>(0, 0), (1, 1)</answer>"],
        [_answer(gt[2])] * 4,
        [_answer(gt[3])] * 4,
    ]
    fake = Scripted(texts, tokenizer)
    m = _module(beta=0.0, phi="exp", normalize_phi=True, scale_rewards="batch", engine=fake)
    _drive(m)
    buffer = []
    for rows in ([0, 1], [2, 3]):
        fake.rows_for = lambda inputs, rows=rows: rows
        buffer.append(m.score(_split(four_prompts, rows)))
    seen: dict[int, tuple] = {}
    real_terms = m.loss_terms

    def spy(s, w=None, a=None, logp=None):
        seen[id(s)] = (w, a)
        return real_terms(s, w, a, logp)

    m.loss_terms = spy  # type: ignore[method-assign]
    m.optimise(buffer)
    used = {"w": [seen[id(s)][0] for s in buffer]}
    # phi = exp(1 - mIoU): e^0.5, e^1, 1, 1 -> mean over the 4 groups of the step (not per micro-batch)
    w = [math.exp(0.5), math.e, 1.0, 1.0]
    mean = sum(w) / 4
    got = torch.cat([u[::4] for u in used["w"]]).tolist()
    assert got == pytest.approx([x / mean for x in w], rel=1e-5)
    # batch scale: the std of all 16 rewards of the step. Totals (accuracy + format): prompt 0
    # [2, 0, 2, 0], prompt 1 [0, 0, 0, 1 + IoU~0], prompts 2, 3 all 2.
    totals = torch.cat([s.stats["total_all"] for s in buffer])
    std = float(totals.std())
    adv0 = seen[id(buffer[0])][1][:4]
    assert adv0.tolist() == pytest.approx([1 / (std + 1e-4), -1 / (std + 1e-4)] * 2, rel=1e-5)


def test_num_iterations_two_takes_two_steps_and_the_ratio_moves(four_prompts, tokenizer, monkeypatch):
    gt = four_prompts["boxes"].tolist()
    texts = [[_answer(gt[b]), "no", "nah", _answer(gt[b])] for b in range(4)]
    import univg.modules.grpo.step_loss as mod

    m = _module(beta=0.0, num_iterations=2, lr=1e-1, check_invariants=True, engine=Scripted(texts, tokenizer))
    opt = _drive(m, lr=1e-1)
    steps = []
    real_step = opt.step
    opt.step = lambda: steps.append(1) or real_step()  # type: ignore[method-assign]
    ratios = []
    real = mod.grpo_loss_terms

    def spy(logp, old, *a, **k):
        ratios.append(float(torch.exp(logp.detach() - old).sub(1).abs().max()))
        return real(logp, old, *a, **k)

    monkeypatch.setattr(mod, "grpo_loss_terms", spy)
    s = m.score(four_prompts)
    m.optimise([s])
    assert len(steps) == 2  # mu optimiser steps per rollout batch
    assert ratios[0] < 1e-6  # first pass: the sampling policy itself, ratio 1
    assert ratios[1] > 1e-3  # second pass: after one update, the ratio has moved away from 1


# --------------------------------------------------------------------------------- per-source format
def test_refcoco_prompts_are_scored_by_the_bare_box_rule(processor):
    from univg.core.boxes import Box
    from univg.core.sample_types import GroundingSample

    samples = [
        GroundingSample(
            "coco",
            "refcoco",
            [s.images[0]],
            0,
            "the dog",
            Box(0.1, 0.1, 0.5, 0.5),
            prompt_template="refcoco_single",
        )
        for s in generate_samples(1, tasks=["single"], image_size=56, seed=0)
    ] + generate_samples(1, tasks=["single"], image_size=56, seed=0)
    batch = GroundingCollator(processor, mode="generate", prompt_template="reasoning")(samples)
    assert batch["answer_formats"] == ["box", "think"]
    bare = "(100, 100), (500, 500)"
    out = compute_rewards(
        {"accuracy": 1.0, "format": 1.0},
        [bare, bare],
        [(100, 100, 500, 500)] * 2,
        answer_formats=batch["answer_formats"],
    )
    # the box-only answer the RefCOCO template asks for: full marks there, nothing on a think prompt
    assert out["format"].tolist() == [1.0, 0.0]
    assert out["accuracy"].tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------- stage 1 -> stage 2 under FSDP
def test_init_checkpoint_reads_a_sharded_fsdp_folder(tmp_path):
    """Stage 1 under the FSDP config writes last.ckpt as a folder of shards; stage 2's
    ``init_checkpoint`` takes it as it is, not only a .ckpt file."""
    import torch.distributed.checkpoint as dcp

    from univg.model.checkpoints import load_model_weights

    torch.manual_seed(1)
    trained = BackboneSpec(preset="tiny").build()
    folder = tmp_path / "last.ckpt"
    dcp.save(
        {"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, checkpoint_id=str(folder)
    )
    torch.save({"global_step": 2}, folder / "meta.pt")
    torch.manual_seed(2)
    fresh = BackboneSpec(preset="tiny").build()
    load_model_weights(fresh, folder)
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_padding_groups_score_with_weight_zero_and_leave_the_loss(monkeypatch):
    """A process that kept 1 of 3 groups, padded to the 2 another process kept: the padding group is
    scored (weight 0) but its rows do not count in the loss or the logs (hand-written masks)."""
    import univg.modules.grpo.scored as scored

    keep = torch.tensor([True, False, False])
    monkeypatch.setattr(
        scored,
        "pad_kept_groups",
        lambda k: (k | torch.tensor([False, True, False]), torch.tensor([False, True, False])),
    )
    groups, weights, loss_rows = scored.groups_to_score(keep, torch.tensor([2.0]), group_size=2, pad=True)
    assert groups.tolist() == [True, True, False]
    assert weights.tolist() == [2.0, 0.0]
    assert loss_rows.tolist() == [True, True, False, False]
    # without dropping nothing is padded
    assert scored.groups_to_score(keep, torch.tensor([2.0]), 2, pad=False)[2] is None
