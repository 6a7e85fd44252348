"""Tests of ichseg.bids_app.bids: finding head CTs in BIDS datasets, filters and errors."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from ichseg.bids_app.bids import (
    BIDSInputError,
    CTImage,
    _layout,
    check_output_dir,
    collect_ct_images,
    load_bids_filter,
)

CTS = (
    "sub-01/ses-1/anat/sub-01_ses-1_run-1_ct.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz",
    "sub-01/ses-2/anat/sub-01_ses-2_ct.nii.gz",
    "sub-02/anat/sub-02_acq-axial_ct.nii",
    "sub-02/anat/sub-02_acq-helical_run-01_ct.nii.gz",
    "sub-03/anat/sub-03_ct.nii.gz",
)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)).to_filename(path)


def make_dataset(root: Path, files=CTS) -> Path:
    """A tiny BIDS dataset of 4x4x4 images (plus a T1w and sidecars to ignore or merge)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0"})
    )
    for rel in files:
        _image(root / rel)
    _image(root / "sub-04/anat/sub-04_T1w.nii.gz")  # a participant without CT
    (root / "ct.json").write_text(json.dumps({"Modality": "CT", "KVP": 120}))
    if "sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz" in files:
        (root / "sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.json").write_text(json.dumps({"KVP": 100}))
    return root


@pytest.fixture
def bids_dir(tmp_path):
    return make_dataset(tmp_path / "bids")


def _ids(images):
    return [img.scan_id for img in images]


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_collect_all(bids_dir):
    before = _snapshot(bids_dir)
    images = collect_ct_images(bids_dir)
    assert _ids(images) == [
        "sub-01_ses-1_run-1",
        "sub-01_ses-1_run-2",
        "sub-01_ses-2",
        "sub-02_acq-axial",
        "sub-02_acq-helical_run-01",
        "sub-03",
    ]
    assert all(isinstance(img, CTImage) for img in images)
    assert [img.path for img in images] == [bids_dir / rel for rel in sorted(CTS)]
    assert images[1].entities == {
        "subject": "01",
        "session": "1",
        "run": "2",
        "suffix": "ct",
        "extension": ".nii.gz",
    }
    assert images[3].entities == {
        "subject": "02",
        "acquisition": "axial",
        "suffix": "ct",
        "extension": ".nii",
    }
    assert images[4].entities["run"] == "01"  # padding kept, as a string
    assert (images[1].subject, images[1].session, images[5].session) == ("01", "1", None)
    # BIDS inheritance: the top-level ct.json applies everywhere, the file's own overrides.
    assert images[0].sidecar == {"Modality": "CT", "KVP": 120}
    assert images[1].sidecar == {"Modality": "CT", "KVP": 100}
    assert len({img for img in images}) == len(images)  # hashable
    # Nothing was written into the dataset (no pybids database, no cache).
    assert _snapshot(bids_dir) == before


def test_pybids_indexes_ct_suffix(bids_dir):
    """CT is not in the BIDS schema: pybids must still index and query the 'ct' suffix."""
    with _layout(bids_dir) as layout:
        assert "ct" in layout.get_suffixes()
        files = layout.get(suffix="ct", datatype="anat", extension=[".nii", ".nii.gz"])
        assert len(files) == len(CTS)


def test_sidecar_empty_without_json(tmp_path):
    root = make_dataset(tmp_path / "bids", files=["sub-09/anat/sub-09_ct.nii.gz"])
    (root / "ct.json").unlink()
    (img,) = collect_ct_images(root)
    assert img.sidecar == {}


@pytest.mark.parametrize("label", ["01", "sub-01", ["sub-01"], ("01", "sub-01")])
def test_participant_label(bids_dir, label):
    assert _ids(collect_ct_images(bids_dir, participant_label=label)) == [
        "sub-01_ses-1_run-1",
        "sub-01_ses-1_run-2",
        "sub-01_ses-2",
    ]


def test_participant_and_session_label(bids_dir):
    assert _ids(collect_ct_images(bids_dir, ["02", "sub-03"])) == [
        "sub-02_acq-axial",
        "sub-02_acq-helical_run-01",
        "sub-03",
    ]
    assert _ids(collect_ct_images(bids_dir, "01", "ses-2")) == ["sub-01_ses-2"]
    assert _ids(collect_ct_images(bids_dir, session_label="1")) == [
        "sub-01_ses-1_run-1",
        "sub-01_ses-1_run-2",
    ]


