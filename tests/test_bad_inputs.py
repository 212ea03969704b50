"""Bad input, dead servers and broken files: each ends in one ``error:`` line that names what the
user wrote (file, record, field or config key), with the documented exit status.

Exit statuses: 1 a run that failed (a CoT build that accepted nothing or lost too many calls),
2 bad input (config, data, paths, checkpoints). The readers' and evaluation's own cases are in
``test_bad_inputs_data.py`` and ``test_bad_inputs_eval.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, Reply, write_mig_bench
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def error_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


# --------------------------------------------------------------------------- CoT build


@pytest.fixture
def mig(tmp_path):
    """A MIG-Bench-format input of 3 samples with its two images under ``imgs/MIG-Bench``."""
    root = tmp_path / "imgs"
    (root / "MIG-Bench").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "MIG-Bench" / "a.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(root / "MIG-Bench" / "b.png")
    question = (
        "These images share one object in common. Recognize and locate this object in the 2th image. [s:{}]"
    )
    path = write_mig_bench(
        tmp_path / "mig.json",
        ["./MIG-Bench/a.png", "./MIG-Bench/b.png"],
        [question.format(i) for i in range(3)],
        [0.1, 0.2, 0.5, 0.6],
    )
    return path, root


def cot_args(mig, url: str, out: Path, *extra: str) -> list[str]:
    path, root = mig
    return [
        "build", "--input", str(path), "--format", "mig_bench", "--image-root", str(root),
        "--teacher-url", url, "--teacher-model", "fake", "--out", str(out),
        "--retries", "1", "--backoff", "0.01", "--timeout", "2", "--no-progress", *extra,
    ]  # fmt: skip


GOOD_CHAIN = (
    "<think>The question asks for the shared object. Image 1 shows it in the upper left part, and "
    "image 2 shows the same object near the left edge, above the table.</think>"
    "<answer>(100, 200), (500, 600)</answer>"
)


def test_cot_build_against_a_dead_url_fails_and_says_why(mig, tmp_path, capsys):
    """The issue's reproduction: nothing listens on port 1. Before: rc 0 and an empty cot.json."""
    from univg.cot.__main__ import main

    out = tmp_path / "out" / "cot.json"
    assert main(cot_args(mig, "http://127.0.0.1:1/v1", out)) == 1
    err = capsys.readouterr().err
    (line,) = error_lines(err, "univg.cot: error:")
    assert "no sample accepted (0 of 3)" in line and str(out) in line and "not written" in line
    # 3 samples x 3 chains, each refused after 2 attempts: one distinct cause, counted 9 times
    assert "9 x http://127.0.0.1:1/v1/chat/completions: gave up after 2 attempts: connection error" in err
    assert not out.exists()  # no empty training file for a pipeline to go on with
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["accepted"] == 0 and report["failed_calls"] == 9 and report["failure_share"] == 1.0
    assert report["failure"] == "no sample accepted (0 of 3)"
    ((cause, count),) = report["causes"].items()
    assert count == 9 and "Connection refused" in cause


def test_cot_build_against_a_server_answering_500_fails(mig, tmp_path, capsys):
    from univg.cot.__main__ import main

    out = tmp_path / "cot.json"
    with FakeOpenAIServer(lambda body, headers: Reply(status=500)) as server:
        assert main(cot_args(mig, server.base_url, out)) == 1
        assert len(server.hits) == 3 * 3 * 2  # every chain of every sample, retried once
    err = capsys.readouterr().err
    assert len(error_lines(err, "univg.cot: error:")) == 1
    assert "9 x " in err and "HTTP 500" in err
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert list(report["causes"].values()) == [9] and "HTTP 500" in next(iter(report["causes"]))


