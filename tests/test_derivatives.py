"""Tests of atomic writing, DerivativesDataSink and the derivatives' dataset_description."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from ichseg.bids_app.description import (
    BIDS_VERSION,
    derivatives_description,
    write_derivatives_description,
)
from ichseg.pipeline.fileutils import (
    atomic_copy,
    atomic_output,
    atomic_write_text,
    split_extension,
)
from ichseg.pipeline.interfaces.derivatives import DerivativesDataSink

SOURCE = "/bids/sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz"


def _image(path):
    img = nb.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    img.to_filename(path)
    return path


# --- fileutils ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub-01_dseg.nii.gz", ("sub-01_dseg", ".nii.gz")),
        ("a.tar.bz2", ("a", ".tar.bz2")),
        ("group_volumes.tsv", ("group_volumes", ".tsv")),
        ("x.gz", ("x", ".gz")),
        ("README", ("README", "")),
    ],
)
def test_split_extension(name, expected):
    assert split_extension(name) == expected


def test_atomic_output_success(tmp_path):
    final = tmp_path / "sub-01" / "anat" / "sub-01_dseg.nii.gz"  # folders are created
    with atomic_output(final) as tmp:
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".sub-01_dseg.tmp-") and tmp.name.endswith(".nii.gz")
        assert not final.exists()
        _image(tmp)  # nibabel picks gzip from the kept extension
    assert nb.load(final).get_fdata().sum() == sum(range(64))
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    # Permissions follow the umask as for any file, not mkstemp's owner-only 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_output_error_leaves_nothing(tmp_path, exc):
    final = tmp_path / "table.tsv"
    final.write_text("old")
    with pytest.raises(exc):
        with atomic_output(final) as tmp:
            tmp.write_text("half-writ")
            raise exc("boom")
    assert final.read_text() == "old"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]  # temp removed

    new = tmp_path / "new.tsv"
    with pytest.raises(exc):
        with atomic_output(new):
            raise exc("boom")
    assert not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_atomic_write_text_and_copy(tmp_path):
    text = "a\tb\n1\t2\n"
    path = atomic_write_text(tmp_path / "t.tsv", text)
    assert path.read_bytes() == text.encode()
    atomic_write_text(path, "replaced\n")
    assert path.read_text() == "replaced\n"

    src = _image(tmp_path / "in.nii.gz")
    os.chmod(src, 0o444)  # e.g. a read-only input dataset
    dst = atomic_copy(src, tmp_path / "out" / "copy.nii.gz")
    assert dst.read_bytes() == src.read_bytes()
    assert os.access(dst, os.W_OK) or os.geteuid() == 0
    assert stat.S_IMODE(dst.stat().st_mode) != 0o444
    with pytest.raises(FileNotFoundError, match="Cannot copy .*missing"):
        atomic_copy(tmp_path / "missing", tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.nii.gz"]


# --- DerivativesDataSink -----------------------------------------------------------------


def test_datasink_copies_bytes(tmp_path):
    in_file = _image(tmp_path / "labels.nii.gz")
    result = DerivativesDataSink(
        base_directory=str(tmp_path / "out"), source_file=SOURCE, in_file=str(in_file), kind="dseg"
    ).run()
    out_file = tmp_path / "out/sub-01/ses-1/anat/sub-01_ses-1_run-2_dseg.nii.gz"
    assert result.outputs.out_file == str(out_file)
    assert out_file.read_bytes() == in_file.read_bytes()  # no re-encoding
    sidecar = out_file.with_name("sub-01_ses-1_run-2_dseg.json")
    assert sorted(p.name for p in out_file.parent.iterdir()) == sorted([out_file.name, sidecar.name])
    assert result.outputs.out_meta == str(sidecar)


@pytest.mark.parametrize("kind, expected", [
    ("dseg", {"Labels": {"1": "intraparenchymal hemorrhage", "2": "extra-axial hemorrhage",
                         "3": "perilesional oedema", "4": "intraventricular hemorrhage"}}),
    ("template_dseg", {"Labels": {"1": "intraparenchymal hemorrhage", "2": "extra-axial hemorrhage",
                                  "3": "perilesional oedema", "4": "intraventricular hemorrhage"}}),
    ("hemorrhage_probseg", {"Labels": {"1": "intraparenchymal hemorrhage", "2": "extra-axial hemorrhage",
                                       "4": "intraventricular hemorrhage"}}),
    ("brain_mask", {"Type": "Brain"}),
    ("template_ct", {}),
])
def test_nifti_derivatives_get_sidecars(tmp_path, kind, expected):
    """BIDS derivatives: Sources (a BIDS URI of the CT, resolved by DatasetLinks) and labels."""
    from ichseg.pipeline.naming import sidecar_path

    in_file = _image(tmp_path / "x.nii.gz")
    out = DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=SOURCE,
                              in_file=str(in_file), kind=kind).run().outputs.out_file
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["Sources"] == ["bids:raw:sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz"]
    assert meta["Description"]
    for key, value in expected.items():
        assert meta[key] == value


def test_datasink_kinds_and_entities(tmp_path):
    out = tmp_path / "out"
    mat = tmp_path / "0GenericAffine.mat"
    mat.write_bytes(b"\x00\x01binary")
    res = DerivativesDataSink(
        base_directory=str(out), source_file=SOURCE, in_file=str(mat), kind="xfm"
    ).run()
    assert res.outputs.out_file.endswith(
        "anat/sub-01_ses-1_run-2_from-ct_to-scct_mode-image_xfm.mat"
    )
    svg = tmp_path / "fig.svg"
    svg.write_text("<svg/>")
    res = DerivativesDataSink(
        base_directory=str(out),
        source_file=SOURCE,
        in_file=str(svg),
        kind="figure",
        entities={"desc": "overlay"},
    ).run()
    assert res.outputs.out_file == str(
        out / "sub-01/figures/sub-01_ses-1_run-2_desc-overlay_ct.svg"
    )


def test_datasink_errors(tmp_path):
    in_file = _image(tmp_path / "labels.nii.gz")
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / "out"),
        source_file=SOURCE,
        in_file=str(in_file),
        kind="labels",
    )
    with pytest.raises(ValueError, match="unknown kind 'labels'; choose one of: brain_mask"):
        sink.run()
    table = tmp_path / "labels.tsv"
    table.write_text("index\tname\n")
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / "out"), source_file=SOURCE, in_file=str(table), kind="dseg"
    )
    with pytest.raises(ValueError, match="end with '.nii.gz'.*only gzips an uncompressed .nii"):
        sink.run()
    assert not (tmp_path / "out" / "sub-01" / "ses-1" / "anat").exists()


def test_datasink_compresses_uncompressed_nifti(tmp_path):
    """A step's .nii is stored gzip-compressed under the .nii.gz name, same image, same
    bytes on every run."""
    import nibabel as nib

    plain = tmp_path / "labels.nii"
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 4.0, 1.0])), plain)
    outputs = []
    for run in range(2):
        sink = DerivativesDataSink(
            base_directory=str(tmp_path / f"out{run}"), source_file=SOURCE, in_file=str(plain), kind="dseg"
        )
        outputs.append(Path(sink.run().outputs.out_file))
    assert outputs[0].name.endswith("_dseg.nii.gz")
    assert outputs[0].read_bytes()[:2] == b"\x1f\x8b"  # gzip
    stored = nib.load(str(outputs[0]))
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), data)
    np.testing.assert_array_equal(stored.affine, np.diag([0.5, 0.5, 4.0, 1.0]))
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_datasink_in_a_workflow_reruns(tmp_path):
    """The sink always runs, so a derivative deleted after a run comes back on a rerun."""
    from nipype.pipeline import engine as pe

    in_file = _image(tmp_path / "mask.nii.gz")
    node = pe.Node(
        DerivativesDataSink(
            base_directory=str(tmp_path / "out"), source_file=SOURCE, kind="brain_mask"
        ),
        name="ds_mask",
        base_dir=str(tmp_path / "work"),
    )
    node.inputs.in_file = str(in_file)
    out_file = node.run().outputs.out_file
    assert out_file.endswith("sub-01_ses-1_run-2_desc-brain_mask.nii.gz")
    os.unlink(out_file)
    node.run()
    assert os.path.exists(out_file)


# --- dataset_description.json ------------------------------------------------------------


def test_derivatives_description(tmp_path, monkeypatch):
    monkeypatch.delenv("ICHSEG_CONTAINER", raising=False)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')
    out = tmp_path / "out"
    path = write_derivatives_description(out, bids, "0.1.0")
    assert path == out / "dataset_description.json"
    desc = json.loads(path.read_text())
    assert desc["Name"] == "ichseg"
    assert desc["BIDSVersion"] == BIDS_VERSION
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"] == [{"Name": "ichseg", "Version": "0.1.0"}]
    assert desc["SourceDatasets"] == [{"URL": bids.absolute().as_uri()}]
    assert desc["DatasetLinks"] == {"raw": bids.absolute().as_uri()}
    assert "Monteiro" in desc["HowToAcknowledge"] and "Sharrock" in desc["HowToAcknowledge"]

    # Idempotent: the same content is not rewritten (parallel jobs may all call this).
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime - 10**9, mtime - 10**9))
    write_derivatives_description(out, bids, "0.1.0")
    assert path.stat().st_mtime_ns == mtime - 10**9
    assert [p.name for p in out.iterdir()] == ["dataset_description.json"]


@pytest.mark.parametrize(
    ("doi", "expected"),
    [
        ("10.18112/openneuro.ds000001.v1.0.0", "doi:10.18112/openneuro.ds000001.v1.0.0"),
        ("doi:10.5281/zenodo.1", "doi:10.5281/zenodo.1"),
        ("https://doi.org/10.5281/zenodo.1", "doi:10.5281/zenodo.1"),
    ],
)
def test_description_source_doi(tmp_path, doi, expected):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "r", "DatasetDOI": doi}))
    assert derivatives_description(bids, "1")["SourceDatasets"] == [{"DOI": expected}]


def test_description_container(tmp_path, monkeypatch):
    monkeypatch.setenv("ICHSEG_CONTAINER", "docker://ichseg/ichseg:0.1.0")
    gen = derivatives_description(tmp_path, "0.1.0")["GeneratedBy"][0]
    assert gen["Container"] == {
        "Type": "docker",
        "Tag": "ichseg/ichseg:0.1.0",
        "URI": "docker://ichseg/ichseg:0.1.0",
    }
    monkeypatch.setenv("ICHSEG_CONTAINER", "ichseg_0.1.0.sif")
    gen = derivatives_description(tmp_path, "0.1.0")["GeneratedBy"][0]
    assert gen["Container"] == {"Tag": "ichseg_0.1.0.sif"}


def test_description_version_change_warns(tmp_path, caplog):
    write_derivatives_description(tmp_path / "out", tmp_path, "0.1.0")
    with caplog.at_level(logging.WARNING):
        path = write_derivatives_description(tmp_path / "out", tmp_path, "0.2.0")
    assert "written by ichseg 0.1.0; this is ichseg 0.2.0" in caplog.text
    assert json.loads(path.read_text())["GeneratedBy"][0]["Version"] == "0.2.0"
