"""Lightning data modules: per-dataset defaults, batches from files and synthetic data, YAML use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from univg.data import (
    GroundingDataModule,
    LISADataModule,
    MIGBenchDataModule,
    RefCOCODataModule,
    Stage2RLDataModule,
    SyntheticDataModule,
    VOSDataModule,
)
from univg.data.images import resolve_image_path

MIG = Path("/work/shared/data/mig_bench/MIG_data.json")
if not MIG.is_file():
    MIG = Path(__file__).resolve().parents[2] / "shared" / "data" / "mig_bench" / "MIG_data.json"


def test_defaults_per_dataset():
    assert (LISADataModule().max_pixels, LISADataModule().prompt_template) == (640_000, "lisa")
    assert (VOSDataModule().max_pixels, VOSDataModule().prompt_template) == (640_000, "vos")
    assert (MIGBenchDataModule().max_pixels, MIGBenchDataModule().prompt_template) == (401_408, "reasoning")
    assert RefCOCODataModule().prompt_template == "refcoco_single"
    assert Stage2RLDataModule().train_mode == "generate" and MIGBenchDataModule().train_mode == "train"
    assert LISADataModule(max_pixels=1000, prompt_template="plain").max_pixels == 1000
    with pytest.raises(ValueError, match="reads format 'lisa', not 'vos'"):
        LISADataModule(format="vos")
    with pytest.raises(ValueError, match="needs `format`"):
        GroundingDataModule(train_file="x.json")
    with pytest.raises(ValueError, match="train_mode must be one of"):
        GroundingDataModule(train_mode="rollout")


def test_subclasses_pass_every_shared_argument_on():
    """Synthetic, Mixture and VOS modules take the shared arguments through ``**kwargs`` and hand
    every one to the base unchanged; their own defaults come from class attributes."""
    from univg.data import MixtureDataModule

    kw = dict(
        prompt_template="plain",
        target_format="answer",
        train_mode="generate",
        eval_mode="train",
        batch_size=3,
        eval_batch_size=5,
        num_workers=2,
        min_pixels=1234,
        max_pixels=99_999,
        processor_path="proc",
        seed=7,
        shuffle=False,
        max_length=77,
        frame="normalised",
        skip_invalid=True,
        limit=4,
        degenerate_boxes="skip",
        val_count=9,
        two_step_resize=True,
    )
    sources = [{"format": "cot_sft", "path": "a.json", "count": 2}]
    vos = VOSDataModule(num_frames=6, test_file="t.json", eval_format="vos", eval_image_root="/r", **kw)
    assert (vos.num_frames, vos.files["test"], vos.eval_format, vos.eval_image_root) == (
        6,
        "t.json",
        "vos",
        "/r",
    )
    for dm in (SyntheticDataModule(num_train=2, **kw), MixtureDataModule(sources, **kw), vos):
        assert (dm.prompt_template, dm.target_format, dm.train_mode, dm.eval_mode) == (
            "plain",
            "answer",
            "generate",
            "train",
        )
        assert (dm.batch_size, dm.eval_batch_size, dm.num_workers) == (3, 5, 2)
        assert (dm.min_pixels, dm.max_pixels, dm.processor_path) == (1234, 99_999, "proc")
        assert (dm.seed, dm.shuffle, dm.max_length, dm.frame) == (7, False, 77, "normalised")
        assert (dm.skip_invalid, dm.limit, dm.degenerate_boxes, dm.val_count) == (True, 4, "skip", 9)
        assert dm.two_step_resize is True
    defaults = [
        (m.target_format, m.batch_size, m.eval_batch_size)
        for m in (SyntheticDataModule(), MixtureDataModule(sources), VOSDataModule(), GroundingDataModule())
    ]
    assert defaults == [("auto", 8, 8), ("auto", 1, 1), ("cot", 1, 1), ("cot", 1, 1)]


@pytest.mark.parametrize("cls", ["SyntheticDataModule", "MixtureDataModule"])
@pytest.mark.parametrize("name", ["train_file", "test_file", "image_root", "format", "eval_format"])
def test_modules_that_make_their_samples_take_no_file_arguments(cls, name):
    import univg.data

    extra = (
        {"sources": [{"format": "cot_sft", "path": "a.json", "count": 2}]}
        if cls == "MixtureDataModule"
        else {}
    )
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        getattr(univg.data, cls)(**extra, **{name: "x"})


def test_shared_arguments_parse_and_fail_at_parse_time(capsys):
    """The command line sees the base's arguments on a subclass (resolved by jsonargparse through
    ``**kwargs``): they resolve with their values, and a misspelt key or a wrong type fails before
    anything is built, naming the key."""
    from cli_helpers import DEBUG, one_error_line, print_config

    init = print_config(
        ["fit", "--config", DEBUG, "--data.init_args.val_count=3", "--data.init_args.limit=5"]
    )["data"]["init_args"]
    assert (init["val_count"], init["limit"], init["num_train"], init["degenerate_boxes"]) == (
        3,
        5,
        48,
        "swap",
    )
    assert {"two_step_resize", "eval_batch_size", "max_length", "skip_invalid"} <= set(init)
    assert "batchsize" in one_error_line(capsys, ["fit", "--config", DEBUG, "--data.init_args.batchsize=3"])
    assert "train_file: no such option" in one_error_line(
        capsys, ["fit", "--config", DEBUG, "--data.init_args.train_file=x.json"]
    )
    # switching a file module to the synthetic one (the grid's debug scale does) drops its files
    cot = str(Path(DEBUG).parent / "cot_sft.yaml")
    init = print_config(["fit", "--config", cot, "--config", DEBUG])["data"]["init_args"]
    assert "train_file" not in init and init["num_train"] == 48
    assert "degenerate_boxes" in one_error_line(
        capsys, ["fit", "--config", DEBUG, "--data.init_args.degenerate_boxes=keep"]
    )


def test_mig_bench_test_batch(processor, tmp_path, capsys):
    dm = MIGBenchDataModule(test_file=str(MIG), image_root=str(tmp_path), eval_batch_size=2, limit=2)
    dm._processor = processor
    dm.setup("test")
    assert "test: mig_bench" in capsys.readouterr().out
    for s in dm.test_samples:
        for ref in s.images:
            path = Path(resolve_image_path(ref, tmp_path))
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                Image.new("RGB", (84, 56)).save(path)
    batch = next(iter(dm.test_dataloader()))
    assert batch["ids"] == ["MIG_data-0", "MIG_data-1"] and "labels" not in batch
    assert batch["boxes"].tolist()[0] == [321, 96, 999, 724]
    assert batch["attention_mask"][:, -1].all()  # generate mode: left padded


def test_synthetic_module_seeded(processor):
    def first_ids(seed):
        dm = SyntheticDataModule(
            num_train=8, num_val=4, tasks=["single"], image_size=56, batch_size=4, seed=seed
        )
        dm._processor = processor
        dm.setup("fit")
        return dm, next(iter(dm.train_dataloader()))

    dm, batch = first_ids(0)
    assert len(dm.train_samples) == 8 and len(dm.val_samples) == 4
    assert not {s.id for s in dm.train_samples} & {s.id for s in dm.val_samples}
    assert "labels" in batch and batch["input_ids"].shape[0] == 4
    assert "<think>" in processor.tokenizer.decode(
        batch["labels"][0][batch["labels"][0] != -100]
    )  # auto -> cot
    assert first_ids(0)[1]["ids"] == batch["ids"]  # same seed, same shuffle
    val = next(iter(dm.val_dataloader()))
    assert "labels" not in val and val["ids"] == [s.id for s in dm.val_samples]  # eval: in order


def test_stage2_rl_module_prompt_only_train_batches(processor, tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (56, 56)).save(tmp_path / "imgs" / "a.jpg")
    rec = {"question": "<image>the left one", "answer": [0, 0, 500, 500], "images": ["a.jpg"]}
    (tmp_path / "s2.json").write_text(json.dumps([rec, dict(rec, question="<image>the right one")]))
    monkeypatch.chdir(tmp_path)  # a relative image_root is joined once, at read time
    dm = Stage2RLDataModule(train_file="s2.json", image_root="imgs", batch_size=2)
    dm._processor = processor
    dm.setup("fit")
    assert dm.train_samples[0].images == [str(tmp_path / "imgs" / "a.jpg")]
    monkeypatch.chdir("/")
    batch = next(iter(dm.train_dataloader()))
    assert "labels" not in batch and batch["attention_mask"][:, -1].all()
    assert sorted(batch["tasks"]) == ["multi_image", "multi_image"]


def test_yaml_class_path():
    from jsonargparse import ArgumentParser
    from lightning import LightningDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    cfg = parser.parse_object(
        {
            "data": {
                "class_path": "univg.data.LISADataModule",
                "init_args": {"test_file": "lisa.json", "batch_size": 3},
            }
        }
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, LISADataModule) and dm.batch_size == 3 and dm.max_pixels == 640_000
    cfg = parser.parse_object(
        {
            "data": {
                "class_path": "univg.data.MixtureDataModule",
                "init_args": {"sources": [{"format": "cot_sft", "path": "a.json", "count": 2}], "seed": 4},
            }
        }
    )
    assert parser.instantiate_classes(cfg).data.seed == 4


def test_eval_format_and_seeded_val_count(tmp_path, capsys):
    """A training file of one format beside MIG-Bench validation; val_count draws over the whole file."""
    train = tmp_path / "rl.json"
    train.write_text(json.dumps([{"question": "<image>dog", "answer": [1, 2, 30, 40], "images": ["a.jpg"]}]))

    def val_ids(seed: int, count: int | None) -> list[str]:
        dm = Stage2RLDataModule(
            train_file=str(train),
            val_file=str(MIG),
            eval_format="mig_bench",
            eval_image_root="/mig",
            val_count=count,
            seed=seed,
        )
        dm.setup("fit")
        assert dm.val_samples[0].images[0].startswith("/mig/MIG-Bench/images/")
        return [s.id for s in dm.val_samples]

    drawn = val_ids(0, 40)
    assert "val: 40 of 4295 samples (seeded draw, val_count 40)" in capsys.readouterr().out
    index = [int(i.rsplit("-", 1)[1]) for i in drawn]
    assert len(set(index)) == 40 and index == sorted(index)  # file order kept
    assert index[-1] > 1000 and drawn == val_ids(0, 40) and drawn != val_ids(1, 40)
    assert len(val_ids(0, None)) == 4295
    with pytest.raises(ValueError, match="val_count must be a positive number"):
        Stage2RLDataModule(val_count=0)


@pytest.mark.parametrize(
    ("cls", "files", "stage", "expected"),
    [
        ("MIGBenchDataModule", {"test_file": "data/MIG_data.json"}, "test", "mig_bench"),
        ("MIGBenchDataModule", {"test_file": "data/MIG_data_revised.json"}, "test", "mig_bench_revised"),
        ("RefCOCODataModule", {"test_file": "rec/refcocop_testA.json"}, "test", "refcoco+/testA"),
        ("RefCOCODataModule", {"val_file": "rec/refcocog_val.json"}, "val", "refcocog/val"),
        ("RefCOCODataModule", {"test_file": "rec/mine.json"}, "test", "refcoco"),
        ("LISADataModule", {"test_file": "lisa/lisa_test.json"}, "test", "lisa/test"),
        ("LLMSegDataModule", {"test_file": "llmseg/x.json"}, "test", "llmseg"),
        ("VOSDataModule", {"test_file": "vos/revos_val.json"}, "test", "revos"),
        ("VOSDataModule", {"test_file": "vos/ReasonVOS.json"}, "test", "reasonvos"),
        ("SyntheticDataModule", {}, "test", "synthetic"),
        ("CoTSFTDataModule", {"val_file": "stage1_cotsft.json"}, "val", "cotsft"),
    ],
)
def test_each_dataset_names_the_benchmark_it_evaluates(cls, files, stage, expected):
    import univg.data

    assert getattr(univg.data, cls)(**files).benchmark(stage) == expected
