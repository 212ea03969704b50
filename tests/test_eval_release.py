"""The ``release`` column: the release's scorers on hand-written release-style completions, the
checkpoint decoding, float ground truth, VOS frames and the MIG-Bench answer frame.

Expected values are written by hand from the release's scripts (``eval/MIG_bench/utils.py``
``extract_bbox``/``calculate_iou``; ``eval/zero_shot/*/eval.py``), not computed by univg.
"""

from __future__ import annotations

import json

import pytest

from univg.data.readers import read_mig_bench, read_vos
from univg.evaluation.release_parse import (
    release_mig_iou,
    release_mig_parse,
    release_scorer,
    release_zero_shot_iou,
    release_zero_shot_parse,
)
from univg.model.decoding import checkpoint_decoding, greedy_decoding

# (completion, what the release's extract_bbox scores; None = its [0, 0, 0, 0] fallback)
MIG_CASES = [
    # a box quoted in the reasoning wins over the answer: first match anywhere
    (
        "<think>the cup (120,80), (300, 410) is left</think><answer>(500, 80), (700, 410)</answer>",
        (120, 80, 300, 410),
    ),
    # spaces: none allowed after "(" or before a comma; after a comma any
    ("<answer>( 500, 80), (700, 410)</answer>", None),
    ("<answer>(500 , 80), (700, 410)</answer>", None),
    ("<answer>(500,80),(700,410)</answer>", (500, 80, 700, 410)),
    ("<answer>(500,   80),\n(700,\t410)</answer>", (500, 80, 700, 410)),
    # precedence: an int pair anywhere beats an earlier list form
    ("[1, 2, 3, 4] and later (5,6), (7,8)", (5, 6, 7, 8)),
    # int list, then <box> forms, when no pair
    ("<answer>[10, 20, 30, 40]</answer>", (10, 20, 30, 40)),
    ("<answer>[10,20,30,40]</answer>", (10, 20, 30, 40)),
    ("<box>11 22 33 44</box>", (11, 22, 33, 44)),
    # float forms match before the int list and int() fails: the fallback, even with an int list later
    ("[0.1, 0.2, 0.3, 0.4] or [10, 20, 30, 40]", None),
    ("(0.1,0.2),(0.3,0.4)", None),
    ("(0.1, 0.2, 0.3, 0.4)", None),
    # a float pair with spaces matches no pattern, the int list after it then does
    ("(0.1, 0.2), (0.3, 0.4) [10, 20, 30, 40]", (10, 20, 30, 40)),
    # a minus sign right after "(" breaks the pair pattern: nothing else matches, the fallback
    ("(-5,10), (20,30)", None),
    ("no box at all", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), MIG_CASES)
def test_mig_extract_bbox_cases(text, expected):
    assert release_mig_parse(text) == expected


def test_mig_iou_on_raw_values_by_hand():
    gt = [100, 100, 300, 300]  # area 40000
    assert release_mig_iou(gt, (200, 100, 400, 300)) == pytest.approx(20000 / 60000)
    assert release_mig_iou(gt, None) == 0.0  # [0, 0, 0, 0]: x_right 0 < x_left 100
    assert release_mig_iou(gt, (300, 100, 400, 300)) == 0.0  # touching: intersection 0
    assert release_mig_iou(gt, (400, 100, 200, 300)) == 0.0  # inverted: never swapped
    assert release_mig_iou([0, 0, 0, 0], (0, 0, 0, 0)) == 0.0  # the release would divide by zero
    # float ground truth (the revised file's 0-1000 values are compared as they are)
    assert release_mig_iou([100.5, 100, 300, 300], (100, 100, 300, 300)) == pytest.approx(
        (199.5 * 200) / (200 * 200)
    )


