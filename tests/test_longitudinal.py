"""Hematoma expansion across sessions: times, order, definitions and the longitudinal table."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from ichseg.bids_app.group import write_failure_record, write_group_table
from ichseg.bids_app.longitudinal import (
    EXPANSION_DEFINITIONS,
    acquisition_time,
    scans_tsv_times,
)
from ichseg.pipeline.labels import VOLUME_COLUMNS
from ichseg.pipeline.naming import LONGITUDINAL_TABLE, derivative_path
from ichseg.pipeline.reports import write_group_report

RULES = {d.column: d.rule for d in EXPANSION_DEFINITIONS}


@pytest.mark.parametrize(("baseline", "followup", "expected"), [
    # growth 7 mL = 35 %: over 6 mL, under 12.5 mL and 1.4x, at most 35 %
    (20.0, 27.0, {"expansion_6ml_33pct": True, "expansion_12p5ml_1p4x": False, "growth_le_35pct": True}),
    # 3.4 mL = 34 %: over 33 % only
    (10.0, 13.4, {"expansion_6ml_33pct": True, "expansion_12p5ml_1p4x": False, "growth_le_35pct": True}),
    # 12.5 mL = 31 %: Kazui by volume
    (40.0, 52.5, {"expansion_6ml_33pct": True, "expansion_12p5ml_1p4x": True, "growth_le_35pct": True}),
    # 4 mL = 40 %: 1.4x, and more than 35 %
    (10.0, 14.0, {"expansion_6ml_33pct": True, "expansion_12p5ml_1p4x": True, "growth_le_35pct": False}),
    # shrinking
    (30.0, 25.0, {"expansion_6ml_33pct": False, "expansion_12p5ml_1p4x": False, "growth_le_35pct": True}),
    # 2 mL = 20 %: none
    (10.0, 12.0, {"expansion_6ml_33pct": False, "expansion_12p5ml_1p4x": False, "growth_le_35pct": True}),
])
def test_expansion_definitions(baseline, followup, expected):
    assert {name: RULES[name](baseline, followup) for name in expected} == expected


def test_every_definition_has_a_citation():
    assert len({d.column for d in EXPANSION_DEFINITIONS}) == len(EXPANSION_DEFINITIONS)
    assert all(d.citation and d.description for d in EXPANSION_DEFINITIONS)


def test_acquisition_time_sources(tmp_path):
    assert acquisition_time({"AcquisitionDateTime": "2024-03-01T10:15:00.000000"}) == datetime(2024, 3, 1, 10, 15)
    assert acquisition_time({"AcquisitionDate": "2024-03-01", "AcquisitionTime": "22:00:00"}) == datetime(2024, 3, 1, 22)
    assert acquisition_time({}, "2024-03-02T04:00:00") == datetime(2024, 3, 2, 4)
    assert acquisition_time({"AcquisitionDateTime": "yesterday"}) is None
    (tmp_path / "sub-01" / "ses-2").mkdir(parents=True)
    (tmp_path / "sub-01" / "ses-2" / "sub-01_ses-2_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_ses-2_ct.nii.gz\t2024-03-02T04:00:00\n")
    assert scans_tsv_times(tmp_path, "sub-01/ses-2/anat/sub-01_ses-2_ct.nii.gz") == "2024-03-02T04:00:00"
    assert scans_tsv_times(tmp_path, "sub-01/ses-3/anat/sub-01_ses-3_ct.nii.gz") is None


def _dataset(root: Path, scans: dict[str, str | None]) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    for rel, when in scans.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)).to_filename(path)
        if when:
            path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps({"AcquisitionDateTime": when}))
    return root


def _volumes(out: Path, source: str, iph: float, ivh: float = 0.0) -> None:
    row = {c: 0.0 for c in VOLUME_COLUMNS}
    row.update(iph_ml=iph, ivh_ml=ivh, hemorrhage_ml=iph + ivh, status="ok")
    path = derivative_path(out, source, "volumes")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False)


def test_longitudinal_table(tmp_path):
    scans = {
        # sub-01: the session labels are not in time order (ses-b was scanned first)
        "sub-01/ses-a/anat/sub-01_ses-a_ct.nii.gz": "2024-03-01T16:00:00",
        "sub-01/ses-b/anat/sub-01_ses-b_ct.nii.gz": "2024-03-01T10:00:00",
        "sub-01/ses-c/anat/sub-01_ses-c_ct.nii.gz": "2024-03-04T10:00:00",
        # sub-02: no times; its follow-up failed
        "sub-02/ses-1/anat/sub-02_ses-1_ct.nii.gz": None,
        "sub-02/ses-2/anat/sub-02_ses-2_ct.nii.gz": None,
    }
    bids = _dataset(tmp_path / "bids", scans)
    out = tmp_path / "out"
    names = list(scans)
    _volumes(out, names[1], iph=20.0, ivh=2.0)  # baseline
    _volumes(out, names[0], iph=27.0, ivh=1.0)  # 6 h later: +7 mL
    _volumes(out, names[2], iph=15.0)  # day 3: shrinking
    _volumes(out, names[3], iph=10.0)
    write_failure_record(out, names[4], RuntimeError("brain mask is empty"))
    write_group_table(out, bids)

    group = pd.read_csv(out / "group_volumes.tsv", sep="\t", na_values="n/a")
    hours = dict(zip(group["session_id"] + group["participant_id"], group["hours_since_first_scan"]))
    assert hours["ses-bsub-01"] == 0 and hours["ses-asub-01"] == 6 and hours["ses-csub-01"] == 72
    assert np.isnan(hours["ses-1sub-02"])

    table = pd.read_csv(out / LONGITUDINAL_TABLE, sep="\t", na_values="n/a", keep_default_na=False)
    first = table[table["participant_id"] == "sub-01"].reset_index(drop=True)
    assert list(first["baseline_session_id"]) == ["ses-b", "ses-b"]
    assert list(first["followup_session_id"]) == ["ses-a", "ses-c"]
    assert list(first["hours_between"]) == [6.0, 72.0]
    assert list(first["iph_change_ml"]) == [7.0, -5.0]
    assert first.loc[0, "iph_change_pct"] == pytest.approx(35.0)
    assert first.loc[0, "ivh_change_ml"] == -1.0
    assert list(first["expansion_6ml_33pct"]) == [True, False]
    assert list(first["growth_le_35pct"]) == [True, True]
    assert (first["order_by"] == "acq_time").all()

    second = table[table["participant_id"] == "sub-02"].iloc[0]
    assert second["order_by"] == "session label"
    assert "failed" in second["reason"] and "ses-2" in second["reason"]
    for column in ("followup_iph_ml", "iph_change_ml", "expansion_6ml_33pct", "hours_between"):
        assert second[column] == "n/a" or pd.isna(second[column]), column

    html = (out / "group_report.html").read_text() if write_group_report(out) else ""
    assert "Volumes across sessions" in html and 'id="figure-courses"' in html

    sidecar = json.loads((out / LONGITUDINAL_TABLE).with_suffix(".json").read_text())
    assert set(sidecar) == set(table.columns)
    assert "Brouwers" in sidecar["expansion_6ml_33pct"]["Citation"]
