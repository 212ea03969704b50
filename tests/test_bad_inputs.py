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
