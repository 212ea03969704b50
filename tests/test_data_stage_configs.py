"""Each stage config's data module, as configured, over small files in the release's formats.

The YAML is parsed by the project's CLI (``python -m univg fit --config ... --print_config``) with
only the data paths overridden; the data section is then instantiated the way LightningCLI does
(jsonargparse), and every batch of the train and validation loaders is collated. The files are
hand-written in the release's layouts: ``stage1_cotsft.json`` (LLaMA-Factory sharegpt, MGrounding
CoT records beside single-image RefCOCO records whose answer is the bare box), ``stage2_rl.json``
(question with ``<image>`` placeholders, 0-1000 answer, COCO records among multi-image ones) and
``MIG_data.json`` for validation, with images the test makes.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import lightning as L
import pytest
import yaml
from jsonargparse import ArgumentParser
from PIL import Image

from univg.cli import main
from univg.core.prompts import REASONING_SUFFIX
from univg.model.tokenizer import EOS_TOKEN

ROOT = Path(__file__).resolve().parent.parent
SINGLE = "This is a single image grounding task with simple reference. "

# The stage configs that read the release's files (the *_debug variants use synthetic data).
SFT_CONFIGS = ["configs/cot_sft.yaml", "configs/sft.yaml"]
GRPO_CONFIGS = [
    "configs/grpo.yaml",
    "configs/grpo_diff.yaml",
    "configs/grpo_diff_vllm.yaml",
    "configs/rl.yaml",
]

# --- the release's stage-1 file: two sources in one list ------------------------------------------
COT_A = (
    "<think>The mug in the first image is white with a blue stripe. In the second image it sits on the"
    " shelf, right of the books.</think>\n<answer>(612, 204), (745, 391)</answer>"
)
COT_B = "<think>Two people; the one holding the umbrella is on the left.</think><answer>(40,100),(300,900)</answer>"
STAGE1 = [
    {  # MGrounding CoT, two images, "messages" layout
        "messages": [
            {
                "role": "user",
                "content": "<image><image>Find the mug of the first image in the second image."
                + REASONING_SUFFIX,
            },
            {"role": "assistant", "content": COT_A},
        ],
        "images": ["mgrounding/a1.jpg", "mgrounding/a2.jpg"],
    },
    {  # RefCOCO: single COCO image, the single-image prompt, the bare box as the answer
        "messages": [
            {"role": "user", "content": "<image>" + SINGLE + "the red car on the left"},
            {"role": "assistant", "content": "(12, 34), (560, 780)"},
        ],
        "images": ["coco/train2014/COCO_train2014_000000000009.jpg"],
    },
    {  # MGrounding CoT, three images, LLaMA-Factory "conversations" layout
        "conversations": [
            {
                "from": "human",
                "value": "<image>\n<image>\n<image>\nLocate the person holding the umbrella in "
                "the 3th image." + REASONING_SUFFIX,
            },
            {"from": "gpt", "value": COT_B},
        ],
        "images": ["mgrounding/b1.jpg", "mgrounding/b2.jpg", "mgrounding/b3.jpg"],
    },
    {  # RefCOCO with an <answer> block and no reasoning
        "messages": [
            {"role": "user", "content": "<image>" + SINGLE + "dog"},
            {"role": "assistant", "content": "<answer>(100, 200), (400, 600)</answer>"},
        ],
        "images": ["coco/train2014/COCO_train2014_000000000025.jpg"],
    },
    {  # MGrounding CoT whose corners are inverted in the file (x1 > x2): swapped by the default policy
        "messages": [
            {
                "role": "user",
                "content": "<image><image>Where is the cat of image-1 in image-2?" + REASONING_SUFFIX,
            },
            {
                "role": "assistant",
                "content": "<think>It moved right.</think><answer>(700, 100), (500, 300)</answer>",
            },
        ],
        "images": ["mgrounding/c1.jpg", "mgrounding/c2.jpg"],
    },
]

# --- the release's stage-2 file --------------------------------------------------------------------
STAGE2 = [
    {
        "question": "<image><image>Find the object of the first image in the second image.",
        "answer": [100, 150, 480, 620],
        "images": ["mgrounding/a1.jpg", "mgrounding/a2.jpg"],
    },
    {
        "question": "<image>the man in the blue shirt",
        "answer": [5, 10, 250, 990],
        "images": ["dataset/coco/train2014/COCO_train2014_000000000030.jpg"],
    },
    {
        "question": "<image>\n<image>\n<image>\nWhich one in the 3th image matches the first image?",
        "answer": [300, 300, 700, 700],
        "images": ["mgrounding/b1.jpg", "mgrounding/b2.jpg", "mgrounding/b3.jpg"],
    },
    {
        "question": "<image>left zebra",
        "answer": [0, 0, 500, 999],
        "images": ["dataset/coco/train2014/COCO_train2014_000000000034.jpg"],
    },
    {
        "question": "<image><image>Locate the cup of image-1 in image-2.",
        "answer": [10, 20, 30, 40],
        "images": ["mgrounding/c1.jpg", "mgrounding/c2.jpg"],
    },
]

# --- MIG-Bench (validation) ------------------------------------------------------------------------
MIG = [
    {
        "task": "common_object",
        "images": ["./MIG-Bench/images/x/1.jpg", "./MIG-Bench/images/x/2.jpg"],
        "question": "Find the common object in the 2th image. ",
        "answer": [0.1, 0.2, 0.5, 0.6],
        "additional_info": "",
        "need_format": True,
    },
    {
        "task": "diff",
        "images": ["./MIG-Bench/images/y/1.jpg", "./MIG-Bench/images/y/2.jpg"],
        "question": "Compare these two images carefully and give me the coordinates of their difference. ",
        "answer": [0.3, 0.3, 0.4, 0.45],
        "additional_info": "",
        "need_format": True,
    },
    {
        "task": "region",
        "images": ["./MIG-Bench/images/z/src.jpg", "./MIG-Bench/images/z/r1.jpg"],
        "question": "Please locate the 1th region picture in the source image. ",
        "answer": [0.6, 0.1, 0.9, 0.4],
        "additional_info": "",
        "need_format": True,
    },
]


def make_images(root: Path, paths: list[str]) -> None:
    for i, ref in enumerate(paths):
        path = root / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (84 + 28 * (i % 2), 56), (30 * i % 255, 60, 90)).save(path)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    """The three files and their image folders."""
    root = tmp_path_factory.mktemp("release")
    files = {"stage1": STAGE1, "stage2": STAGE2, "mig": MIG}
    out = {}
    for name, records in files.items():
        path = root / f"{name}.json"
        path.write_text(json.dumps(records, indent=1))
        out[name] = path
    make_images(root / "images", [p for r in STAGE1 + STAGE2 for p in r["images"]])
    make_images(root / "mig", [p for r in MIG for p in r["images"]])
    out["images"], out["mig_root"] = root / "images", root / "mig"
    return out


def data_module(config: str, overrides: list[str]) -> L.LightningDataModule:
    """The config's data module: parsed by the project's CLI, instantiated as LightningCLI does."""
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["fit", "--config", str(ROOT / config), *overrides, "--print_config"])
        except SystemExit as e:
            code = e.code
    assert code in (0, None), f"{config} rejected:\n{err.getvalue()[-3000:]}"
    data = yaml.safe_load(out.getvalue())["data"]
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": data})).data


def paths(release: dict[str, Path], train: str) -> list[str]:
    """Only the data paths change; everything else stays as the config writes it."""
    return [
        f"--data.init_args.train_file={release[train]}",
        f"--data.init_args.image_root={release['images']}",
        f"--data.init_args.val_file={release['mig']}",
        f"--data.init_args.eval_image_root={release['mig_root']}",
    ]


def collate_all(dm: L.LightningDataModule) -> tuple[list[dict], list[dict]]:
    dm.setup("fit")
    return list(dm.train_dataloader()), list(dm.val_dataloader())


def targets(batch: dict, tokenizer) -> list[str]:
    return [tokenizer.decode(row[row != -100]) for row in batch["labels"]]


@pytest.mark.parametrize("config", SFT_CONFIGS)
def test_stage1_configs_read_the_release_file_whole(config, release, capsys):
    dm = data_module(config, paths(release, "stage1"))
    train, val = collate_all(dm)
    report = capsys.readouterr().out
    # every record of the file, both sources, counted per detected source; the inverted box swapped
    assert "5 records -> 5 samples" in report and "source_kind:coco 2; source_kind:mgrounding 3" in report
    assert "inverted corners swapped 1" in report
    samples = {s.id: s for s in dm.train_samples}
    assert len(samples) == 5 and sum(len(b["ids"]) for b in train) == 5
    assert {i: s.meta["source_kind"] for i, s in samples.items()} == {
        "stage1-0": "mgrounding",
        "stage1-1": "coco",
        "stage1-2": "mgrounding",
        "stage1-3": "coco",
        "stage1-4": "mgrounding",
    }
    assert samples["stage1-1"].prompt_template == "refcoco_single"
    tok = dm.processor.tokenizer
    got = {i: t for b in train for i, t in zip(b["ids"], targets(b, tok))}
    if dm.target_format == "answer":  # plain SFT: coordinates only, re-rendered from each box
        assert got == {
            "stage1-0": "<answer>(612, 204), (745, 391)</answer>" + EOS_TOKEN,
            "stage1-1": "<answer>(12, 34), (560, 780)</answer>" + EOS_TOKEN,
            "stage1-2": "<answer>(40, 100), (300, 900)</answer>" + EOS_TOKEN,
            "stage1-3": "<answer>(100, 200), (400, 600)</answer>" + EOS_TOKEN,
            "stage1-4": "<answer>(500, 100), (700, 300)</answer>" + EOS_TOKEN,
        }
    else:  # CoT-SFT: the file's assistant text as written; the swapped box re-rendered
        assert got == {
            "stage1-0": COT_A + EOS_TOKEN,
            "stage1-1": "(12, 34), (560, 780)" + EOS_TOKEN,
            "stage1-2": COT_B + EOS_TOKEN,
            "stage1-3": "<answer>(100, 200), (400, 600)</answer>" + EOS_TOKEN,
            "stage1-4": "<think>It moved right.</think><answer>(500, 100), (700, 300)</answer>" + EOS_TOKEN,
        }
    # the prompts are the file's: single-image template for RefCOCO, the reasoning suffix otherwise
    for b in train:
        for i, row, start in zip(b["ids"], b["input_ids"], b["prompt_lengths"]):
            prompt = tok.decode(row[:start])
            assert (SINGLE in prompt) == (samples[i].meta["source_kind"] == "coco")
            assert (REASONING_SUFFIX in prompt) == (samples[i].meta["source_kind"] == "mgrounding")
    # validation: the MIG-Bench file (500 asked, 3 there: all), prompt-only batches
    assert [i for b in val for i in b["ids"]] == ["mig-0", "mig-1", "mig-2"]
    assert all("labels" not in b for b in val)


@pytest.mark.parametrize("config", GRPO_CONFIGS)
def test_stage2_configs_read_the_release_file_whole(config, release, capsys):
    dm = data_module(config, paths(release, "stage2"))
    train, val = collate_all(dm)
    report = capsys.readouterr().out
    assert "5 records -> 5 samples" in report and "source_kind:coco 2; source_kind:mgrounding 3" in report
    assert {i for b in train for i in b["ids"]} == {f"stage2-{i}" for i in range(5)}
    tok = dm.processor.tokenizer
    for b in train:
        assert "labels" not in b  # GRPO: prompts only
        for s, row in zip(b["samples"], b["input_ids"]):
            prompt = tok.decode(row[row != tok.pad_token_id])
            coco = s.meta["source_kind"] == "coco"
            assert (s.prompt_template == "refcoco_single") == coco and (s.task == "refcoco") == coco
            assert (SINGLE in prompt) == coco and (REASONING_SUFFIX in prompt) == (not coco)
            assert prompt.endswith("<|im_start|>assistant\n")
    boxes = {i: bx.tolist() for b in train for i, bx in zip(b["ids"], b["boxes"])}
    assert boxes["stage2-1"] == [5, 10, 250, 990] and boxes["stage2-3"] == [0, 0, 500, 999]
    assert sum(len(b["ids"]) for b in val) == 3