@pytest.mark.parametrize(
    ("ct_filter", "expected"),
    [
        ({"acquisition": "axial"}, ["sub-02_acq-axial"]),
        ({"run": 1}, ["sub-01_ses-1_run-1", "sub-02_acq-helical_run-01"]),
        ({"run": "2"}, ["sub-01_ses-1_run-2"]),
        ({"run": None, "session": None}, ["sub-02_acq-axial", "sub-03"]),
        ({"acquisition": "*"}, ["sub-02_acq-axial", "sub-02_acq-helical_run-01"]),
        ({"extension": ".nii"}, ["sub-02_acq-axial"]),
        ({"KVP": 100}, ["sub-01_ses-1_run-2"]),  # metadata queries work too
    ],
)
def test_bids_filter(bids_dir, ct_filter, expected):
    assert _ids(collect_ct_images(bids_dir, bids_filter={"ct": ct_filter})) == expected


def test_labels_take_precedence_over_filter(bids_dir):
    images = collect_ct_images(bids_dir, "03", bids_filter={"ct": {"subject": "01"}})
    assert _ids(images) == ["sub-03"]


def test_load_bids_filter(tmp_path, bids_dir):
    path = tmp_path / "filter.json"
    path.write_text('{"ct": {"acquisition": "helical", "run": null}}')
    loaded = load_bids_filter(path)
    assert loaded == {"ct": {"acquisition": "helical", "run": None}}
    # acq-helical has a run, so "run": null leaves nothing: the error names the filter.
    with pytest.raises(BIDSInputError, match="No head CT images found.*bids_filter"):
        collect_ct_images(bids_dir, bids_filter=loaded)
    path.write_text('{"ct": {"extension": "nii"}}')
    assert load_bids_filter(path) == {"ct": {"extension": [".nii"]}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"ct": {"acquisition": "axial",}}', "is not valid JSON: .* at line 1, column"),
        ('["ct"]', "must be a JSON object"),
        ('{"t1w": {"acquisition": "mprage"}}', "unknown key\\(s\\) 't1w'; ichseg only reads 'ct'"),
        ('{"ct": "axial"}', "'ct' must be a JSON object"),
        ('{"ct": {"suffix": "T1w"}}', "must not set 'suffix'"),
        ('{"ct": {"datatype": "func"}}', "must not set 'datatype'"),
        ('{"ct": {"extension": ".json"}}', "'extension' must be among .nii, .nii.gz"),
    ],
)
def test_load_bids_filter_errors(tmp_path, text, message):
    path = tmp_path / "filter.json"
    path.write_text(text)
    with pytest.raises(BIDSInputError, match=message) as err:
        load_bids_filter(path)
    assert str(path) in str(err.value)
    assert '{"ct": {' in str(err.value) or "extension" in str(err.value)  # shows a valid example


def test_load_bids_filter_missing(tmp_path):
    with pytest.raises(BIDSInputError, match="filter file .*nope.json does not exist"):
        load_bids_filter(tmp_path / "nope.json")


def test_filter_unknown_entity(bids_dir):
    with pytest.raises(BIDSInputError, match="Invalid bids_filter .*'colour' is not a recognized"):
        collect_ct_images(bids_dir, bids_filter={"ct": {"colour": "red"}})
    with pytest.raises(BIDSInputError, match="unknown key"):
        collect_ct_images(bids_dir, bids_filter={"bold": {}})