@pytest.mark.parametrize(
    ("max_share", "status"),
    [
        # 1 sample of 3 loses its 3 chains; the 2 others make 3 chains + 1 judge call each:
        # 3 of 11 calls (27%) failed
        (None, 1),  # the default, 0.1
        ("0.25", 1),
        ("0.3", 0),
    ],
)
def test_cot_build_failure_share_limit(mig, tmp_path, capsys, max_share, status):
    from univg.cot.__main__ import main

    def responder(body, headers):
        text = json.dumps(body)
        return Reply(status=503) if "[s:1]" in text else Reply(GOOD_CHAIN)

    out = tmp_path / "cot.json"
    extra = [] if max_share is None else ["--max-failure-share", max_share]
    with FakeOpenAIServer(responder) as server:
        assert main(cot_args(mig, server.base_url, out, *extra)) == status
    err = capsys.readouterr().err
    report = json.loads(out.with_suffix(".report.json").read_text())
    # the two good samples are written either way (their responses are paid for and cached)
    assert report["accepted"] == 2 and len(json.loads(out.read_text())) == 2
    assert report["failed_calls"] == 3 and report["calls"] == 2 * 4 + 3  # good: 3 chains + judge
    lines = error_lines(err, "univg.cot: error:")
    if status:
        assert len(lines) == 1 and "3 of 11 calls failed (27%" in lines[0]
        assert "3 x " in err and "HTTP 503" in err
        assert report["failure"].startswith("3 of 11 calls failed")
    else:
        assert lines == [] and report["failure"] is None


def test_cot_build_unwritable_out_fails_before_any_request(mig, tmp_path, capsys):
    from univg.cot.__main__ import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with FakeOpenAIServer(lambda body, headers: Reply(GOOD_CHAIN)) as server:
        for out, flag in ((blocker / "cot.json", "--out"), (tmp_path, "--out")):
            assert main(cot_args(mig, server.base_url, out)) == 2
            (line,) = error_lines(capsys.readouterr().err, "univg.cot: error:")
            assert line.startswith(f"univg.cot: error: {flag} {out}:")
        report = blocker / "sub" / "r.json"
        assert main(cot_args(mig, server.base_url, tmp_path / "cot.json", "--report", str(report))) == 2
        assert f"--report {report}: not writable" in capsys.readouterr().err
        assert server.hits == []  # nothing paid for


def test_cot_build_missing_input_is_one_line(mig, tmp_path, capsys):
    from univg.cot.__main__ import main

    args = cot_args(mig, "http://127.0.0.1:1/v1", tmp_path / "cot.json")
    args[args.index("--input") + 1] = str(tmp_path / "nope.json")
    assert main(args) == 2
    (line,) = error_lines(capsys.readouterr().err, "univg.cot: error:")
    assert "nope.json" in line


# --------------------------------------------------------------------------- univg CLI: config


@pytest.mark.parametrize("value", ["null", "None"])
def test_backbone_checkpoint_null_on_the_command_line_means_no_checkpoint(value):
    """Switching a config from a hub model to a preset. Before: the string "None", then
    "checkpoint None does not exist"."""
    from univg.cli import main

    cfg = str(ROOT / "configs/debug.yaml")
    key = "--model.init_args.backbone.checkpoint"
    cli = main(["--config", cfg, key, "some/hub-id", key, value], run=False)
    assert cli.model.backbone.checkpoint is None
    assert main(["--config", cfg, key, "some/hub-id"], run=False).model.backbone.checkpoint == "some/hub-id"


DEBUG = str(ROOT / "configs/debug.yaml")
GRPO = str(ROOT / "configs/grpo_diff_debug.yaml")
FULL_GRPO = str(ROOT / "configs/grpo_diff.yaml")


