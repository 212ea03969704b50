"""CotBuilder end to end against a scripted fake teacher: checks, judge, retries, cache, resume."""

from __future__ import annotations

import json

import pytest
from fake_openai_server import (
    FakeOpenAIServer,
    Reply,
    ScriptedTeacher,
    request_images,
    request_text,
    write_mig_bench,
)
from PIL import Image

from univg.core.boxes import Box
from univg.core.sample_types import GroundingSample
from univg.cot import BuildConfig, ChatClient, CotBuilder, ResponseCache, check_chain, write_output
from univg.cot.__main__ import main
from univg.cot.prompts import JUDGE_SYSTEM
from univg.data import read_cot_sft

GT = Box(0.1, 0.2, 0.5, 0.6)  # (100, 200), (500, 600) in the 0-1000 frame
GT_TEXT = "(100, 200), (500, 600)"


def chain(word: str, box: str = GT_TEXT) -> str:
    """A chain that passes every check (with the right box): 20+ words, ``word`` marks it."""
    return (
        f"<think>The question asks for the {word} object. Image 1 shows it in the upper left part, "
        f"and image 2 shows the same {word} object near the left edge, above the table.</think>"
        f"<answer>{box}</answer>"
    )


BAD_FORMAT = Reply("The object is at (100, 200), (500, 600).")
SHALLOW = Reply(f"<think>It is at {GT_TEXT}.</think><answer>{GT_TEXT}</answer>")
LEAK = Reply(chain("leaky").replace("The question asks", "The ground truth box tells us"))

SCRIPT = {
    # three good chains; the judge picks the second
    "good": {
        "chain": [Reply(chain("alpha")), Reply(chain("beta")), Reply(chain("gamma"))],
        "judge": [Reply("<best>2</best>")],
    },
    # wrong box, bad format, then one good chain whose box is off by a little (IoU 0.95)
    "mixed": {
        "chain": [
            Reply(chain("wrong", "(900, 900), (990, 990)")),
            BAD_FORMAT,
            Reply(chain("delta", "(120, 200), (500, 600)")),
        ],
        "judge": [Reply("<best>1</best>")],
    },
    "allbad": {"chain": [BAD_FORMAT], "judge": [Reply("<best>1</best>")]},
    "shallow": {"chain": [SHALLOW], "judge": [Reply("<best>1</best>")]},
    "leak": {"chain": [LEAK], "judge": [Reply("<best>1</best>")]},
    # the first request sleeps past the client timeout, its retry succeeds
    "slow": {
        "chain": [Reply(chain("late"), delay=1.0), Reply(chain("eps")), Reply(chain("zeta"))],
        "judge": [Reply("<best>1</best>")],
    },
    # HTTP 500 then success
    "flaky": {"chain": [Reply(status=500), Reply(chain("eta"))], "judge": [Reply("<best>3</best>")]},
    # the server never recovers: each chain fails after retries + 1 attempts
    "dead": {"chain": [Reply(status=500)], "judge": [Reply("<best>1</best>")]},
    # the judge rambles: the highest-IoU chain is taken
    "garbage": {
        "chain": [
            Reply(chain("one", "(110, 200), (500, 600)")),
            Reply(chain("two")),
            Reply(chain("three", "(100, 200), (520, 600)")),
        ],
        "judge": [Reply("Chains 1, 2 and 3 are all fine.")],
    },
}
TAGS = list(SCRIPT)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "a.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(root / "b.png")
    return root


def make_samples(tags):
    return [
        GroundingSample(
            id=f"id-{tag}",
            task="common_object",
            images=["a.png", "b.png"],
            target_index=1,
            question=f"Find the common object in the second image. [s:{tag}]",
            box=GT,
        )
        for tag in tags
    ]


def make_builder(server, cache=None, **config):
    client = ChatClient(server.base_url, "teacher-x", timeout=0.3, retries=1, backoff=0.01)
    return CotBuilder(client, BuildConfig(**{"concurrency": 4, **config}), cache=cache)


