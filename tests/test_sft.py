"""Stage-1 SFT module: loss on answer tokens only, learning, evaluation by generation."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from univg.data import GroundingCollator
from univg.data.synthetic import generate_samples
from univg.model.backbone import BackboneSpec
from univg.modules import SFTModule
from univg.modules.sft import answer_loss


@pytest.fixture(scope="module")
def samples():
    return generate_samples(4, tasks=["single"], image_size=56, seed=0)


def _module(**kw) -> SFTModule:
    torch.manual_seed(0)
    m = SFTModule(backbone=BackboneSpec(preset="tiny"), **kw)
    m.configure_model()
    return m


def test_answer_loss_equals_full_logits_loss_on_labelled_tokens(processor, samples):
    m = _module()
    batch = GroundingCollator(processor, mode="train")(samples)
    loss, n = answer_loss(m.model, batch)
    # reference: the model's own loss with the same labels (all positions through the head)
    ref = m.model(
        **{
            k: batch[k]
            for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
        },
        labels=batch["labels"],
    ).loss
    assert torch.allclose(loss, ref, atol=1e-5)
    assert n == int((batch["labels"] != -100).sum())


def test_loss_ignores_everything_but_the_answer(processor, samples):
    m = _module()
    batch = GroundingCollator(processor, mode="train")(samples)
    labels = batch["labels"]
    # the labelled tokens decode to exactly the assistant turn (think + answer + <|im_end|>)
    for i, s in enumerate(samples):
        text = processor.tokenizer.decode(labels[i][labels[i] != -100])
        assert text.startswith("<think>") and text.endswith("</answer><|im_end|>")
        assert s.reasoning in text
    # changing the label of any prompt position changes nothing when it stays masked; unmasking one does
    loss, _ = answer_loss(m.model, batch)
    b2 = dict(batch)
    b2["labels"] = labels.clone()
    first = int((labels[0] != -100).float().argmax())
    b2["labels"][0, first - 5] = batch["input_ids"][0, first - 5]  # a prompt token now labelled
    loss2, n2 = answer_loss(m.model, b2)
    assert n2 == int((labels != -100).sum()) + 1 and not torch.allclose(loss, loss2)


def test_training_lowers_loss_and_changes_parameters(processor, samples):
    m = _module(lr=3e-3, warmup_ratio=0.0, schedule="constant")
    batch = GroundingCollator(processor, mode="train")(samples)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in m.model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = answer_loss(m.model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 1.0, losses
    changed = [n for n, p in m.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    assert all(torch.equal(p, frozen[n]) for n, p in m.model.named_parameters() if not p.requires_grad)


def test_evaluation_step_scores_and_records(processor, samples, monkeypatch):
    m = _module(max_new_tokens=4)
    batch = GroundingCollator(processor, mode="generate")(samples)
    gt = batch["boxes"].tolist()
    # script the completions: one exact, one strict-unparsable but compatible, one garbage, one inverted
    texts = [
        f"<think>a</think><answer>({gt[0][0]}, {gt[0][1]}), ({gt[0][2]}, {gt[0][3]})</answer>",
        f"I think ({gt[1][0]}, {gt[1][1]}), ({gt[1][2]}, {gt[1][3]}) is it",
        "garbage )(,",
        f"<answer>({gt[3][2]}, {gt[3][3]}), ({gt[3][0]}, {gt[3][1]})</answer>",
    ]
    from univg.rl.rollout import Rollout

    def fake_generate(model, inputs, tokenizer, **kw):
        n = len(texts)
        return Rollout(
            dict(inputs),
            torch.zeros(n, 1, dtype=torch.long),
            torch.ones(n, 1),
            texts,
            torch.zeros(n, dtype=torch.bool),
            1,
        )

    monkeypatch.setattr("univg.modules.base.generate", fake_generate)
    m.evaluation_step(batch, "val")
    r = m.metrics["val"].compute()
    assert r["acc@0.5"] == pytest.approx(2 / 4)  # exact + inverted (swapped) count; compatible-only does not
    assert r["parse_rate/strict"] == pytest.approx(2 / 4)
    assert r["parse_rate/compatible"] == pytest.approx(3 / 4)
    assert r["acc@0.5/compatible"] == pytest.approx(3 / 4)
    recs = m.evaluation.records["val"]
    # scored against the exact (float) ground truth, not the int() target the answers were written from
    assert recs[0]["gt"] == pytest.approx([v * 1000 for v in samples[0].box.as_tuple()])
    assert 0.95 < recs[0]["iou"] < 1.0 and 0.95 < recs[1]["iou_compatible"] < 1.0
    assert [x["iou"] for x in recs][1:3] == [0.0, 0.0]


@pytest.mark.slow
def test_fit_and_resume_continue_the_same_run(tmp_path, processor):
    """Resuming from a mid-run checkpoint gives the same weights as an uninterrupted run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from univg.data import SyntheticDataModule

    def run(max_steps, ckpt=None, every=None, root="a"):
        L.seed_everything(0)
        dm = SyntheticDataModule(
            num_train=16, num_val=2, tasks=["single"], image_size=56, seed=0, batch_size=2
        )
        m = SFTModule(backbone=BackboneSpec(preset="tiny"), lr=1e-3, max_new_tokens=4)
        cbs = (
            [ModelCheckpoint(dirpath=tmp_path / root, every_n_train_steps=every, save_top_k=-1)]
            if every
            else []
        )
        t = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            limit_val_batches=0,
            callbacks=cbs,
            enable_checkpointing=bool(every),
            accumulate_grad_batches=2,
        )
        t.fit(m, datamodule=dm, ckpt_path=ckpt)
        return m, t

    full, _ = run(4, every=2, root="full")
    ckpt = sorted((tmp_path / "full").glob("*step=2*.ckpt"))[0]
    resumed, t = run(4, ckpt=str(ckpt), root="resumed")
    assert t.global_step == 4
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
