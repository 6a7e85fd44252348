"""Tests of ichseg.bids_app.group: the group volume table and failure records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from ichseg.bids_app.bids import BIDSInputError
from ichseg.bids_app.group import (
    GroupLevelError,
    build_group_table,
    clear_failure_record,
    write_failure_record,
    write_group_table,
)
from ichseg.pipeline.labels import (
    TOTAL_HEMORRHAGE_COLUMN,
    VOLUME_COLUMNS,
    volume_column_descriptions,
)
from ichseg.pipeline.naming import GROUP_TABLE, derivative_path

CTS = (
    "sub-01/ses-1/anat/sub-01_ses-1_run-1_ct.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz",
    "sub-02/anat/sub-02_acq-axial_ct.nii",
    "sub-03/anat/sub-03_ct.nii.gz",
    "sub-10/anat/sub-10_ct.nii.gz",
)


def make_dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    for rel in CTS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)).to_filename(root / rel)
    return root


def write_volumes(out: Path, source: str, values: dict | None = None, **extra) -> Path:
    """A per-scan volume table as the participant level writes it."""
    row = {col: float(i) + 0.25 for i, col in enumerate(VOLUME_COLUMNS)}
    row.update(values or {})
    row["status"] = "ok"
    row.update(extra)
    path = derivative_path(out, source, "volumes")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


@pytest.fixture
def dataset(tmp_path):
    """Outputs: sub-01 run-1 ok, sub-01 run-2 failed, sub-02 ok, sub-03 and sub-10 missing."""
    bids = make_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    write_volumes(out, CTS[0], qc_contrast="good")
    write_failure_record(out, CTS[1], RuntimeError("brain mask is empty"))
    write_volumes(out, CTS[2], {VOLUME_COLUMNS[0]: np.nan}, qc_motion=0.5)
    return bids, out


def test_group_table_with_bids_dir(dataset):
    bids, out = dataset
    table = build_group_table(out, bids)
    assert list(table.columns) == [
        "participant_id",
        "session_id",
        "acquisition",
        "run",
        "source_file",
        *VOLUME_COLUMNS,
        "status",
        "error",
        "acq_time",
        "hours_since_first_scan",
        "qc_contrast",
        "qc_motion",
    ]
    assert list(table["participant_id"]) == ["sub-01", "sub-01", "sub-02", "sub-03", "sub-10"]
    assert list(table["status"]) == ["ok", "failed", "ok", "missing", "missing"]
    assert table["session_id"].fillna("n/a").tolist()[:3] == ["ses-1", "ses-1", "n/a"]
    assert table["run"].fillna("n/a").tolist()[:3] == ["1", "2", "n/a"]
    assert table["acquisition"].tolist()[2] == "axial"
    assert list(table["source_file"]) == list(CTS)
    assert (
        table.loc[0, TOTAL_HEMORRHAGE_COLUMN]
        == VOLUME_COLUMNS.index(TOTAL_HEMORRHAGE_COLUMN) + 0.25
    )
    assert table.loc[1, "error"] == "RuntimeError: brain mask is empty"
    assert table[list(VOLUME_COLUMNS)].iloc[1].isna().all()
    assert np.isnan(table.loc[2, VOLUME_COLUMNS[0]])  # a missing volume stays missing
    assert table.loc[0, "qc_contrast"] == "good" and table.loc[2, "qc_motion"] == 0.5
    assert all(table[col].dtype == "float64" for col in VOLUME_COLUMNS)


def test_write_group_table(dataset):
    bids, out = dataset
    path = write_group_table(out, bids)
    assert path == out / GROUP_TABLE
    text = path.read_text()
    assert "\tn/a\t" in text and "nan" not in text.lower().replace("n/a", "")
    back = pd.read_csv(path, sep="\t", na_values="n/a")
    assert back.shape == (5, 4 + 1 + len(VOLUME_COLUMNS) + 6)  # + acq_time, hours_since_first_scan
    assert list(back["status"]) == ["ok", "failed", "ok", "missing", "missing"]
    assert back["session_id"].isna().tolist() == [False, False, True, True, True]
    assert back.loc[0, VOLUME_COLUMNS[1]] == 1.25

    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert list(sidecar) == list(back.columns)
    assert all("Description" in desc for desc in sidecar.values())
    assert all(sidecar[col]["Units"] == "mL" for col in VOLUME_COLUMNS)
    assert set(sidecar["status"]["Levels"]) == {"ok", "failed", "missing"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_sorting_is_numeric(tmp_path):
    out = tmp_path / "out"
    for run in ("10", "2", "1"):
        write_volumes(out, f"sub-02_run-{run}_ct.nii.gz")
    write_volumes(out, "sub-01_ses-b_ct.nii.gz")
    write_volumes(out, "sub-01_ses-a_ct.nii.gz")
    back = pd.read_csv(write_group_table(out), sep="\t", na_values="n/a", dtype=str)
    assert back[["participant_id", "session_id", "run"]].fillna("").values.tolist() == [
        ["sub-01", "ses-a", ""],
        ["sub-01", "ses-b", ""],
        ["sub-02", "", "1"],
        ["sub-02", "", "2"],
        ["sub-02", "", "10"],
    ]


def test_group_table_from_outputs_only(dataset):
    _, out = dataset
    table = build_group_table(out)
    assert list(table["status"]) == ["ok", "failed", "ok"]
    assert table["source_file"].isna().all()  # unknown without the dataset
    assert list(build_group_table(out, participant_label="sub-02")["participant_id"]) == ["sub-02"]
    with pytest.raises(GroupLevelError, match="No results for participant\\(s\\) 03.*: 01, 02"):
        build_group_table(out, participant_label=["03"])


def test_group_table_selection_with_bids_dir(dataset):
    bids, out = dataset
    table = build_group_table(out, bids, participant_label=["02", "sub-03"])
    assert list(table["status"]) == ["ok", "missing"]
    table = build_group_table(out, bids, bids_filter={"ct": {"run": 2}})
    assert list(table["status"]) == ["failed"]
    with pytest.raises(BIDSInputError, match="Unknown participant"):
        build_group_table(out, bids, participant_label="99")


def test_newer_result_wins(dataset):
    bids, out = dataset
    volumes = write_volumes(out, CTS[1])
    failure = derivative_path(out, CTS[1], "failure")
    os.utime(failure, (1_000_000, 1_000_000))
    assert build_group_table(out, bids).loc[1, "status"] == "ok"
    os.utime(volumes, (900_000, 900_000))
    assert build_group_table(out, bids).loc[1, "status"] == "failed"
    clear_failure_record(out, CTS[1])
    assert not failure.exists()
    clear_failure_record(out, CTS[1])  # no error when there is none
    assert build_group_table(out, bids).loc[1, "status"] == "ok"


def test_error_text_cannot_break_the_table(dataset):
    bids, out = dataset
    write_failure_record(out, CTS[1], 'line one\n\t"quoted" line two')
    path = write_group_table(out, bids)
    back = pd.read_csv(path, sep="\t", na_values="n/a")
    assert back.shape[0] == 5
    assert back.loc[1, "error"] == "line one 'quoted' line two"


def test_unreadable_results_are_failed_rows(dataset):
    bids, out = dataset
    derivative_path(out, CTS[0], "volumes").write_text("a\tb\n1\t2\n3\t4\n")
    derivative_path(out, CTS[1], "failure").write_text("{not json")
    table = build_group_table(out, bids)
    assert list(table["status"][:2]) == ["failed", "failed"]
    assert (
        "unreadable volume table sub-01_ses-1_run-1_volumes.tsv (it has 2 rows"
        in table.loc[0, "error"]
    )
    assert "unreadable failure record" in table.loc[1, "error"]


def test_failure_record_content(tmp_path):
    path = write_failure_record(tmp_path, CTS[1], ValueError("bad"), crashfile="/work/crash.pklz")
    assert path == tmp_path / "sub-01/log/sub-01_ses-1_run-2_desc-failed_log.json"
    record = json.loads(path.read_text())
    assert record["error"] == "ValueError: bad"
    assert record["scan"] == "sub-01_ses-1_run-2"
    assert record["crashfile"] == "/work/crash.pklz" and "time" in record


def test_extra_column_descriptions_from_per_scan_sidecars(dataset):
    bids, out = dataset
    sidecar = derivative_path(out, CTS[0], "volumes_json")
    sidecar.write_text(json.dumps({"qc_contrast": {"Description": "Contrast check."}}))
    path = write_group_table(out, bids)
    described = json.loads(path.with_suffix(".json").read_text())
    assert described["qc_contrast"] == {"Description": "Contrast check."}
    assert "per-scan volume tables" in described["qc_motion"]["Description"]


def test_extra_column_named_like_an_entity(tmp_path):
    out = tmp_path / "out"
    write_volumes(out, "sub-01_run-1_ct.nii.gz", mode="auto")
    table = build_group_table(out)
    assert table.loc[0, "mode"] == "auto" and table.loc[0, "run"] == "1"
    # An entity column cannot be overwritten by a per-scan column of the same name.
    write_volumes(out, "sub-01_run-1_ct.nii.gz", run="7")
    assert build_group_table(out).loc[0, "run"] == "1"


def test_no_results(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(GroupLevelError, match="No per-scan results .*Run the participant level"):
        build_group_table(tmp_path / "out")
    with pytest.raises(GroupLevelError, match="does not exist"):
        write_group_table(tmp_path / "nothere")


def test_volume_column_descriptions():
    described = volume_column_descriptions()
    assert list(described) == list(VOLUME_COLUMNS)
    assert all(desc["Units"] == "mL" for desc in described.values())
    assert "IPH" in described[TOTAL_HEMORRHAGE_COLUMN]["Description"]


def test_qc_rating_is_fail_for_scans_without_volumes(dataset):
    bids, out = dataset
    write_volumes(out, CTS[0], qc="review")
    write_volumes(out, CTS[2], qc="pass")
    table = build_group_table(out, bids)
    assert list(table["qc"]) == ["review", "fail", "pass", "fail", "fail"]


def test_last_outcome_is_the_newer_of_volume_table_and_failure_record(tmp_path):
    import os

    from ichseg.bids_app.group import last_outcome
    from ichseg.pipeline.volumes import STATUS_FAILED, STATUS_OK

    volumes, failure = tmp_path / "v.tsv", tmp_path / "f.json"
    assert last_outcome(volumes, failure) is None  # neither exists
    volumes.write_text("x")
    assert last_outcome(volumes, failure) == (STATUS_OK, volumes)
    failure.write_text("{}")
    os.utime(volumes, (1000, 1000))
    os.utime(failure, (2000, 2000))
    assert last_outcome(volumes, failure) == (STATUS_FAILED, failure)  # a failed rerun
    os.utime(volumes, (3000, 3000))
    assert last_outcome(volumes, failure) == (STATUS_OK, volumes)  # a successful rerun
    assert last_outcome(None, None) is None