def test_chains_checks_judge_retries_and_report(image_root, tmp_path):
    teacher = ScriptedTeacher(SCRIPT, JUDGE_SYSTEM)
    with FakeOpenAIServer(teacher) as server:
        builder = make_builder(server, image_root=str(image_root))
        results, report = builder.build(make_samples(TAGS), progress=False, price_in=2.0, price_out=10.0)
        hits = list(server.hits)

    by_tag = {r.sample.id[3:]: r for r in results}
    assert [r.sample.id for r in results] == [f"id-{t}" for t in TAGS]  # input order kept
    assert (by_tag["good"].chosen, by_tag["good"].selection) == (1, "judge")
    assert "beta object" in by_tag["good"].reasoning
    assert (by_tag["mixed"].chosen, by_tag["mixed"].selection) == (2, "single")
    assert [c.reason for c in by_tag["mixed"].chains] == ["iou", "format", None]
    assert by_tag["allbad"].reason == "no_valid_chain"
    assert [c.reason for c in by_tag["shallow"].chains] == ["shallow_reasoning"] * 3
    assert [c.reason for c in by_tag["leak"].chains] == ["leaks_answer"] * 3
    assert (by_tag["slow"].chosen, by_tag["slow"].selection) == (0, "judge")
    assert "eps object" in by_tag["slow"].reasoning  # the retry's reply, not the timed-out one
    assert (by_tag["flaky"].chosen, "eta object" in by_tag["flaky"].reasoning) == (2, True)
    assert by_tag["dead"].reason == "request_error"
    assert all("gave up after 2 attempts" in c.error for c in by_tag["dead"].chains)
    assert (by_tag["garbage"].chosen, by_tag["garbage"].selection) == (1, "judge_fallback")

    # calls: good 3+1, mixed 3, allbad 3, shallow 3, leak 3, slow 3+1, flaky 3+1, dead 3, garbage 3+1
    # HTTP requests add slow's and flaky's retried first chain and dead's 3 retries
    assert report.calls == 31 and report.requests == 36 == len(hits) and report.retries == 5
    assert report.failed_calls == 3 and report.cache_hits == 0
    assert (report.samples_in, report.accepted) == (9, 5)
    assert dict(report.rejected) == {"no_valid_chain": 3, "request_error": 1}
    assert dict(report.chain_rejected) == {
        "iou": 1,
        "format": 4,
        "shallow_reasoning": 3,
        "leaks_answer": 3,
        "request_error": 3,
    }
    assert report.chains_passed == 13
    assert dict(report.selection) == {"judge": 3, "single": 1, "judge_fallback": 1}
    # 28 successful responses x (100 prompt, 20 completion) tokens; $2 / $10 per 1M
    assert (report.prompt_tokens, report.completion_tokens) == (2800, 560)
    assert report.cost == pytest.approx(0.0112)
    text = report.summary()
    assert "accepted 5" in text and "no_valid_chain" in text and "estimated cost this run: 0.0112" in text

    # the teacher saw both images and the ground truth in the 0-1000 frame, and the target image
    first = next(h for h in hits if h["messages"][0]["content"] != JUDGE_SYSTEM)
    assert len(request_images(first)) == 2 and request_images(first)[0].startswith("data:image/png;base64,")
    assert f"box {GT_TEXT} in image 2 (of 2)" in request_text(first)
    assert first["temperature"] == 1.0 and first["model"] == "teacher-x"
    judge = next(h for h in hits if h["messages"][0]["content"] == JUDGE_SYSTEM)
    assert "Chain 3:" in request_text(judge) and judge["temperature"] == 0.0

    # the output reads back with the chosen reasoning and the ground-truth (not the teacher's) box
    out = tmp_path / "cot.json"
    assert write_output(results, out) == 5
    back = {s.id: s for s in read_cot_sft(out)}
    assert sorted(back) == sorted(f"id-{t}" for t in ("good", "mixed", "slow", "flaky", "garbage"))
    for tag in ("good", "mixed", "slow", "flaky", "garbage"):
        sample = back[f"id-{tag}"]
        assert sample.reasoning == by_tag[tag].reasoning
        assert sample.box == GT
        assert sample.images == ["a.png", "b.png"] and sample.target_index == 1
    record = next(r for r in json.loads(out.read_text()) if r["id"] == "id-mixed")
    assert record["messages"][1]["content"].endswith(f"<answer>{GT_TEXT}</answer>")  # not (120, 200)
    assert record["messages"][0]["content"].startswith("<image><image>Find the common object")


