"""Command line: ``python -m univg.cot build ...`` and ``python -m univg.cot import-review ...``.

Example (any OpenAI-compatible server, e.g. vLLM serving Qwen2.5-VL-72B)::

    python -m univg.cot build --input MIG_data.json --format mig_bench --image-root data/ \\
        --teacher-url http://localhost:8000/v1 --teacher-model Qwen/Qwen2.5-VL-72B-Instruct \\
        --out cot.json --review-sample 0.1 --review-out review/review.html
    # mark items in review/review.html, download marks.json, then
    python -m univg.cot import-review --review review/review.jsonl --marks marks.json --out cot.reviewed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from univg.core.errors import UsageError
from univg.core.help_text import with_examples
from univg.cot.builder import BuildConfig, CotBuilder, pick_review, relative_images, write_output
from univg.cot.cache import ResponseCache
from univg.cot.client import ChatClient
from univg.cot.report import DEFAULT_MAX_FAILURE_SHARE

#: Exit statuses: a failed run (nothing accepted, too many failed calls), bad input, interrupted.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m univg.cot",
        description="Build cold-start CoT data.",
        **with_examples(
            "python -m univg.cot build --input MIG_data.json --format mig_bench --image-root data/ --out cot.json",
            "python -m univg.cot import-review --review review/review.jsonl --marks marks.json --out cot.reviewed.json",
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="teacher chains -> checks -> judge -> stage-1 CoT file")
    b.add_argument("--input", required=True, help="grounding annotations (read by univg.data.read_samples)")
    b.add_argument("--format", required=True, help="dataset format name: mig_bench, mgrounding, refcoco, ...")
    b.add_argument("--image-root", default=None, help="directory that relative image paths start from")
    b.add_argument("--out", required=True, help="output JSON (stage-1 CoT format)")
    b.add_argument(
        "--teacher-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1"
    )
    b.add_argument("--teacher-model", required=True)
    b.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    b.add_argument("--judge-url", default=None, help="judge base URL (default: the teacher's)")
    b.add_argument("--judge-model", default=None, help="judge model (default: the teacher model)")
    b.add_argument("--judge-api-key-env", default=None, help="default: --api-key-env")
    b.add_argument("--no-judge-images", action="store_true", help="send the judge text only (cheaper)")
    b.add_argument("--chains", type=int, default=3)
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--retries", type=int, default=3)
    b.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    b.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    b.add_argument("--temperature", type=float, default=1.0)
    b.add_argument("--max-tokens", type=int, default=1024)
    b.add_argument(
        "--extra-params",
        type=json.loads,
        default={},
        help='JSON merged into every request body, null removes a field: \'{"max_tokens": null, "top_p": 0.9}\'',
    )
    b.add_argument("--iou-threshold", type=float, default=0.5)
    b.add_argument(
        "--min-words", type=int, default=15, help="words the reasoning needs once numbers are removed"
    )
    b.add_argument("--cache", default=None, help="response cache directory (default: OUT with suffix .cache)")
    b.add_argument("--no-cache", action="store_true")
    b.add_argument("--limit", type=int, default=None, help="only the first N samples")
    b.add_argument("--price-in", type=float, default=None, help="price per 1M prompt tokens")
    b.add_argument("--price-out", type=float, default=None, help="price per 1M completion tokens")
    b.add_argument("--report", default=None, help="JSON report path (default: OUT with suffix .report.json)")
    b.add_argument("--review-sample", type=float, default=0.0, help="fraction of accepted samples to review")
    b.add_argument("--review-out", default=None, help="review HTML path (a .jsonl is written beside it)")
    b.add_argument("--review-seed", type=int, default=0)
    b.add_argument("--review-page-size", type=int, default=200)
    b.add_argument("--no-progress", action="store_true")
    b.add_argument(
        "--max-failure-share",
        type=float,
        default=DEFAULT_MAX_FAILURE_SHARE,
        help="fail the run (exit 1) when more than this share of the calls sent fails after retries "
        f"(default {DEFAULT_MAX_FAILURE_SHARE}); a run that accepts no sample always fails",
    )

    r = sub.add_parser("import-review", help="apply accept/reject marks to a built CoT file")
    r.add_argument("--review", required=True, help="the review .jsonl written by build")
    r.add_argument("--marks", required=True, nargs="+", help="marks JSON file(s) {id: accept|reject}")
    r.add_argument("--out", required=True)
    r.add_argument("--input", default=None, help="built CoT file (default: the one named in the review)")
    return parser


def _build(args: argparse.Namespace) -> int:
    from univg.data import read_samples

    if args.review_sample > 0 and not args.review_out:
        raise UsageError("--review-sample needs --review-out")
    if not 0.0 <= args.max_failure_share <= 1.0:
        raise UsageError(f"--max-failure-share must be in [0, 1], got {args.max_failure_share}")
    out = Path(args.out)
    report_path = Path(args.report) if args.report else out.with_suffix(".report.json")
    # Every output place is checked before the first request is paid for.
    for flag, path in (("--out", out), ("--report", report_path), ("--review-out", args.review_out)):
        if path is not None:
            _check_writable(flag, Path(path))
    if not args.no_cache:
        _check_writable("--cache", Path(args.cache or out.with_suffix(".cache")) / "responses.jsonl")
    samples = read_samples(args.input, args.format, image_root=args.image_root)
    if args.limit is not None:
        samples = samples[: args.limit]
    # Readers join paths to the image root; the builder (and the built file) keep them relative.
    samples = [relative_images(s, args.image_root) for s in samples]
    teacher = ChatClient(
        args.teacher_url, args.teacher_model, os.environ.get(args.api_key_env),
        timeout=args.timeout, retries=args.retries, backoff=args.backoff,
    )  # fmt: skip
    judge = None
    if args.judge_url or args.judge_model or args.judge_api_key_env:
        judge = ChatClient(
            args.judge_url or args.teacher_url,
            args.judge_model or args.teacher_model,
            os.environ.get(args.judge_api_key_env or args.api_key_env),
            timeout=args.timeout, retries=args.retries, backoff=args.backoff,
        )  # fmt: skip
    config = BuildConfig(
        chains=args.chains,
        concurrency=args.concurrency,
        iou_threshold=args.iou_threshold,
        min_words=args.min_words,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        judge_images=not args.no_judge_images,
        image_root=args.image_root,
        extra_params=args.extra_params,
    )
    cache = None if args.no_cache else ResponseCache(args.cache or out.with_suffix(".cache"))
    builder = CotBuilder(teacher, config, judge=judge, cache=cache)
    try:
        results, report = builder.build(
            samples, progress=not args.no_progress, price_in=args.price_in, price_out=args.price_out
        )
    except KeyboardInterrupt:
        print(
            "interrupted: completed responses are cached; rerun the same command to resume", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    finally:
        if cache is not None:
            cache.close()
    failure = report.failure(args.max_failure_share)
    record = {**report.as_dict(), "max_failure_share": args.max_failure_share, "failure": failure}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(report.summary(causes=failure is None), file=sys.stderr)
    if report.accepted == 0:
        # No empty training file: a pipeline must not go on to train on nothing.
        print(f"univg.cot: error: {failure}; {out} not written; causes in {report_path}", file=sys.stderr)
        print(report.causes_text(), file=sys.stderr)
        return EXIT_FAILED
    out.parent.mkdir(parents=True, exist_ok=True)
    write_output(results, out)
    print(f"wrote {report.accepted} samples to {out}; report {report_path}", file=sys.stderr)
    if failure is not None:
        # The accepted samples are kept (and every response is cached), but the run is not a success.
        print(f"univg.cot: error: {failure}; causes in {report_path}", file=sys.stderr)
        print(report.causes_text(), file=sys.stderr)
        return EXIT_FAILED
    if args.review_sample > 0:
        from univg.cot.review import export_review

        chosen = pick_review(results, args.review_sample, args.review_seed)
        pages, jsonl = export_review(chosen, args.review_out, out, args.image_root, args.review_page_size)
        print(f"review: {len(chosen)} items in {', '.join(map(str, pages))} and {jsonl}", file=sys.stderr)
    return 0


def _import_review(args: argparse.Namespace) -> int:
    from univg.cot.review import apply_review

    counts = apply_review(args.review, args.marks, args.out, built=args.input)
    print(json.dumps(counts), file=sys.stderr)
    return 0


def _check_writable(flag: str, path: Path) -> None:
    """Raise :class:`UsageError` unless a file can be written at ``path`` (its folders are made).

    Tried for real (a temporary file in the folder), not with ``os.access``, which says yes to root
    on a read-only file system.
    """
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as err:
        raise UsageError(f"{flag} {path}: not writable ({err.strerror or err})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 1 failed run, 2 bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            return _build(args)
        return _import_review(args)
    except (UsageError, OSError, ValueError) as err:
        # Bad input (a missing file, a malformed record, an unwritable path): one line, no traceback.
        # Readers' errors name the file, record and field already.
        if os.environ.get("UNIVG_DEBUG"):
            raise
        print(f"univg.cot: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE


def _one_line(err: BaseException) -> str:
    """The message of ``err``; an ``OSError`` without its file name gets it added."""
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in str(err):
        return f"{err.filename}: {err}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