def write_checkpoint(path: Path, truncate: bool = False) -> Path:
    """A ``torch.save`` file shaped like a Lightning checkpoint; ``truncate`` keeps its first half
    (what a full disk or an interrupted copy leaves)."""
    import torch

    torch.save({"state_dict": {"model.w": torch.zeros(64, 64)}, "global_step": 3}, path)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def univg_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """id -> (command line, what the one error line must say)."""
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    truncated = write_checkpoint(tmp / "truncated.ckpt", truncate=True)
    missing = str(tmp / "nope.json")
    return {
        "group_size_1": (
            ["fit", "--config", GRPO, "--model.init_args.group_size", "1"],
            ["model (univg.modules.GRPOModule):", "group_size must be >= 2", "got 1"],
        ),
        "unknown_phi": (
            ["fit", "--config", GRPO, "--model.init_args.phi", "expp"],
            # a typed knob: refused while parsing, with the choices, before anything is built
            ["model.init_args.phi:", "'none', 'exp', 'square', 'neglog'", "expp"],
        ),
        "unknown_preset": (
            ["fit", "--config", DEBUG, "--model.init_args.backbone.preset", "qwen9"],
            ["model.init_args.backbone.preset:", "qwen9"],
        ),
        "unknown_key": (["fit", "--config", DEBUG, "--model.init_args.lrr", "2"], ["model.init_args.lrr:"]),
        "bad_preset_override": (
            [
                "test",
                "--config",
                DEBUG,
                "--model.init_args.backbone.overrides",
                "{text_config: {hidden_size: 128}}",
            ],
            ["model (univg.modules.SFTModule):", "mrope_section [2, 3, 3] must sum to head_dim / 2 = 16"],
        ),
        "wrong_type": (
            ["fit", "--config", DEBUG, "--data.init_args.batch_size", "four"],
            ["data.init_args.batch_size:", "four"],
        ),
        "batch_size_0": (
            ["fit", "--config", DEBUG, "--data.init_args.batch_size", "0"],
            ["data (univg.data.SyntheticDataModule):", "batch_size must be >= 1, got 0"],
        ),
        "eval_batch_size_0": (
            ["test", "--config", DEBUG, "--data.init_args.eval_batch_size", "0"],
            ["data (univg.data.SyntheticDataModule):", "eval_batch_size must be >= 1, got 0"],
        ),
        "max_new_tokens_0": (
            ["test", "--config", DEBUG, "--model.init_args.max_new_tokens", "0"],
            ["model (univg.modules.SFTModule):", "max_new_tokens must be >= 1, got 0"],
        ),
        "missing_config": (["fit", "--config", missing], ["config:", missing]),
        "max_steps_0": (
            ["fit", "--config", DEBUG, "--trainer.max_steps", "0"],
            ["trainer.max_steps: 0 trains nothing"],
        ),
        "lr_0": (
            ["fit", "--config", GRPO, "--model.init_args.lr", "0"],
            ["model.init_args.lr must be > 0, got 0"],
        ),
        "lr_negative": (
            ["fit", "--config", DEBUG, "--model.init_args.lr=-1e-3"],
            ["model.init_args.lr must be > 0, got -0.001"],
        ),
        "missing_train_file": (
            ["fit", "--config", DEBUG, "--data", "univg.data.CoTSFTDataModule", "--data.train_file", missing],
            [f"data.init_args.train_file: {missing} does not exist"],
        ),
        "missing_stage1_checkpoint": (
            [
                "fit",
                "--config",
                FULL_GRPO,
                "--model.init_args.init_checkpoint",
                str(tmp / "stage1" / "last.ckpt"),
            ],
            [
                "init_checkpoint",
                "no such file",
                "python -m univg fit --config configs/cot_sft.yaml writes it",
            ],
        ),
        "missing_stage2_data": (
            [
                "fit",
                "--config",
                FULL_GRPO,
                "--model.init_args.init_checkpoint",
                "null",
                "--data.init_args.train_file",
                str(tmp / "UniVG-R1-data" / "stage2_rl.json"),
            ],
            ["data.init_args.train_file:", "does not exist", "python -m univg data prepare univg_stage2"],
        ),  # fmt: skip
        "missing_image_root": (
            ["fit", "--config", DEBUG, "--data", "univg.data.CoTSFTDataModule", "--data.image_root", missing],
            [f"data.init_args.image_root: {missing} does not exist"],
        ),
        "garbage_ckpt_path": (
            ["fit", "--config", DEBUG, "--ckpt_path", str(garbage)],
            [f"--ckpt_path {garbage}: not a readable checkpoint"],
        ),
        "truncated_ckpt_path": (
            ["fit", "--config", DEBUG, "--ckpt_path", str(truncated)],
            [f"--ckpt_path {truncated}: not a readable checkpoint"],
        ),
        "missing_ckpt_path": (
            ["test", "--config", DEBUG, "--ckpt_path", str(tmp / "gone.ckpt")],
            [f"--ckpt_path {tmp / 'gone.ckpt'}: no such file"],
        ),
        "truncated_init_checkpoint": (
            ["test", "--config", DEBUG, "--model.init_args.init_checkpoint", str(truncated)],
            [f"model.init_args.init_checkpoint {truncated}: not a readable checkpoint"],
        ),
        "garbage_init_checkpoint": (
            ["test", "--config", DEBUG, "--model.init_args.init_checkpoint", str(garbage)],
            [f"model.init_args.init_checkpoint {garbage}: not a readable checkpoint"],
        ),
    }