def test_error_missing_dir(tmp_path):
    with pytest.raises(BIDSInputError, match=r"folder .*nowhere does not exist.*mounted"):
        collect_ct_images(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(BIDSInputError, match="is a file"):
        collect_ct_images(tmp_path / "file")


def test_error_not_bids(tmp_path):
    root = make_dataset(tmp_path / "bids")
    (root / "dataset_description.json").unlink()
    with pytest.raises(BIDSInputError) as err:
        collect_ct_images(root)
    msg = str(err.value)
    assert "is not a BIDS dataset: dataset_description.json is missing" in msg
    assert str(root / "dataset_description.json") in msg and '"BIDSVersion"' in msg
    (root / "dataset_description.json").write_text("{Name: x}")
    with pytest.raises(BIDSInputError, match="dataset_description.json is not valid JSON"):
        collect_ct_images(root)


def test_error_unknown_participant(bids_dir):
    with pytest.raises(BIDSInputError) as err:
        collect_ct_images(bids_dir, ["01", "sub-99"])
    assert "Unknown participant label(s) 99" in str(err.value)
    assert "Available participants: 01, 02, 03, 04." in str(err.value)


def test_error_unknown_session(bids_dir):
    with pytest.raises(
        BIDSInputError, match="Unknown session label\\(s\\) 3.*Available sessions: 1, 2"
    ):
        collect_ct_images(bids_dir, "01", "ses-3")
    with pytest.raises(BIDSInputError, match="Available sessions: none"):
        collect_ct_images(bids_dir, "02", "1")


def test_error_no_ct(bids_dir, tmp_path):
    with pytest.raises(BIDSInputError) as err:
        collect_ct_images(bids_dir, "04")
    msg = str(err.value)
    assert "No head CT images found in" in msg and "participant(s) 04" in msg
    assert "sub-<label>/[ses-<label>/]anat/" in msg and "_ct.nii[.gz]" in msg

    # CTs in the wrong place are pointed out.
    root = make_dataset(tmp_path / "other", files=["sub-05/ct/sub-05_ct.nii.gz"])
    with pytest.raises(
        BIDSInputError, match="have the 'ct' suffix but .*sub-05/ct/sub-05_ct.nii.gz"
    ):
        collect_ct_images(root)


def test_error_invalid_names(tmp_path):
    root = make_dataset(tmp_path / "a", files=["sub-01/anat/sub-01_foo-bar_ct.nii.gz"])
    with pytest.raises(BIDSInputError, match="Cannot use .*sub-01_foo-bar_ct.nii.gz.*'foo-bar'"):
        collect_ct_images(root)
    root = make_dataset(tmp_path / "b", files=["sub-01/anat/sub-02_ct.nii.gz"])
    with pytest.raises(BIDSInputError, match="wrong folder .*should be in sub-02/anat/"):
        collect_ct_images(root)
    root = make_dataset(tmp_path / "c", files=["sub-01/ses-1/anat/sub-01_ct.nii.gz"])
    with pytest.raises(BIDSInputError, match="should be in sub-01/anat/"):
        collect_ct_images(root)


def test_error_duplicate_scans(tmp_path):
    root = make_dataset(
        tmp_path / "bids", files=["sub-01/anat/sub-01_ct.nii", "sub-01/anat/sub-01_ct.nii.gz"]
    )
    with pytest.raises(BIDSInputError, match="are the same scan .*extension"):
        collect_ct_images(root)
    # The error's advice works.
    images = collect_ct_images(root, bids_filter={"ct": {"extension": ".nii.gz"}})
    assert [img.path.name for img in images] == ["sub-01_ct.nii.gz"]


def test_broken_link_fails_that_scan_only(tmp_path):
    root = make_dataset(tmp_path / "bids", files=["sub-02/anat/sub-02_ct.nii.gz"])
    link = root / "sub-01/anat/sub-01_ct.nii.gz"
    link.parent.mkdir(parents=True)
    link.symlink_to(root / ".git/annex/objects/missing")
    problems = {img.scan_id: img.problem for img in collect_ct_images(root)}
    assert problems["sub-02"] is None
    assert re.search("broken link.*datalad get sub-01/anat", problems["sub-01"])


def test_invalid_sidecar_fails_the_scans_it_describes_only(bids_dir):
    bad = bids_dir / "sub-03/anat/sub-03_ct.json"
    bad.write_text("{oops")
    images = {img.scan_id: img for img in collect_ct_images(bids_dir)}
    assert str(bad) in images["sub-03"].problem
    assert "not valid JSON" in images["sub-03"].problem and "json.tool" in images["sub-03"].problem
    assert images["sub-03"].sidecar == {}
    others = [img for sid, img in images.items() if sid != "sub-03"]
    assert others and all(img.problem is None for img in others)
    assert all(img.sidecar.get("Modality") == "CT" for img in others)  # the top-level ct.json still applies


def test_invalid_top_level_sidecar_fails_every_scan(bids_dir):
    (bids_dir / "ct.json").write_text("[1, 2")
    images = collect_ct_images(bids_dir)
    assert images and all("ct.json is not valid JSON" in img.problem for img in images)


def test_sidecar_inheritance_follows_entities(bids_dir):
    # a session-level sidecar of run 2 describes that run only
    (bids_dir / "sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.json").write_text("nope")
    images = {img.scan_id: img for img in collect_ct_images(bids_dir)}
    assert images["sub-01_ses-1_run-2"].problem
    assert [sid for sid, img in images.items() if img.problem] == ["sub-01_ses-1_run-2"]


def test_folder_named_like_a_ct_is_listed_as_unreadable(bids_dir):
    folder = bids_dir / "sub-05/anat/sub-05_ct.nii.gz"
    folder.mkdir(parents=True)
    images = {img.scan_id: img for img in collect_ct_images(bids_dir)}
    assert "is a folder, not a NIfTI file" in images["sub-05"].problem
    assert not {sid for sid, img in images.items() if img.problem} - {"sub-05"}
    assert "sub-05" not in _ids(collect_ct_images(bids_dir, participant_label="03"))


def test_ignores_derivatives_sourcedata_and_hidden(bids_dir):
    for rel in (
        "derivatives/ichseg/sub-01/anat/sub-01_ct.nii.gz",
        "sourcedata/sub-01/anat/sub-01_ct.nii.gz",
        "sub-03/anat/.sub-03_run-5.tmp-1-ab_ct.nii.gz",
    ):
        _image(bids_dir / rel)
    assert len(collect_ct_images(bids_dir)) == len(CTS)


def test_entity_like_parent_folders(tmp_path, monkeypatch):
    """pybids <= 0.22 reads entities from folders above the dataset (pybids#1270)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    root = make_dataset(tmp_path / "sub-pilot" / "run-9" / "anat" / "bids")
    images = collect_ct_images(root, "02", bids_filter={"ct": {"run": 1}})
    assert _ids(images) == ["sub-02_acq-helical_run-01"]
    assert images[0].path == root / "sub-02/anat/sub-02_acq-helical_run-01_ct.nii.gz"
    assert _ids(collect_ct_images(root, session_label="2")) == ["sub-01_ses-2"]
    assert list(tmp.iterdir()) == []  # the temporary link is removed


def test_entity_like_tmpdir_is_reported(tmp_path, monkeypatch):
    tmp = tmp_path / "sub-x"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    root = make_dataset(tmp_path / "sub-pilot" / "bids")
    with pytest.raises(BIDSInputError, match="Set TMPDIR"):
        collect_ct_images(root)
    assert list(tmp.iterdir()) == []


def test_relative_bids_dir(bids_dir, monkeypatch):
    monkeypatch.chdir(bids_dir.parent)
    images = collect_ct_images("bids", "03")
    assert images[0].path == bids_dir / "sub-03/anat/sub-03_ct.nii.gz"
    assert images[0].path.is_absolute()


def test_check_output_dir(tmp_path, bids_dir, monkeypatch):
    assert check_output_dir(bids_dir, tmp_path / "out") == tmp_path / "out"
    ok = bids_dir / "derivatives" / "ichseg"
    assert check_output_dir(bids_dir, ok) == ok
    for bad in (bids_dir, bids_dir / "out", bids_dir / "sub-01" / "x", bids_dir / "derivatives"):
        with pytest.raises(BIDSInputError, match="never writes into its input") as err:
            check_output_dir(bids_dir, bad)
        assert str(bids_dir / "derivatives" / "ichseg") in str(err.value)
    # A symbolic link cannot hide that the output is the dataset.
    (tmp_path / "link").symlink_to(bids_dir)
    with pytest.raises(BIDSInputError, match="is the input BIDS dataset"):
        check_output_dir(bids_dir, tmp_path / "link")
    (tmp_path / "afile").write_text("")
    with pytest.raises(BIDSInputError, match="exists and is not a folder"):
        check_output_dir(bids_dir, tmp_path / "afile")
    # Relative paths are resolved against the working directory.
    monkeypatch.chdir(tmp_path)
    assert check_output_dir("bids", "out") == tmp_path / "out"
    with pytest.raises(BIDSInputError, match="is inside the input BIDS dataset"):
        check_output_dir("bids", "bids/x")
