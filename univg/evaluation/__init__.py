"""Evaluation: scoring predictions, keeping the books of an evaluation run, and the results tables.

Scoring: :mod:`~univg.evaluation.metrics` (Acc@0.5 per task, mean IoU, parse rates) and
:mod:`~univg.evaluation.release_parse` (the release's own scorers, the ``release`` parse column).
Results: :mod:`~univg.evaluation.tables` (results files and tables in the paper's layouts, the
paper's numbers beside ours) and :mod:`~univg.evaluation.visualize` (pictures of predictions).

A :class:`~univg.modules.base.GroundingModule` generates and scores; :class:`EvaluationWriter`
(``module.evaluation``) keeps the books:

- :mod:`~univg.evaluation.screening`: samples that cannot be evaluated (missing image, broken box,
  record the reader skipped) are taken out *and counted by reason*, so a table's footer can say
  what was left out;
- :mod:`~univg.evaluation.files`: prediction files (JSONL rows appended per batch to a per-rank
  shard so an interrupted run can resume, merged into one file at the end of the epoch), where to
  resume from (an unfinished run of the same name in an earlier ``version_N`` folder), whether the
  output folder is writable;
- :mod:`~univg.evaluation.records`: parts of a prediction row (reasoning, float ground truth, the
  fingerprint of its record that a resumed run checks) and a row as ``predict`` prints it;
- :mod:`~univg.evaluation.lock`: one run at a time in a predictions folder (a lock naming its holder);
- :mod:`~univg.evaluation.benchmark`: naming the benchmark of a data module;
- :mod:`~univg.evaluation.writer`: the writer itself (set-up, epochs, gathering across processes,
  results files, pictures).
"""

from univg.evaluation.files import (
    append_jsonl,
    check_writable,
    load_resumed,
    read_jsonl,
    resume_files,
    run_key,
    shard_path,
    unfinished_run,
    write_jsonl,
)
from univg.evaluation.lock import LOCK_NAME, PredictionsLock, PredictionsLockedError
from univg.evaluation.records import (
    decode_prompts,
    extract_reasoning,
    format_prediction,
    model_frame_gt,
    record_fingerprint,
)
from univg.evaluation.screening import (
    BAD_RECORD,
    BROKEN_BOX,
    MISSING_IMAGE,
    UNDECODABLE_IMAGE,
    classify_reason,
    count_reasons,
    reader_skips,
    sample_notes,
    screen_decodable,
    screen_samples,
)
from univg.evaluation.writer import EvalRun, EvaluationWriter

__all__ = [
    "BAD_RECORD",
    "BROKEN_BOX",
    "LOCK_NAME",
    "MISSING_IMAGE",
    "PredictionsLock",
    "PredictionsLockedError",
    "UNDECODABLE_IMAGE",
    "EvalRun",
    "EvaluationWriter",
    "append_jsonl",
    "check_writable",
    "classify_reason",
    "count_reasons",
    "decode_prompts",
    "extract_reasoning",
    "format_prediction",
    "load_resumed",
    "model_frame_gt",
    "read_jsonl",
    "reader_skips",
    "record_fingerprint",
    "resume_files",
    "run_key",
    "sample_notes",
    "screen_decodable",
    "screen_samples",
    "shard_path",
    "unfinished_run",
    "write_jsonl",
]