CASES = [
    "group_size_1", "unknown_phi", "unknown_preset", "unknown_key", "bad_preset_override", "wrong_type", "batch_size_0",
    "eval_batch_size_0", "max_new_tokens_0", "missing_config", "missing_stage1_checkpoint",
    "missing_stage2_data", "max_steps_0", "lr_0", "lr_negative", "missing_train_file", "missing_image_root",
    "garbage_ckpt_path", "truncated_ckpt_path", "missing_ckpt_path", "truncated_init_checkpoint",
    "garbage_init_checkpoint",
]  # fmt: skip


def test_every_case_is_run(tmp_path):
    assert sorted(univg_cases(tmp_path)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_univg_cli_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    from univg.cli import main

    monkeypatch.delenv("UNIVG_DEBUG", raising=False)
    args, expected = univg_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = error_lines(err, "univg: error:")
    assert len(lines) == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == lines[0]  # the last word, nothing after it
    assert "Traceback" not in err and "weights_only" not in err
    for text in expected:
        assert text in lines[0], lines[0]


def test_univg_cli_one_line_from_the_shell_and_traceback_on_request(tmp_path):
    """The real entry point: exit status 2 and a short stderr (no chained tracebacks);
    UNIVG_DEBUG=1 shows the traceback."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "univg", "fit", "--config", GRPO, "--model.init_args.group_size", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("UNIVG_DEBUG", None)
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("univg: error: model (univg.modules.GRPOModule)")
    assert len(out.stderr.strip().splitlines()) <= 3, out.stderr  # at most Lightning's "Seed set" notes
    debug = subprocess.run(
        args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**env, "UNIVG_DEBUG": "1"}
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "group_size must be >= 2" in debug.stderr


def test_load_model_weights_names_a_truncated_file(tmp_path, tiny_model):
    from univg.model.checkpoints import CheckpointError, load_model_weights

    truncated = write_checkpoint(tmp_path / "t.ckpt", truncate=True)
    with pytest.raises(CheckpointError, match=f"init_checkpoint {truncated}: not a readable checkpoint"):
        load_model_weights(tiny_model, truncated)


# --------------------------------------------------------------------------- reports merge


def test_reports_merge_names_a_corrupt_results_file_and_the_position(tmp_path, capsys):
    from univg.reports import main

    run = tmp_path / "runs" / "a" / "version_0"
    run.mkdir(parents=True)
    bad = run / "results_test.json"
    bad.write_text('{"run": "a", "benchmark": "mig_bench",\n "metrics": {"avg": 0.5,')  # cut short
    assert main(["merge", "--runs", str(tmp_path / "runs"), "--layout", "mig"]) == 2
    (line,) = error_lines(capsys.readouterr().err, "univg.reports: error:")
    assert (
        line
        == f"univg.reports: error: {bad}: not valid JSON at line 2, column 25 (Expecting property name enclosed in double quotes)"
    )
    bad.write_text("[1, 2]")
    assert main(["merge", "--runs", str(bad), "--layout", "mig"]) == 2
    assert f"{bad}: expected a results object, got a JSON list" in capsys.readouterr().err