ZS_CASES = [
    # the prompt is searched first (the scripts decode prompt + completion untrimmed)
    (
        "user\nfind the dog near (10, 10), (20, 20)\nassistant\n",
        "<answer>(1, 2), (3, 4)</answer>",
        (10, 10, 20, 20),
    ),
    # spaces anywhere
    ("user\nfind the dog\nassistant\n", "<answer>( 1 , 2 ) ,( 3 , 4 )</answer>", (1, 2, 3, 4)),
    # the first pair of the completion, even inside <think>
    ("user\nq\nassistant\n", "<think>(5,6),(7,8)</think><answer>(1, 2), (3, 4)</answer>", (5, 6, 7, 8)),
    # the list form and floats are not read at all
    ("user\nq\nassistant\n", "<answer>[1, 2, 3, 4]</answer>", None),
    ("user\nq\nassistant\n", "<answer>(0.1, 0.2), (0.3, 0.4)</answer>", None),
    # a pair split between prompt and completion is found in the concatenation
    ("user\nq (1, 2),", " (3, 4) done", (1, 2, 3, 4)),
]


@pytest.mark.parametrize(("prompt", "completion", "expected"), ZS_CASES)
def test_zero_shot_first_pair_in_prompt_and_completion(prompt, completion, expected):
    assert release_zero_shot_parse(prompt, completion) == expected


def test_zero_shot_iou_by_hand():
    # pred (250, 0), (750, 500) -> [0.25, 0, 0.75, 0.5]; gt [0.5, 0, 1, 0.5]: inter 0.25 * 0.5
    inter, union = 0.125, 0.25 + 0.25 - 0.125 + 1e-6
    assert release_zero_shot_iou((250, 0, 750, 500), (0.5, 0.0, 1.0, 0.5)) == pytest.approx(
        inter / union, abs=1e-12
    )
    assert release_zero_shot_iou(None, (0.5, 0.0, 1.0, 0.5)) == 0.0
    assert release_zero_shot_iou((750, 500, 250, 0), (0.0, 0.0, 1.0, 1.0)) == 0.0  # inverted


def test_scorer_per_benchmark():
    for name in ("lisa", "lisa/test", "lisa/val", "llmseg", "reasonvos", "revos"):
        assert release_scorer(name) == "zero_shot"
    for name in ("mig_bench", "mig_bench_revised", "synthetic", "refcoco/val", None):
        assert release_scorer(name) == "mig"


# ----------------------------------------------------------------------------- decoding
def test_checkpoint_decoding_reads_the_checkpoints_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {"do_sample": True, "temperature": 0.01, "top_k": 1, "top_p": 0.001, "repetition_penalty": 1.05}
        )
    )
    d = checkpoint_decoding(str(tmp_path), 256)
    assert (d.mode, d.do_sample, d.temperature, d.top_k, d.top_p, d.repetition_penalty) == (
        "checkpoint", True, 0.01, 1, 0.001, 1.05,
    )  # fmt: skip
    assert d.max_new_tokens == 256 and str(tmp_path) in d.source
    kw = d.generate_kwargs()
    assert kw["repetition_penalty"] == 1.05 and kw["do_sample"] is True and kw["top_k"] == 1

    plain = tmp_path / "plain"
    plain.mkdir()  # no generation_config.json: transformers' defaults (greedy), said in the source
    d = checkpoint_decoding(str(plain), 64)
    assert d.do_sample is False and d.repetition_penalty == 1.0 and "no generation_config.json" in d.source
    with pytest.raises(ValueError, match="needs backbone.checkpoint"):
        checkpoint_decoding(None, 64)


def test_greedy_decoding_is_explicit():
    d = greedy_decoding(128).as_dict()
    assert d == {
        "mode": "greedy",
        "max_new_tokens": 128,
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
        "source": "explicit greedy",
    }
    assert "repetition_penalty" not in greedy_decoding(128).generate_kwargs()


