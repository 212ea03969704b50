"""Stage-2 GRPO module: the loss is the core-maths loss, phi per group, reference frozen, resume."""

from __future__ import annotations

import math

import pytest
import torch
from scripted_engine import Scripted, ScriptedCalls

from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.model.backbone import BackboneSpec, LoRASpec
from univg.modules import GRPOModule
from univg.rl.loss import group_advantages, grpo_loss
from univg.rl.rollout import completion_logprobs


@pytest.fixture(scope="module")
def prompt_batch(processor):
    samples = generate_samples(2, tasks=["single"], image_size=56, seed=0)
    return GroundingCollator(processor, mode="generate")(samples)


def _module(**kw) -> GRPOModule:
    torch.manual_seed(0)
    kw.setdefault("group_size", 4)
    kw.setdefault("max_completion_length", 12)
    m = GRPOModule(backbone=kw.pop("backbone", BackboneSpec(preset="tiny")), **kw)
    m.configure_model()
    return m


def _answer(box):
    return f"<think>here</think><answer>({box[0]}, {box[1]}), ({box[2]}, {box[3]})</answer>"


def test_phi_is_per_group_in_a_batch_of_two_groups(prompt_batch, tokenizer):
    m = _module(phi="exp", beta=0.0)
    gt = prompt_batch["boxes"].tolist()
    # prompt 0: all four exact (mIoU 1, reward variance 0); prompt 1: two exact, two garbage (mIoU 0.5)
    texts = [[_answer(gt[0])] * 4, [_answer(gt[1]), "junk", _answer(gt[1]), "<answer>oops"]]
    m.engine = Scripted(texts, tokenizer)
    s = m.score(prompt_batch)
    assert s.miou.tolist() == pytest.approx([1.0, 0.5])
    assert s.weights.tolist() == pytest.approx([1.0] * 4 + [math.exp(0.5)] * 4)
    # release bug: mIoU over the whole micro-batch would give 0.75 and one weight exp(0.25) for all
    assert not torch.allclose(s.weights, torch.full((8,), math.exp(0.25)))
    # rewards: accuracy + format; garbage scores 0 and is counted, never raises
    assert s.rewards["total"].tolist() == pytest.approx([2.0] * 4 + [2.0, 0.0, 2.0, 0.0])
    assert s.stats["unparsable"] == 2.0
    assert s.advantages[:4].abs().max() == 0.0  # all-equal group: zero advantage
    # by hand: group 1 rewards [2, 0, 2, 0]: mean 1, unbiased std sqrt(4/3); A = +-1 / (std + 1e-4)
    a = 1.0 / (math.sqrt(4.0 / 3.0) + 1e-4)
    assert s.advantages.tolist() == pytest.approx([0.0] * 4 + [a, -a, a, -a], rel=1e-6)
    assert s.stats["zero_variance_frac"] == 0.5


def test_step_loss_equals_core_maths_loss(prompt_batch, tokenizer):
    m = _module(phi="square", beta=0.04)
    gt = prompt_batch["boxes"].tolist()
    half = [gt[0][0], gt[0][1], (gt[0][0] + gt[0][2]) // 2, gt[0][3]]
    texts = [[_answer(gt[0]), _answer(half), "x", _answer(half)], ["y", _answer(gt[1]), "z", "w"]]
    m.engine = Scripted(texts, tokenizer)
    s = m.score(prompt_batch)
    terms = m.loss_terms(s)
    r = s.rollout
    # independent recomputation: policy log-probs with a full-vocabulary forward
    logp = completion_logprobs(m.model, r.prompt, r.completion_ids, r.completion_mask, 4)
    ref = completion_logprobs(m.ref_model, r.prompt, r.completion_ids, r.completion_mask, 4)
    miou = s.rewards["accuracy"].view(2, 4).mean(1)
    w = ((1 - miou) ** 2).repeat_interleave(4)
    expected = grpo_loss(
        logp, None, ref, group_advantages(s.rewards["total"], 4), w, r.completion_mask.float(), beta=0.04
    )
    assert torch.allclose(terms.loss, expected, atol=1e-6)
    assert torch.allclose(s.weights, w)
    assert float(terms.kl) == pytest.approx(0.0, abs=1e-6)  # policy == reference before any step


def test_reference_never_changes_and_policy_does(prompt_batch, tokenizer):
    m = _module(phi="exp", beta=0.04, prompts_per_step=2, lr=1e-2, warmup_ratio=0.0)
    gt = prompt_batch["boxes"].tolist()
    texts = [[_answer(gt[0]), "a", "b", _answer(gt[0])], ["c", _answer(gt[1]), "d", "e"]]
    m.engine = Scripted(texts, tokenizer)
    ref0 = {n: p.detach().clone() for n, p in m.ref_model.named_parameters()}
    pol0 = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = m.loss_terms(m.score(prompt_batch)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, ref0[n]) for n, p in m.ref_model.named_parameters())
    assert not all(torch.equal(p, pol0[n]) for n, p in m.model.named_parameters())
    assert not any(p.requires_grad for p in m.ref_model.parameters())


