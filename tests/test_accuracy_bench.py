"""bench/accuracy.py: the truth-set figures, volumes against the painted volume included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "accuracy_bench", Path(__file__).resolve().parents[1] / "bench" / "accuracy.py")
accuracy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(accuracy)


def _row(scan, ml, ref_ml, dice=0.9):
    return {"scan": scan, "status": "ok", "hemorrhage_ml": ml, "hemorrhage_ref_ml": ref_ml, "hemorrhage_dice": dice}


ROWS = [_row("sub-t001", 28.0, 32.0), _row("sub-t002", 4.0, 5.0), _row("sub-t003", 10.0, 10.0)]
PHANTOMS = {"sub-t001": {"host": "a", "true_volume_ml": "30.0"},
            "sub-t002": {"host": "b", "true_volume_ml": "4.0"},
            "sub-t003": {"host": "a"}}  # no painted volume: left out of the painted figures


def test_painted_volume_separates_the_model_error_from_the_mask_error():
    painted = accuracy.painted_agreement(ROWS, PHANTOMS)
    assert painted["n_scans"] == 2
    model, mask = painted["ichseg"], painted["reference_mask"]
    # ichseg 28 and 4 mL against 30 and 4 mL painted; the masks 32 and 5 mL
    assert model["mean_difference_ml"] == pytest.approx(-1.0)
    assert mask["mean_difference_ml"] == pytest.approx(1.5)
    assert model["n_over_15ml"] == mask["n_over_15ml"] == 1
    assert model["worst_relative_error_over_15ml"] == pytest.approx(2 / 30)
    assert mask["mean_relative_difference_large"] == pytest.approx(2 / 30)
    assert model["rmse_ml"] == pytest.approx((4 / 2) ** 0.5)


def test_summary_keeps_every_scan_and_renders_both_tables():
    summary = accuracy.summarise(ROWS, PHANTOMS)
    # against the masks: 28 vs 32 mL is the only lesion over 15 mL
    assert summary["worst_relative_error_over_15ml"] == pytest.approx(4 / 32)
    assert [s["scan"] for s in summary["scans"]] == ["sub-t001", "sub-t002", "sub-t003"]
    assert summary["scans"][0]["painted_ml"] == 30.0
    text = accuracy.render({"default": summary})
    assert "| default | ichseg | 2 |" in text
    assert "| default | reference mask | 2 |" in text
    assert "6.7 %" in text  # 2 of 30 mL


def test_a_truth_set_without_painted_volumes_still_scores():
    summary = accuracy.summarise(ROWS, {"sub-t001": {"host": "a"}})
    assert summary["painted"] == {"n_scans": 0}
    assert "painted volume" not in accuracy.render({"default": summary})
