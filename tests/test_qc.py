"""The QC columns of the volume tables: flags, lower-bound marker and the pass/review/fail rating."""

from __future__ import annotations

import pytest

from ichseg.pipeline.checks import MIN_HEAD_COVERAGE_MM
from ichseg.pipeline.qc import QC_FAIL, QC_PASS, QC_REVIEW, qc_columns, qc_rating

GOOD = {"registration_dice": 0.85, "hemorrhage_at_roi_edge_ml": 0.0,
        "hemorrhage_outside_brain_fraction": 0.01, "head_coverage_mm": 140.0}


def test_clean_scan_passes():
    columns = qc_columns(1300.0, GOOD, [])
    assert columns["qc"] == QC_PASS
    assert not any(v for k, v in columns.items() if k.startswith("flag_"))
    assert columns["volumes_lower_bound"] is False


@pytest.mark.parametrize(("change", "expected"), [
    ({"registration_dice": 0.3}, QC_FAIL),
    ({"hemorrhage_at_roi_edge_ml": 2.0}, QC_REVIEW),
    ({"hemorrhage_outside_brain_fraction": 0.6}, QC_REVIEW),
    ({"head_coverage_mm": MIN_HEAD_COVERAGE_MM - 1}, QC_REVIEW),
])
def test_each_flag_sets_its_rating(change, expected):
    assert qc_columns(1300.0, {**GOOD, **change}, [])["qc"] == expected


def test_partial_coverage_marks_volumes_as_lower_bounds():
    columns = qc_columns(400.0, {**GOOD, "head_coverage_mm": 36.0}, ["incomplete head coverage: ..."])
    assert columns["flag_head_coverage"] and columns["volumes_lower_bound"]
    assert columns["qc"] == QC_REVIEW


def test_input_warnings_alone_ask_for_review_and_fail_wins():
    assert qc_rating({"flag_roi_edge": False}, n_warnings=1) == QC_REVIEW
    assert qc_rating({"flag_registration": True, "flag_roi_edge": True}, n_warnings=3) == QC_FAIL
