"""MIG-Bench's answer frame: decided by a majority of the file's records, so one
out-of-range box cannot re-frame the others; the records that disagree are named and counted."""

from __future__ import annotations

import json
import logging

import pytest

from univg.core.sample_types import SampleError
from univg.data.readers import read_mig_bench

BASE = {
    "task": "region",
    "images": ["a.jpg", "b.jpg"],
    "question": "Please locate the 1th region picture in the source image.",
}
NORMALISED = [[0.1, 0.2, 0.5, 0.6], [0.3, 0.1, 0.4, 0.9], [0.05, 0.5, 0.25, 0.75], [0.6, 0.6, 0.9, 0.8]]


def write(tmp_path, answers, name="MIG_data.json"):
    path = tmp_path / name
    path.write_text(json.dumps([{**BASE, "answer": a} for a in answers]))
    return path


def test_one_out_of_range_box_does_not_reframe_the_file(tmp_path, caplog):
    path = write(tmp_path, [*NORMALISED[:2], [120, 200, 500, 600], *NORMALISED[2:]])
    with pytest.raises(SampleError) as exc:
        read_mig_bench(path)
    msg = str(exc.value)
    assert (
        "\n" not in msg and str(path) in msg and "record 2 (id MIG_data-2)" in msg and "field 'answer'" in msg
    )
    assert "1 of 5 answers" in msg and "[0, 1]" in msg

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="univg.data"):
        out = read_mig_bench(path, skip_invalid=True)
    # the four normalised records keep their boxes as written (not divided by 1000)
    assert [list(s.box.as_tuple()) for s in out] == [pytest.approx(a) for a in NORMALISED]
    assert [(i, rid) for i, rid, _ in out.report.skipped] == [(2, "MIG_data-2")]
    assert out.report.notes["answer_frame_outliers"] == 1 and out.report.notes["answer_frame_normalised"] == 5
    assert "answer_frame_outliers 1" in out.report.summary()
    warned = [r.getMessage() for r in caplog.records if "answer_frame_outliers" in r.getMessage()]
    assert len(warned) == 1 and "MIG_data-2" in warned[0]


def test_a_normalised_looking_box_in_a_0_1000_file_is_an_outlier(tmp_path):
    answers = [[123, 200, 500, 600], [10, 20, 300, 400], [0.1, 0.2, 0.5, 0.6], [700, 100, 900, 950]]
    path = write(tmp_path, answers, "revised_MIG_bench.json")
    out = read_mig_bench(path, skip_invalid=True)
    assert out.report.notes["answer_frame_0_1000"] == 4 and out.report.notes["answer_frame_outliers"] == 1
    assert [rid for _, rid, _ in out.report.skipped] == ["revised_MIG_bench-2"]
    assert out[0].box.as_tuple() == pytest.approx((0.123, 0.2, 0.5, 0.6))


def test_many_outliers_are_counted_and_the_first_few_named(tmp_path):
    big = [[100 + i, 100, 500, 600] for i in range(7)]
    path = write(tmp_path, NORMALISED * 3 + big)  # 12 normalised, 7 in 0-1000
    out = read_mig_bench(path, skip_invalid=True)
    assert len(out) == 12 and out.report.notes["answer_frame_outliers"] == 7
    reason = out.report.skipped[0][2]
    assert "7 of 19 answers" in reason and "MIG_data-12, MIG_data-13" in reason and "2 more" in reason


def test_a_tie_is_refused_naming_the_file_and_field(tmp_path):
    path = write(tmp_path, [NORMALISED[0], [120, 200, 500, 600]])
    with pytest.raises(SampleError) as exc:
        read_mig_bench(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and "field 'answer'" in msg and "answer_frame" in msg
    # forcing the frame reads the agreeing record and refuses the other, by name
    with pytest.raises(SampleError, match="record 1 .*wrong coordinate frame"):
        read_mig_bench(path, answer_frame="normalised")


def test_zero_one_boxes_do_not_vote(tmp_path):
    path = write(tmp_path, [[0, 0, 1, 1], [120, 200, 500, 600]], "revised_MIG_bench.json")
    out = read_mig_bench(path)  # read in 0-1000: [0, 0, 1, 1] is a tiny box there, not an outlier
    assert "answer_frame_outliers" not in out.report.notes
    assert out[0].box.as_tuple() == pytest.approx((0, 0, 0.001, 0.001))
