"""Grounding metrics: per-task Acc@0.5, unweighted AVG, parse rates, thresholds, de-duplication."""

from __future__ import annotations

import pytest
import torch

from univg.data.readers.mig_bench import MIG_TASKS
from univg.evaluation.metrics import GroundingMetrics, dedupe_records, metrics_from_records, mig_avg


def rec(
    task: str, iou: float, parsed: bool = True, iou_c: float | None = None, parsed_c: bool | None = None
) -> dict:
    return {
        "id": f"{task}-{iou}-{parsed}",
        "task": task,
        "iou": iou if parsed else 0.0,
        "pred": [1, 2, 3, 4] if parsed else None,
        "iou_compatible": iou if iou_c is None else iou_c,
        "pred_compatible": [1, 2, 3, 4] if (parsed if parsed_c is None else parsed_c) else None,
    }


def test_thresholds_are_inclusive_and_avg_is_unweighted():
    records = [rec("a", 0.5), rec("a", 0.49), rec("a", 0.7), rec("b", 0.3), rec("b", 0.31, parsed=False)]
    m = metrics_from_records(records)
    assert m["acc@0.5/a"] == pytest.approx(2 / 3)  # 0.5 counts (IoU >= 0.5), 0.49 does not
    assert m["acc@0.5/b"] == 0.0
    assert m["avg"] == pytest.approx((2 / 3 + 0.0) / 2)  # per task, then mean: not 2/5
    assert m["acc@0.5"] == pytest.approx(2 / 5)
    assert m["acc@0.3"] == pytest.approx(4 / 5)  # 0.3 counts; the unparsed one scores 0
    assert m["acc@0.7"] == pytest.approx(1 / 5)
    assert m["miou"] == pytest.approx((0.5 + 0.49 + 0.7 + 0.3 + 0.0) / 5)
    assert m["parse_rate/strict"] == pytest.approx(4 / 5)
    assert m["count/a"] == 3 and m["count/b"] == 2 and m["count"] == 5


def test_compatible_parser_as_primary():
    # strict parse failed but the compatible one found a box with IoU 0.8
    records = [rec("a", 0.0, parsed=False, iou_c=0.8, parsed_c=True), rec("a", 0.9)]
    strict = metrics_from_records(records, strict=True)
    compat = metrics_from_records(records, strict=False)
    assert strict["acc@0.5"] == 0.5 and strict["acc@0.5/compatible"] == 1.0
    assert (
        compat["acc@0.5"] == 1.0
        and compat["parse_rate/strict"] == 0.5
        and compat["parse_rate/compatible"] == 1.0
    )


def test_empty_evaluation_gives_a_zero_count_not_an_error():
    assert metrics_from_records([]) == {"count": 0.0}


def test_torchmetric_accumulates_over_updates_like_records():
    m = GroundingMetrics()
    m.update(torch.tensor([0.9, 0.1]), ["x", "y"], torch.tensor([True, True]))
    m.update(torch.tensor([float("nan")]), ["y"], torch.tensor([False]))  # NaN IoU counts as 0
    out = m.compute()
    assert out["acc@0.5/x"] == 1.0 and out["acc@0.5/y"] == 0.0 and out["count/y"] == 2
    assert out["parse_rate/strict"] == pytest.approx(2 / 3)


def test_dedupe_keeps_first_and_counts():
    recs, dropped = dedupe_records([{"id": "a", "v": 1}, {"id": "a", "v": 2}, {"id": "b", "v": 3}])
    assert recs == [{"id": "a", "v": 1}, {"id": "b", "v": 3}] and dropped == 1


def test_mig_avg_needs_all_ten_columns():
    accs = {t: i / 10 for i, t in enumerate(MIG_TASKS)}
    assert mig_avg(accs) == pytest.approx(0.45)
    del accs["reasoning"]
    with pytest.raises(KeyError, match="reasoning"):
        mig_avg(accs)