def test_repetition_penalty_reaches_transformers_generate(tiny_model, processor, monkeypatch):
    """rollout.generate passes the checkpoint's repetition penalty to HF generate (and picks "hf")."""
    from univg.data import SyntheticDataModule
    from univg.rl.rollout import generate, model_inputs

    dm = SyntheticDataModule(num_train=0, num_val=0, num_test=1, image_size=56, eval_batch_size=1)
    dm._processor = processor
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    seen = {}
    original = type(tiny_model).generate

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "generate", spy)
    generate(tiny_model, model_inputs(batch), processor.tokenizer, max_new_tokens=2, repetition_penalty=1.3)
    assert seen["generation_config"].repetition_penalty == 1.3
    with pytest.raises(ValueError, match="no repetition penalty"):
        generate(
            tiny_model,
            model_inputs(batch),
            processor.tokenizer,
            max_new_tokens=2,
            repetition_penalty=1.3,
            engine="shared",
        )


# ----------------------------------------------------------------------------- readers
def _vos_file(tmp_path, n_frames: int):
    from PIL import Image

    frames = []
    for i in range(n_frames):
        p = tmp_path / f"f{i}.jpg"
        Image.new("RGB", (100, 50)).save(p)
        frames.append(str(p))
    boxes = [[i, 0, i + 10, 10] for i in range(n_frames)]  # frame i's box starts at x = i
    path = tmp_path / "vos.json"
    path.write_text(json.dumps([{"image_list": frames, "question": "the dog", "bbox_list": boxes}]))
    return path, frames


def test_vos_uses_every_listed_frame_by_default(tmp_path):
    path, frames = _vos_file(tmp_path, 8)
    (s,) = read_vos(path)
    assert s.images == frames and s.target_index == 2
    assert s.box.x1 == pytest.approx(2 / 100)  # the box of the third listed frame, in floats
    (t,) = read_vos(path, num_frames=6)  # sampling on: frames 0, 1, 3, 4, 6, 7 -> the third is frame 3
    assert t.images == [frames[i] for i in (0, 1, 3, 4, 6, 7)] and t.box.x1 == pytest.approx(3 / 100)
    assert t.images != s.images


def test_mig_answer_frame_is_detected_per_file(tmp_path):
    base = {
        "task": "region",
        "images": ["a.jpg", "b.jpg"],
        "question": "Please locate the 1th region picture in the source image.",
    }
    norm = tmp_path / "MIG_data.json"
    norm.write_text(json.dumps([{**base, "answer": [0.1234, 0.2, 0.5, 0.6]}]))
    revised = tmp_path / "revised_MIG_bench.json"
    revised.write_text(json.dumps([{**base, "answer": [123, 200, 500, 600]}]))
    (a,) = out_a = read_mig_bench(norm)
    (b,) = out_b = read_mig_bench(revised)
    assert (
        out_a.report.notes["answer_frame_normalised"] == 1
        and "answer_frame_normalised 1" in out_a.report.summary()
    )
    assert out_b.report.notes["answer_frame_0_1000"] == 1
    assert b.box.as_tuple() == pytest.approx((0.123, 0.2, 0.5, 0.6))
    assert a.box.as_tuple() == pytest.approx((0.1234, 0.2, 0.5, 0.6))
    # forcing the wrong frame fails loudly (a wrong coordinate frame), never mis-scores
    with pytest.raises(ValueError, match="wrong coordinate frame"):
        read_mig_bench(revised, answer_frame="normalised")


# ----------------------------------------------------------------------------- two-step resize
def test_smart_resize_by_hand():
    from univg.data.release_resize import smart_resize

    assert smart_resize(90, 150) == (84, 140)  # round(90 / 28) = 3, round(150 / 28) = 5
    # 28 x 28 < 3,136: scaled by sqrt(3136 / 600) = 2.286, ceil(45.7 / 28) = 2, ceil(68.6 / 28) = 3
    assert smart_resize(20, 30) == (56, 84)
    # 4000 x 4000 = 16M > 12.8M: beta = sqrt(16e6 / 12845056) = 1.116..., floor(3584.5 / 28) * 28
    assert smart_resize(4000, 4000) == (3584, 3584)