def test_rerun_over_the_cache_pays_nothing_but_retries_failures(image_root, tmp_path):
    teacher = ScriptedTeacher(SCRIPT, JUDGE_SYSTEM)
    samples = make_samples(TAGS)
    with FakeOpenAIServer(teacher) as server:
        with ResponseCache(tmp_path / "cache") as cache:
            first, _ = make_builder(server, cache, image_root=str(image_root)).build(samples, progress=False)
        paid = len(server.hits)
        with ResponseCache(tmp_path / "cache") as cache:
            second, report = make_builder(server, cache, image_root=str(image_root)).build(
                samples, progress=False
            )
        new = server.hits[paid:]
    # only the dead sample's three chains (failures are not cached) are asked again: 2 attempts each
    assert len(new) == 6
    assert all("[s:dead]" in request_text(h) for h in new)
    assert report.cache_hits == 28 and report.requests == 6 and report.prompt_tokens == 0
    assert report.cached_prompt_tokens == 2800
    assert [(r.chosen, r.reason, r.reasoning) for r in second] == [
        (r.chosen, r.reason, r.reasoning) for r in first
    ]


def test_interrupted_run_resumes_and_pays_only_for_the_rest(image_root, tmp_path):
    tags = [f"g{i}" for i in range(6)]
    script = {
        t: {
            "chain": [Reply(chain(f"w{t}a")), Reply(chain(f"w{t}b")), Reply(chain(f"w{t}c"))],
            "judge": [Reply("<best>3</best>")],
        }
        for t in tags
    }
    samples = make_samples(tags)
    seen = []

    def stop_after_two(result):
        seen.append(result.sample.id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with FakeOpenAIServer(ScriptedTeacher(script, JUDGE_SYSTEM)) as server:
        with ResponseCache(tmp_path / "cache") as cache:
            builder = make_builder(server, cache, image_root=str(image_root), concurrency=1)
            with pytest.raises(KeyboardInterrupt):
                builder.build(samples, on_result=stop_after_two, progress=False)
        interrupted = len(server.hits)
        # 2 samples reported; the one already running when the interrupt came finishes and is cached
        assert interrupted in (8, 12)
        with ResponseCache(tmp_path / "cache") as cache:
            results, report = make_builder(server, cache, image_root=str(image_root), concurrency=3).build(
                samples, progress=False
            )
        total = len(server.hits)
    assert total == 6 * 4  # exactly one uninterrupted run's worth of requests, nothing paid twice
    assert report.cache_hits == interrupted and report.requests == total - interrupted
    assert [r.accepted for r in results] == [True] * 6
    assert all(f"w{t}c object" in r.reasoning for t, r in zip(tags, results))


def test_judge_can_be_a_different_endpoint_and_model(image_root):
    script = {"good": SCRIPT["good"]}
    teacher_side, judge_side = ScriptedTeacher(script, JUDGE_SYSTEM), ScriptedTeacher(script, JUDGE_SYSTEM)
    with FakeOpenAIServer(teacher_side) as t_server, FakeOpenAIServer(judge_side) as j_server:
        teacher = ChatClient(t_server.base_url, "teacher-x", timeout=1)
        judge = ChatClient(j_server.base_url, "judge-y", timeout=1)
        extra = {"max_tokens": None, "top_p": 0.5}
        config = BuildConfig(image_root=str(image_root), judge_images=False, extra_params=extra)
        builder = CotBuilder(teacher, config, judge=judge)
        (result,), report = builder.build(make_samples(["good"]), progress=False)
    assert teacher_side.calls == {("good", "chain"): 3} and judge_side.calls == {("good", "judge"): 1}
    assert j_server.hits[0]["model"] == "judge-y" and request_images(j_server.hits[0]) == []
    assert result.chosen == 1 and report.requests == 4
    assert [
        (h["temperature"], h["top_p"], "max_tokens" in h) for h in (t_server.hits[0], j_server.hits[0])
    ] == [
        (1.0, 0.5, False),
        (0.0, 0.5, False),
    ]


def test_bad_ground_truth_and_missing_image_are_rejected_without_paying(image_root):
    degenerate = make_samples(["good"])[0]
    degenerate.box = Box(0.5, 0.5, 0.5, 0.9)
    missing = make_samples(["good"])[0]
    missing.id, missing.images = "id-missing", ["a.png", "nope.png"]
    with FakeOpenAIServer(ScriptedTeacher(SCRIPT, JUDGE_SYSTEM)) as server:
        results, report = make_builder(server, image_root=str(image_root)).build(
            [degenerate, missing], progress=False
        )
        assert server.hits == []
    assert [r.reason for r in results] == ["bad_ground_truth", "image_error"]
    assert "nope.png" in results[1].detail
    assert dict(report.rejected) == {"bad_ground_truth": 1, "image_error": 1}


def test_check_chain_leak_and_threshold():
    good = chain("plain")
    assert check_chain(good, (100, 200, 500, 600)).ok
    # IoU of (100,200,500,600) with (100,200,500,1000) is 0.5: kept at 0.5, dropped at 0.51
    assert check_chain(good, (100, 200, 500, 1000), iou_threshold=0.5).ok
    assert check_chain(good, (100, 200, 500, 1000), iou_threshold=0.51).reason == "iou"
    assert check_chain(
        good.replace("the upper left part", "the provided box"), (100, 200, 500, 600)
    ).reason == ("leaks_answer")
    assert check_chain(good, (100, 200, 500, 600), min_words=40).reason == "shallow_reasoning"


def _mig_input(tmp_path, image_root, tags):
    (image_root / "MIG-Bench").mkdir()
    for name in ("a.png", "b.png"):
        (image_root / name).rename(image_root / "MIG-Bench" / name)
    questions = [
        f"These images share one object in common. Recognize and locate this object in the 2th image. [s:{tag}]"
        for tag in tags
    ]
    images = ["./MIG-Bench/a.png", "./MIG-Bench/b.png"]
    return write_mig_bench(tmp_path / "mig.json", images, questions, [0.1, 0.2, 0.5, 0.6])


def test_cli_build_limit_then_resume(image_root, tmp_path, capsys):
    tags = ["good", "mixed", "allbad", "garbage"]
    mig = _mig_input(tmp_path, image_root, tags)
    out = tmp_path / "out" / "cot.json"
    teacher = ScriptedTeacher(SCRIPT, JUDGE_SYSTEM)
    with FakeOpenAIServer(teacher) as server:
        args = [
            "build", "--input", str(mig), "--format", "mig_bench", "--image-root", str(image_root),
            "--teacher-url", server.base_url, "--teacher-model", "teacher-x", "--out", str(out),
            "--timeout", "1", "--retries", "1", "--no-progress", "--price-in", "1", "--price-out", "1",
        ]  # fmt: skip
        assert main([*args, "--limit", "2"]) == 0
        first = len(server.hits)
        assert first == 4 + 3  # good: 3 chains + judge; mixed: 3 chains
        assert main(args) == 0
        assert len(server.hits) - first == 3 + 4  # allbad: 3 chains; garbage: 3 chains + judge
    report = json.loads((tmp_path / "out" / "cot.report.json").read_text())
    assert report["samples_in"] == 4 and report["accepted"] == 3 and report["cache_hits"] == 7
    assert report["rejected"] == {"no_valid_chain": 1}
    assert (tmp_path / "out" / "cot.cache" / "responses.jsonl").exists()
    back = read_cot_sft(out, image_root=image_root)
    assert [s.id for s in back] == [json.loads(out.read_text())[i]["id"] for i in range(3)]
    assert all(s.box == GT and s.target_index == 1 for s in back)
    assert back[0].images == [
        str(image_root / "MIG-Bench" / "a.png"),
        str(image_root / "MIG-Bench" / "b.png"),
    ]
    assert json.loads(out.read_text())[0]["images"] == [
        "MIG-Bench/a.png",
        "MIG-Bench/b.png",
    ]  # relative, as input
    assert "beta object" in back[0].reasoning
    assert "wrote 3 samples" in capsys.readouterr().err


@pytest.mark.slow
def test_built_file_trains_with_the_cot_sft_debug_config(image_root, tmp_path):
    """The builder's output is a stage-1 CoT file: configs/cot_sft_debug.yaml trains on it as is."""
    import subprocess
    import sys
    from pathlib import Path

    mig = _mig_input(tmp_path, image_root, ["good", "mixed", "garbage"])
    out = tmp_path / "cot.json"
    with FakeOpenAIServer(ScriptedTeacher(SCRIPT, JUDGE_SYSTEM)) as server:
        args = [
            "build", "--input", str(mig), "--format", "mig_bench", "--image-root", str(image_root),
            "--teacher-url", server.base_url, "--teacher-model", "teacher-x", "--out", str(out),
            "--timeout", "1", "--retries", "1", "--no-progress",
        ]  # fmt: skip
        assert main(args) == 0
    root = Path(__file__).resolve().parents[1]
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "univg",
            "fit",
            "--config",
            str(root / "configs/cot_sft_debug.yaml"),
            "--data",
            "univg.data.CoTSFTDataModule",
            "--data.train_file",
            str(out),
            "--data.image_root",
            str(image_root),
            "--data.batch_size",
            "2",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ],  # fmt: skip
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("events.out.tfevents.*"))