def test_beta_zero_skips_the_reference_pass(prompt_batch, tokenizer, monkeypatch):
    m = _module(beta=0.0)
    assert m.ref_model is None
    calls = []
    import univg.modules.grpo.module as mod

    real = mod.completion_logprobs
    monkeypatch.setattr(mod, "completion_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    m.engine = Scripted([["a"] * 4, ["b"] * 4], tokenizer)
    s = m.score(prompt_batch)
    assert s.ref_logp is None and s.old_logp is None and calls == []
    m.loss_terms(s)
    assert len(calls) == 1  # only the policy pass


def test_lora_reference_is_the_base_model_without_a_copy(prompt_batch, tokenizer):
    m = _module(beta=0.04, backbone=BackboneSpec(preset="tiny", lora=LoRASpec(r=4)))
    assert m.ref_model is None
    for n, p in m.model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    m.engine = Scripted([["a", "b", "c", "d"], ["e"] * 4], tokenizer)
    s = m.score(prompt_batch)
    r = s.rollout
    with m.model.disable_adapter():
        base = completion_logprobs(m.model, r.prompt, r.completion_ids, r.completion_mask, 4)
    assert torch.allclose(s.ref_logp, base)
    policy = completion_logprobs(m.model, r.prompt, r.completion_ids, r.completion_mask, 4)
    assert not torch.allclose(policy, base)


def test_num_iterations_keeps_a_real_old_policy(prompt_batch, tokenizer):
    m = _module(beta=0.0, num_iterations=2)
    m.engine = Scripted([["a", "bb", "c", "d"], ["e"] * 4], tokenizer)
    s = m.score(prompt_batch)
    assert s.old_logp is not None and s.old_logp.shape == s.rollout.completion_ids.shape


def test_drop_zero_variance_groups(prompt_batch, tokenizer):
    m = _module(beta=0.0, drop_zero_variance=True)
    gt = prompt_batch["boxes"].tolist()
    texts = [["junk"] * 4, [_answer(gt[1]), "x", "y", "z"]]
    m.engine = Scripted(texts, tokenizer)
    s = m.score(prompt_batch)
    assert s.rollout.num_prompts == 1 and s.rollout.completion_ids.shape[0] == 4
    assert s.stats["dropped_groups"] == 1.0
    assert s.rollout.prompt["image_grid_thw"].shape[0] == 1
    m.loss_terms(s)  # the kept group still trains


class CaptureSteps(GRPOModule):
    """Records the buffers it would optimise (the refill decision is what is under test)."""

    def optimise(self, buffer):
        self.steps = getattr(self, "steps", []) + [[s.rollout.num_prompts for s in buffer]]
        self.step_logs = getattr(self, "step_logs", []) + [self._refill.pop_logs()]


@pytest.mark.parametrize("max_tries, expected", [(4, [[0, 1, 1]]), (2, [[0, 1]])])
def test_dynamic_sampling_refills_the_step(prompt_batch, tokenizer, max_tries, expected):
    torch.manual_seed(0)
    m = CaptureSteps(
        backbone=BackboneSpec(preset="tiny"), group_size=4, max_completion_length=12, beta=0.0,
        prompts_per_step=2, dynamic_sampling={"max_tries": max_tries}, phi="exp",
    )  # fmt: skip
    m.configure_model()
    gt = prompt_batch["boxes"].tolist()
    solved, mixed = [_answer(gt[0])] * 4, [_answer(gt[1]), "junk", "junk", "junk"]
    # draw 1: both groups have one reward each (all solved, all junk): both dropped, nothing kept;
    # draws 2 and 3: one group with variance each -> the step of 2 prompts is full after draw 3
    calls = [[solved, ["junk"] * 4], [solved, mixed], [["junk"] * 4, mixed], [solved, mixed]]
    m.engine = ScriptedCalls(calls, tokenizer)
    for i in range(3):
        m.training_step(prompt_batch, i)
    assert m.steps[:1] == expected
    logs = m.step_logs[0]
    draws = len(expected[0])
    assert logs["dynamic/tries"] == draws  # one micro-batch makes a plain step here
    assert logs["dynamic/kept_share"] == pytest.approx(sum(expected[0]) / (2 * draws))
    assert logs["dynamic/fill"] == pytest.approx(sum(expected[0]) / 2)


def test_module_losses_follow_the_knobs(prompt_batch, tokenizer):
    gt = prompt_batch["boxes"].tolist()
    texts = [[_answer(gt[0]), "x", _answer(gt[0]), "y"], ["y", _answer(gt[1]), "z", "w"]]
    m = _module(
        phi="none", beta=0.0, num_iterations=2, importance_sampling_level="sequence", loss_type="dapo"
    )
    m.engine = Scripted(texts, tokenizer)
    s = m.score(prompt_batch)
    logp = s.old_logp + 0.3 * torch.randn_like(s.old_logp)  # a later iteration: ratios off 1
    ours = m.loss_terms(s, logp=logp)
    from univg.rl.loss import grpo_loss_terms

    hand = grpo_loss_terms(
        logp, s.old_logp, None, s.advantages, s.weights, s.rollout.completion_mask, beta=0.0,
        loss_type="dapo", max_len=12, importance_sampling_level="sequence",
    )  # fmt: skip
    assert ours.loss.item() == pytest.approx(hand.loss.item())
    token = grpo_loss_terms(
        logp, s.old_logp, None, s.advantages, s.weights, s.rollout.completion_mask, beta=0.0
    )
    assert ours.loss.item() != pytest.approx(token.loss.item())


def test_reward_plugin_in_the_module(prompt_batch, tokenizer, tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(
        "def short(completions, limit, **kw):\n    return [float(len(c) <= limit) for c in completions]\n"
    )
    gt = prompt_batch["boxes"].tolist()
    texts = [[_answer(gt[0]), "x" * 80, "y", "z"], ["y", _answer(gt[1]), "z", "w"]]
    rewards = {
        "accuracy": 1.0,
        "short": {"class_path": f"{plugin}:short", "init_args": {"limit": 60}, "weight": 2.0},
    }
    m = _module(phi="none", beta=0.0, rewards=rewards)
    m.engine = Scripted(texts, tokenizer)
    s = m.score(prompt_batch)
    # accuracy 1 for the exact answers, 0 otherwise; short: 1 unless longer than 60 characters
    assert s.rewards["short"].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert s.rewards["total"].tolist() == pytest.approx([3.0, 0.0, 2.0, 2.0, 2.0, 3.0, 2.0, 2.0])


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="phi"):
        GRPOModule(phi="cube")
    with pytest.raises(ValueError, match="loss_type"):
        GRPOModule(loss_type="ppo")
    with pytest.raises(ValueError, match="group_size"):
        GRPOModule(group_size=1)
    with pytest.raises(ValueError, match="registered rewards"):
        GRPOModule(miou_reward="acuracy")


def test_miou_reward_outside_the_weighted_rewards_is_resolved_but_not_in_the_total():
    m = GRPOModule(rewards={"format": 1.0}, miou_reward="accuracy")
    assert set(m.reward_weights) == {"format"}
    assert set(m.reward_functions) == {"format", "accuracy"}


@pytest.mark.slow
def test_short_grpo_run_raises_mean_reward():
    """Seeded GRPO through the Lightning Trainer raises the sampled mean reward.

    A toy reward (share of ASCII letters in the completion) stands in for IoU: a randomly
    initialised tiny model samples uniformly from 151,936 tokens, so it never produces a box and
    the IoU reward is 0 everywhere (no signal). Its embedding is scaled so the random policy is
    peaked, as a trained policy is; GRPO must then move mass to the rewarded tokens.
    """
    import lightning as L

    from univg.data import SyntheticDataModule
    from univg.rl.rewards import REWARDS, register_reward

    if "toy_ascii_letters" not in REWARDS:

        @register_reward("toy_ascii_letters")
        def toy_ascii_letters(completions, **kwargs):
            return [sum(c.isascii() and c.isalpha() for c in t) / max(1, len(t)) for t in completions]

    class Record(L.Callback):
        def __init__(self):
            self.rewards = {}

        def on_train_batch_end(self, trainer, module, *args):
            logs = getattr(module, "last_step_logs", None)
            if logs is not None:
                self.rewards[trainer.global_step] = logs["reward/total_mean"]

    L.seed_everything(0)
    m = GRPOModule(
        backbone=BackboneSpec(preset="tiny"),
        lr=3e-2,
        warmup_ratio=0.0,
        schedule="constant",
        group_size=8,
        max_completion_length=8,
        beta=0.0,
        phi="none",
        rewards={"toy_ascii_letters": 1.0},
        prompts_per_step=2,
    )
    m.configure_model()
    with torch.no_grad():
        m.model.model.language_model.embed_tokens.weight.mul_(14)  # tied with lm_head: a peaked policy
    dm = SyntheticDataModule(
        num_train=48,
        num_val=0,
        tasks=["single"],
        image_size=56,
        train_mode="generate",
        batch_size=2,
        shuffle=False,
    )
    rec = Record()
    trainer = L.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[rec],
    )
    trainer.fit(m, datamodule=dm)
    r = [rec.rewards[k] for k in sorted(rec.rewards)]
    assert len(r) == 12
    first, last = sum(r[:4]) / 4, sum(r[-4:]) / 4
    assert last > first + 0.1, r


