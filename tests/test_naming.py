"""Tests of ichseg.pipeline.naming: derivative names, entity parsing, dseg table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from ichseg.pipeline.labels import FOREGROUND_LABELS, dseg_tsv_text, write_dseg_tsv
from ichseg.pipeline.naming import (
    DERIVATIVES,
    ENTITIES,
    derivative_path,
    derivative_relpath,
    entities_from_path,
    entities_sort_key,
    find_derivatives,
    scan_id,
)

SOURCE = "/bids/sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz"

EXPECTED = {
    "brain_mask": "sub-01/ses-1/anat/sub-01_ses-1_run-2_desc-brain_mask.nii.gz",
    "dseg": "sub-01/ses-1/anat/sub-01_ses-1_run-2_dseg.nii.gz",
    "dseg_tsv": "sub-01/ses-1/anat/sub-01_ses-1_run-2_dseg.tsv",
    "hemorrhage_probseg": "sub-01/ses-1/anat/sub-01_ses-1_run-2_label-hemorrhage_probseg.nii.gz",
    "template_ct": "sub-01/ses-1/anat/sub-01_ses-1_run-2_space-scct_desc-preproc_ct.nii.gz",
    "template_dseg": "sub-01/ses-1/anat/sub-01_ses-1_run-2_space-scct_dseg.nii.gz",
    "xfm": "sub-01/ses-1/anat/sub-01_ses-1_run-2_from-ct_to-scct_mode-image_xfm.mat",
    "volumes": "sub-01/ses-1/anat/sub-01_ses-1_run-2_volumes.tsv",
    "volumes_json": "sub-01/ses-1/anat/sub-01_ses-1_run-2_volumes.json",
    "regions": "sub-01/ses-1/anat/sub-01_ses-1_run-2_regions.tsv",
    "report": "sub-01_ses-1_run-2.html",
    "figure": "sub-01/figures/sub-01_ses-1_run-2_desc-overlay_ct.svg",
    "failure": "sub-01/log/sub-01_ses-1_run-2_desc-failed_log.json",
}


def _extra(kind):
    return {"desc": "overlay"} if kind == "figure" else {}


def test_every_kind_is_tested():
    assert set(EXPECTED) == set(DERIVATIVES)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_derivative_names(kind, tmp_path):
    rel = derivative_relpath(SOURCE, kind, **_extra(kind))
    assert rel == Path(EXPECTED[kind])
    assert derivative_path(tmp_path, SOURCE, kind, **_extra(kind)) == tmp_path / EXPECTED[kind]
    # An entity dict (as in CTImage.entities) gives the same name as the path.
    ents = entities_from_path(SOURCE)
    assert derivative_relpath(ents, kind, **_extra(kind)) == rel


def test_names_without_session():
    src = "sub-07_ct.nii"
    assert derivative_relpath(src, "dseg") == Path("sub-07/anat/sub-07_dseg.nii.gz")
    assert derivative_relpath(src, "report") == Path("sub-07.html")
    assert derivative_relpath(src, "failure") == Path("sub-07/log/sub-07_desc-failed_log.json")


def test_all_source_entities_kept_in_bids_order():
    src = "sub-01_ses-pre_acq-axial_ce-none_rec-bone_run-02_ct.nii.gz"
    assert derivative_relpath(src, "hemorrhage_probseg").name == (
        "sub-01_ses-pre_acq-axial_ce-none_rec-bone_run-02_label-hemorrhage_probseg.nii.gz"
    )
    # Out-of-order entities in a dict come out in BIDS order.
    ents = {"run": "3", "acquisition": "ax", "session": "2", "subject": "x1", "suffix": "ct"}
    assert derivative_relpath(ents, "xfm").name == (
        "sub-x1_ses-2_acq-ax_run-3_from-ct_to-scct_mode-image_xfm.mat"
    )


def test_overrides_and_errors():
    assert derivative_relpath(SOURCE, "brain_mask", desc=None).name == (
        "sub-01_ses-1_run-2_mask.nii.gz"
    )
    assert derivative_relpath(SOURCE, "dseg", desc="refined").name == (
        "sub-01_ses-1_run-2_desc-refined_dseg.nii.gz"
    )
    with pytest.raises(ValueError, match="Unknown derivative kind 'seg'.*dseg"):
        derivative_relpath(SOURCE, "seg")
    with pytest.raises(ValueError, match="'figure' needs the entities: desc"):
        derivative_relpath(SOURCE, "figure")
    with pytest.raises(ValueError, match="Unknown BIDS entity 'colour'"):
        derivative_relpath(SOURCE, "dseg", colour="red")
    with pytest.raises(ValueError, match="letters and digits"):
        derivative_relpath(SOURCE, "dseg", desc="a_b")
    with pytest.raises(ValueError, match="no 'subject'"):
        derivative_relpath({"session": "1"}, "dseg")


def test_derivatives_table_is_read_only():
    with pytest.raises(TypeError):
        DERIVATIVES["dseg"] = DERIVATIVES["volumes"]
    with pytest.raises(TypeError):
        DERIVATIVES["brain_mask"].entities["desc"] = "head"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz",
            {"subject": "01", "session": "1", "run": "2", "suffix": "ct", "extension": ".nii.gz"},
        ),
        # Zero padding is kept, so derivative names reproduce the source name exactly.
        (
            "sub-A1_run-02_ct.nii",
            {"subject": "A1", "run": "02", "suffix": "ct", "extension": ".nii"},
        ),
        # Folders are never read, even when they look like entities (pybids#1270).
        (
            "/data/sub-pilot/run-9/ds/sub-01/anat/sub-01_acq-axial_ct.nii.gz",
            {"subject": "01", "acquisition": "axial", "suffix": "ct", "extension": ".nii.gz"},
        ),
        (
            Path("sub-01_ses-1_run-2_desc-failed_log.json"),
            {
                "subject": "01",
                "session": "1",
                "run": "2",
                "desc": "failed",
                "suffix": "log",
                "extension": ".json",
            },
        ),
    ],
)
def test_entities_from_path(path, expected):
    ents = entities_from_path(path)
    assert ents == expected
    assert list(ents)[-2:] == ["suffix", "extension"]
    assert all(isinstance(v, str) for v in ents.values())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ses-1_ct.nii.gz", "must start with sub-<label>"),
        ("sub-01.nii.gz", "must end with _<suffix>"),
        ("sub-01_run-1.nii.gz", "must end with _<suffix>"),
        ("sub-01_foo-bar_ct.nii.gz", "'foo-bar' is not a BIDS entity"),
        ("sub-01_axial_ct.nii.gz", "'axial' is not a BIDS entity"),
        ("sub-01_run-a_ct.nii.gz", "run-'a' must be digits only"),
        ("sub-01_acq-ax+1_ct.nii.gz", "must be letters and digits only"),
        ("sub-01_sub-02_ct.nii.gz", "entity 'sub' appears twice"),
    ],
)
def test_entities_from_path_errors(name, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        entities_from_path(f"/somewhere/{name}")
    assert name in str(err.value)  # the message names the file


def test_entities_agree_with_pybids():
    from bids.layout import parse_file_entities

    for name in (
        "sub-01_ses-1_acq-axial_ce-iodine_rec-bone_run-02_ct.nii.gz",
        "sub-01_ct.nii",
        "sub-02_ses-b_run-1_ct.json",
    ):
        # pybids needs the leading "/" to see the subject of a bare file name (pybids#1077).
        theirs = {k: str(v) for k, v in parse_file_entities(f"/{name}").items()}
        assert entities_from_path(name) == theirs


def test_entity_table_follows_bids_schema():
    schema = pytest.importorskip("bidsschematools.schema").load_schema()
    ours = [e.key for e in ENTITIES if e.name not in ("from", "to", "mode")]
    theirs = [schema.objects.entities[name]["name"] for name in schema.rules.entities]
    # Our table may lag behind a newer schema, but what it has must be in schema order.
    assert [key for key in theirs if key in ours] == ours
    formats = {
        schema.objects.entities[n]["name"]: schema.objects.entities[n]["format"]
        for n in schema.rules.entities
    }
    assert all(formats[e.key] == e.format for e in ENTITIES if e.key in formats)


def test_entity_names_are_pybids_names():
    from bids.layout.models import Config

    pybids = {}
    for config in ("bids", "derivatives"):
        for entity in Config.load(config).entities.values():
            match = re.search(r"([a-z]+)-\(", entity.pattern)
            if match:
                pybids[match.group(1)] = entity.name
    checked = [e for e in ENTITIES if e.key in pybids]
    assert len(checked) > 20
    assert all(pybids[e.key] == e.name for e in checked), [
        (e.key, e.name, pybids[e.key]) for e in checked if pybids[e.key] != e.name
    ]


def test_scan_id():
    assert scan_id(SOURCE) == "sub-01_ses-1_run-2"
    assert (
        scan_id({"subject": "01", "run": 3, "suffix": "ct", "extension": ".nii"}) == "sub-01_run-3"
    )
    # Usable as a nipype workflow name and as a file name.
    from nipype.pipeline import engine as pe

    assert pe.Workflow(name=f"scan_{scan_id(SOURCE)}_wf").name
    assert re.fullmatch(r"[A-Za-z0-9_-]+", scan_id("sub-01_ses-a_acq-b_ce-c_rec-d_run-1_ct.nii.gz"))


def test_entities_sort_key_numeric_runs():
    names = ["sub-01_run-10_ct.nii", "sub-01_run-2_ct.nii", "sub-01_ct.nii", "sub-01_run-02_ct.nii"]
    ordered = sorted((entities_from_path(n) for n in names), key=entities_sort_key)
    assert [e.get("run") for e in ordered] == [None, "02", "2", "10"]


def test_find_derivatives(tmp_path):
    sources = ["sub-01_ses-1_run-1_ct.nii.gz", "sub-01_ses-1_run-2_ct.nii.gz", "sub-02_ct.nii"]
    for src in sources:
        for kind in ("dseg", "template_dseg", "report", "failure"):
            path = derivative_path(tmp_path, src, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    # Temporary files of atomic writes and unrelated files are not outputs.
    anat = tmp_path / "sub-02" / "anat"
    (anat / ".sub-02_dseg.tmp-1-abcd.nii.gz").write_text("x")
    (anat / "sub-02_desc-other_dseg.nii.gz").write_text("x")
    (anat / "notes_dseg.nii.gz").write_text("x")

    for kind in ("dseg", "template_dseg", "report", "failure"):
        found = find_derivatives(tmp_path, kind)
        assert [scan_id(e) for e, _ in found] == [
            "sub-01_ses-1_run-1",
            "sub-01_ses-1_run-2",
            "sub-02",
        ]
        assert all(path == derivative_path(tmp_path, e, kind) for e, path in found)
        assert all("desc" not in e and "space" not in e for e, _ in found)
    assert find_derivatives(tmp_path, "volumes") == []


def test_write_dseg_tsv(tmp_path):
    path = write_dseg_tsv(tmp_path / "sub-01" / "anat" / "sub-01_dseg.tsv")
    table = pd.read_csv(path, sep="\t")
    assert list(table.columns) == ["index", "name", "abbreviation", "color"]
    assert list(table["index"]) == [lab.index for lab in FOREGROUND_LABELS]
    assert list(table["name"]) == [lab.name for lab in FOREGROUND_LABELS]
    assert list(table["color"]) == [lab.color for lab in FOREGROUND_LABELS]
    assert 0 not in set(table["index"])
    assert dseg_tsv_text() == path.read_text()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