def test_two_step_resize_resamples_first_as_the_release(tmp_path, processor):
    import numpy as np
    import torch
    from PIL import Image

    from univg.data import LISADataModule

    rng = np.random.default_rng(0)
    # 700 x 1000 is above the (session) processor's 401,408 pixels: the release resizes to 700 x 1008
    # first, then the processor to 504 x 756 (the size one resize also gives): resampled twice
    img = Image.fromarray(rng.integers(0, 255, (700, 1000, 3), dtype=np.uint8))
    path = tmp_path / "noisy.png"
    img.save(path)
    ann = tmp_path / "lisa_test.json"
    ann.write_text(
        json.dumps([{"image_path": str(path), "instruction": "the thing", "boxes": [[10, 10, 60, 50]]}])
    )
    batches = {}
    for two_step in (False, True):
        dm = LISADataModule(test_file=str(ann), two_step_resize=two_step)
        dm._processor = processor
        dm.setup("test")
        batches[two_step] = next(iter(dm.test_dataloader()))
    once, twice = batches[False], batches[True]
    assert once["image_grid_thw"].tolist() == twice["image_grid_thw"].tolist() == [[1, 36, 54]]
    # the second path is the processor applied to the image PIL-resized to 1008 x 700 by hand
    by_hand = processor.process_images([img.resize((1008, 700), Image.BICUBIC)])
    assert torch.allclose(twice["pixel_values"], by_hand["pixel_values"])
    assert not torch.allclose(once["pixel_values"], twice["pixel_values"])


# ----------------------------------------------------------------------------- decoding through the module
def test_checkpoint_decoding_is_used_and_recorded(tmp_path, tiny_model, processor, monkeypatch):
    import lightning as L
    import torch

    from univg.data import SyntheticDataModule
    from univg.model.backbone import BackboneSpec
    from univg.modules import GroundingModule
    from univg.rl.rollout import Rollout

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "generation_config.json").write_text(
        json.dumps(
            {"do_sample": False, "top_k": 1, "top_p": 0.001, "temperature": 0.01, "repetition_penalty": 1.05}
        )
    )
    seen = []

    def fake_generate(model, inputs, tokenizer, **kw):
        seen.append(kw)
        n = inputs["input_ids"].shape[0]
        texts = ["<answer>(0, 0), (999, 999)</answer>"] * n
        return Rollout(
            dict(inputs),
            torch.zeros(n, 1, dtype=torch.long),
            torch.ones(n, 1),
            texts,
            torch.zeros(n, dtype=torch.bool),
            1,
        )

    monkeypatch.setattr("univg.modules.base.generate", fake_generate)
    module = GroundingModule(
        backbone=BackboneSpec(preset="tiny", checkpoint=str(ckpt)),
        decoding="checkpoint",
        max_new_tokens=7,
        num_pictures=0,
        predictions_dir=str(tmp_path / "preds"),  # not the working directory
    )
    module.model, module._tokenizer = tiny_model, processor.tokenizer  # the weights are not what is tested
    dm = SyntheticDataModule(num_train=0, num_val=0, num_test=2, image_size=56, eval_batch_size=2)
    dm._processor = processor
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        module, datamodule=dm
    )
    assert seen == [
        {
            "max_new_tokens": 7,
            "do_sample": False,
            "temperature": 0.01,
            "top_p": 0.001,
            "top_k": 1,
            "repetition_penalty": 1.05,
        }
    ]
    recorded = module.last_results["test"]["decoding"]
    assert (
        recorded["mode"] == "checkpoint" and recorded["repetition_penalty"] == 1.05 and recorded["top_k"] == 1
    )
    assert module.last_results["test"]["headline_parse"] == "strict"


def test_decoding_is_a_typed_cli_option(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from univg.cli import main

    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "eval" / "synthetic.yaml")
    cli = main(["--config", config, "--model.init_args.decoding", "checkpoint"], run=False)
    assert cli.model.decoding == "checkpoint"
    with pytest.raises(SystemExit) as exc:  # a typo fails when the command line is parsed
        main(["--config", config, "--model.init_args.decoding", "sampled"], run=False)
    assert exc.value.code != 0 and "decoding" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the release column end to end