@pytest.mark.slow
def test_resume_gives_the_same_next_step_loss(tmp_path):
    """Checkpoint after step 2, resume, step 3: same sampled completions and loss as uninterrupted."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from univg.data import SyntheticDataModule

    class Record(L.Callback):
        def __init__(self):
            self.logs = {}

        def on_train_batch_end(self, trainer, module, *args):
            logs = getattr(module, "last_step_logs", None)
            if logs is not None:
                self.logs[trainer.global_step] = (logs["train/loss"], logs["reward/total_mean"])

    def run(root, ckpt=None):
        L.seed_everything(0)
        m = GRPOModule(
            backbone=BackboneSpec(preset="tiny"),
            lr=1e-3,
            warmup_ratio=0.0,
            group_size=4,
            max_completion_length=6,
            beta=0.04,
            phi="exp",
            prompts_per_step=2,
        )
        dm = SyntheticDataModule(
            num_train=16, num_val=0, tasks=["single"], image_size=56, train_mode="generate", batch_size=1
        )
        rec = Record()
        t = L.Trainer(
            max_steps=3,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            limit_val_batches=0,
            callbacks=[rec, ModelCheckpoint(dirpath=tmp_path / root, every_n_train_steps=1, save_top_k=-1)],
        )
        t.fit(m, datamodule=dm, ckpt_path=ckpt)
        return rec.logs, m

    full, m_full = run("full")
    ckpt = sorted((tmp_path / "full").glob("*step=2*.ckpt"))[0]
    resumed, m_res = run("resumed", str(ckpt))
    assert list(resumed) == [3]
    assert resumed[3][0] == pytest.approx(full[3][0], abs=1e-6)
    assert resumed[3][1] == pytest.approx(full[3][1], abs=1e-6)
    for (n, a), (_, b) in zip(m_full.ref_model.named_parameters(), m_res.ref_model.named_parameters()):
        assert torch.equal(a, b), n  # the reference is restored, not rebuilt from the current policy
    for (n, a), (_, b) in zip(m_full.model.named_parameters(), m_res.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_gspo_row_differs_from_token_level_only_with_several_updates(prompt_batch, tokenizer, num_iterations):
    """The GSPO row (experiments/beyond/gspo_phi.yaml) trains differently from the token-level loss.

    With one update per rollout batch the ratio is 1, so the sequence-level and the token-level
    losses have the same gradient (by hand: both are -w * A * grad logp, token-averaged) and the row
    would be plain GRPO; the row therefore makes 2 updates, and the second sees ratios off 1.
    """
    import yaml

    row = yaml.safe_load(open("experiments/beyond/gspo_phi.yaml"))["model"]["init_args"]
    assert row["importance_sampling_level"] == "sequence" and row["num_iterations"] > 1
    knobs = {k: row[k] for k in ("loss_type", "eps_low", "eps_high")}
    gt = prompt_batch["boxes"].tolist()
    texts = [[_answer(gt[0]), "x", _answer(gt[0]), "yy"], ["y", _answer(gt[1]), "z z", "w"]]
    after = {}
    for level in ("token", "sequence"):
        m = _module(
            phi="none", beta=0.0, num_iterations=num_iterations, importance_sampling_level=level, **knobs
        )
        m.engine = Scripted(texts, tokenizer)
        start = {n: p.detach().clone() for n, p in m.model.named_parameters()}
        opt = torch.optim.SGD([p for p in m.model.parameters() if p.requires_grad], lr=1.0)
        m.optimizers, m.lr_schedulers = (lambda opt=opt: opt), (lambda: None)
        m.manual_backward = lambda loss: loss.backward()
        m.log_dict = m.log = lambda *a, **k: None
        m.optimise([m.score(prompt_batch)])
        after[level] = torch.cat([(p.detach() - start[n]).flatten() for n, p in m.model.named_parameters()])
    diff = float((after["token"] - after["sequence"]).abs().max())
    scale = float(after["token"].abs().max())
    assert scale > 0
    if num_iterations == 1:
        assert diff <= 1e-6 * scale
    else:
        assert diff > 1e-2 * scale
