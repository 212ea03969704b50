"""Failures found after the run is built, while it reads its data, trains or predicts: each ends as
one ``univg: error:`` line with exit status 2 that names the file, record or reward.

Parse-time and construction-time cases are in ``test_bad_inputs.py``; checkpoints written and read
in ``test_bad_inputs_checkpoints.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import DEBUG, GRPO, one_error_line
from PIL import Image

from univg.cli import main

#: each fit writes its runs/ under the test's folder; no UNIVG_DEBUG tracebacks
pytestmark = pytest.mark.usefixtures("cli_in_tmp")


def stage2_records(tmp_path: Path, answers: list, image: str = "a.png") -> tuple[Path, Path]:
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(root / "a.png")
    records = [
        {"question": "<image>Where is the red square?", "answer": answer, "images": [image]}
        for answer in answers
    ]
    path = tmp_path / "stage2.json"
    path.write_text(json.dumps(records))
    return path, root


def stage2_run(path: Path, root: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", GRPO, "--data", "univg.data.Stage2RLDataModule", "--data.train_file", str(path),
        "--data.image_root", str(root), "--data.batch_size", "2", "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "0", *extra,
    ]  # fmt: skip


def test_a_bad_training_record_found_in_fit_is_one_line(tmp_path, capsys):
    """The record is read when the fit sets its data up, after the model is built."""
    path, root = stage2_records(tmp_path, [[100, 200, 300, 400]] * 3 + [[100, 200, "x", 400]])
    line = one_error_line(capsys, stage2_run(path, root))
    assert "stage2.json" in line and "record 3" in line and "answer" in line, line


def test_an_undecodable_training_image_is_one_line(tmp_path, capsys):
    """Found by the collate function in the first training batch."""
    path, root = stage2_records(tmp_path, [[100, 200, 300, 400]] * 4, image="broken.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    line = one_error_line(capsys, stage2_run(path, root))
    assert "cannot be decoded" in line and "broken.png" in line, line


PLUGINS = """
def raises(completions, **kwargs):
    raise KeyError("box_of_image_2")

def short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [("raises", "reward 'mine' raised KeyError: 'box_of_image_2'"), ("short", "reward 'mine' returned")],
)
def test_a_failing_reward_plugin_is_one_line_naming_the_reward(tmp_path, capsys, name, expected):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(PLUGINS)
    rewards = {"accuracy": 1.0, "mine": {"class_path": f"{plugin}:{name}", "weight": 1.0}}
    config = json.dumps({"model": {"init_args": {"rewards": rewards}}})
    line = one_error_line(capsys, ["fit", "--config", GRPO, "--config", config, "--trainer.max_steps", "1"])
    assert expected in line, line


def test_predict_on_an_undecodable_image_is_one_line(tmp_path, capsys):
    """Found when the prediction batch is built, after the model: one line, exit 2."""
    from univg.predict.__main__ import main as predict_main

    good, broken = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (56, 56), (20, 200, 30)).save(good)
    broken.write_bytes(b"GIF89a" + b"\x00" * 40)
    args = ["--images", str(good), str(broken), "--instruction", "the green square", "--preset", "tiny"]
    with pytest.raises(SystemExit) as exit_info:
        predict_main([*args, "--random-weights", "--max-new-tokens", "4", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("univg.predict: error:")]
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err
    assert "images[1] cannot be decoded" in line and str(broken) in line, line


def test_an_empty_training_file_is_refused_naming_it(tmp_path, capsys):
    path, root = stage2_records(tmp_path, [])
    line = one_error_line(capsys, stage2_run(path, root))
    assert f"data.init_args.train_file {path}: no train samples" in line, line


def test_an_evaluation_file_whose_records_are_all_skipped_is_refused(tmp_path, capsys):
    path, root = stage2_records(tmp_path, [[100, 200, "x", 400]] * 2)
    run = [
        "test", "--config", DEBUG, "--data", "univg.data.Stage2RLDataModule", "--data.test_file", str(path),
        "--data.image_root", str(root), "--data.skip_invalid", "true",
    ]  # fmt: skip
    line = one_error_line(capsys, run)
    assert f"data.init_args.test_file {path}: no test samples" in line, line


def test_resuming_from_a_checkpoint_of_another_module_is_one_line(tmp_path, capsys):
    """An SFT run's checkpoint given to a GRPO fit (which also holds a reference model)."""
    sft = tmp_path / "sft.ckpt"
    cli = main(["--config", DEBUG], run=False)
    import lightning as L

    cli.model.configure_model()  # builds the weights
    state = {"state_dict": cli.model.state_dict(), "global_step": 0, "epoch": 0}
    torch.save({**state, "pytorch-lightning_version": L.__version__}, sft)
    line = one_error_line(capsys, ["fit", "--config", GRPO, "--ckpt_path", str(sft)])
    assert f"--ckpt_path {sft}: not a checkpoint of this GRPOModule and backbone" in line, line
    assert "missing keys (e.g. ref_model." in line, line


@pytest.mark.parametrize("command", ["validate", "fit"])
def test_a_prompt_over_the_models_context_is_refused_by_record(tmp_path, capsys, command):
    """The debug prompts are 62 tokens; with 24 new tokens they need 86 positions of the 80 given."""
    short = json.dumps(
        {
            "model": {
                "init_args": {"backbone": {"overrides": {"text_config": {"max_position_embeddings": 80}}}}
            }
        }
    )
    config = DEBUG if command == "validate" else GRPO
    line = one_error_line(
        capsys, [command, "--config", config, "--config", short, "--trainer.max_steps", "1"]
    )
    assert "a prompt of 62 tokens and 24 new tokens exceed the model's context of 80 tokens" in line, line
    assert "synthetic:record" in line, line