def _run(tmp_path, processor, answers, edit=None, **kw):
    """Evaluate 3 synthetic samples with scripted completions ``answers`` (in sample order);
    returns (samples, results, prediction rows by id)."""
    import lightning as L

    from univg.data import SyntheticDataModule
    from univg.model.backbone import BackboneSpec
    from univg.modules import GroundingModule

    dm = SyntheticDataModule(
        num_train=0, num_val=0, num_test=3, tasks=["diff"], image_size=56, eval_batch_size=3
    )
    dm._processor = processor
    dm.setup("test")
    samples = list(dm.samples["test"])
    if edit is not None:
        edit(samples)
    by_id = {s.id: a for s, a in zip(samples, answers)}

    class Scripted(GroundingModule):
        def generate_completions(self, batch):
            return [by_id[i] for i in batch["ids"]], [False] * len(batch["ids"])

    module = Scripted(
        backbone=BackboneSpec(preset="tiny"), num_pictures=0, predictions_dir=str(tmp_path), **kw
    )
    module._tokenizer = processor.tokenizer
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        module, datamodule=dm
    )
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "predictions_test.jsonl").open()}
    return samples, json.loads((tmp_path / "results_test.json").read_text()), rows


def test_zero_shot_release_column_searches_the_prompt(tmp_path, processor):
    answer = "<think>left</think><answer>(100, 100), (500, 500)</answer>"

    def quote_a_box(samples):
        samples[0].question = "Is it the one near (1, 2), (3, 4)? " + samples[0].question

    samples, result, rows = _run(tmp_path, processor, [answer] * 3, quote_a_box, benchmark="lisa/test")
    assert result["release_scorer"] == "zero_shot" and result["headline_parse"] == "strict"
    # sample 0: the box quoted in the prompt is what the release scores; the others: the answer
    assert rows[samples[0].id]["pred_release"] == [1, 2, 3, 4]
    assert rows[samples[0].id]["pred"] == [100, 100, 500, 500]
    for k, s in enumerate(samples):
        gt = s.box.as_tuple()
        pred = [0.001, 0.002, 0.003, 0.004] if k == 0 else [0.1, 0.1, 0.5, 0.5]
        iw = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0]))
        ih = max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
        union = (pred[2] - pred[0]) * (pred[3] - pred[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - iw * ih + 1e-6
        assert rows[s.id]["iou_release"] == pytest.approx(iw * ih / union, abs=1e-12)
    m = result["metrics"]
    assert m["parse_rate/release"] == 1.0
    assert m["acc@0.5/release"] == pytest.approx(sum(r["iou_release"] >= 0.5 for r in rows.values()) / 3)


def test_release_headline_on_mig_scores_float_answers_zero(tmp_path, processor):
    answers = [
        "<answer>[0.1, 0.1, 0.5, 0.5]</answer>",  # float list: the release's int() fails -> [0, 0, 0, 0]
        "<answer>( 0, 0), (999, 999)</answer>",  # a space after "(": no release parse
        "<answer>(0,0), (999,999)</answer>",
    ]
    samples, result, rows = _run(
        tmp_path, processor, answers, benchmark="mig_bench", headline_parse="release"
    )
    assert result["headline_parse"] == "release" and result["release_scorer"] == "mig"
    assert [rows[s.id]["pred_release"] for s in samples] == [None, None, [0, 0, 999, 999]]
    m = result["metrics"]
    assert m["parse_rate/release"] == pytest.approx(1 / 3) and m["parse_rate/compatible"] == pytest.approx(
        2 / 3
    )
    # the headline is the release's: only the third answer scores, IoU of (0,0,999,999) with gt x 1000
    x1, y1, x2, y2 = (v * 1000 for v in samples[2].box.as_tuple())
    iou = (x2 - x1) * (y2 - y1) / (999 * 999)
    assert m["miou"] == pytest.approx(iou / 3)
    assert m["acc@0.5"] == m["acc@0.5/release"] == (1 / 3 if iou >= 0.5 else 0.0)
