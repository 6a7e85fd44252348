"""``ichseg dicom2bids`` on the real GE DICOM series, with a localizer beside it, and on no CT."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from ichseg.bids_app.bids import collect_ct_images
from ichseg.bids_app.cli import main
from ichseg.bids_app.dicom2bids import Dicom2BidsError, dicom_to_bids

pytestmark = pytest.mark.realdata


@pytest.fixture
def ge_dicom(asset):
    folder = asset("ct/ge-head_ct.nii.gz").parent / "ge-head-dicom"
    if not folder.is_dir():
        pytest.skip(f"no DICOM series at {folder}")
    return folder


def test_converts_the_ge_series_like_the_shared_nifti(tmp_path, ge_dicom, asset):
    assert main(["dicom2bids", str(ge_dicom), str(tmp_path / "bids"), "--participant-label", "sub-ge",
                 "--session-label", "1"]) == 0
    out = tmp_path / "bids/sub-ge/ses-1/anat/sub-ge_ses-1_ct.nii.gz"
    converted, shared = nib.load(out), nib.load(asset("ct/ge-head_ct.nii.gz"))
    assert converted.shape == shared.shape
    np.testing.assert_allclose(converted.affine, shared.affine, atol=1e-4)  # the tilt's shear kept
    np.testing.assert_array_equal(np.asanyarray(converted.dataobj), np.asanyarray(shared.dataobj))
    sidecar = json.loads(out.with_name("sub-ge_ses-1_ct.json").read_text())
    assert sidecar["Modality"] == "CT"
    assert [img.scan_id for img in collect_ct_images(tmp_path / "bids")] == ["sub-ge_ses-1"]


def test_a_localizer_beside_the_axial_series_is_left_out(tmp_path, ge_dicom, capsys):
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "dicom"
    shutil.copytree(ge_dicom, folder)
    uid = pydicom.uid.generate_uid()
    for i, source in enumerate(sorted(ge_dicom.glob("*.dcm"))[:3]):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID, ds.SeriesNumber = uid, 1
        ds.SeriesDescription = "SCOUT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"scout{i}.dcm")
    written = dicom_to_bids(folder, tmp_path / "bids", "01")
    assert [p.name for p in written] == ["sub-01_ct.nii.gz"]
    assert "left out series 1 (SCOUT)" in capsys.readouterr().err


def test_no_ct_writes_nothing(tmp_path):
    empty = tmp_path / "dicom"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    with pytest.raises(Dicom2BidsError, match="no usable head CT series"):
        dicom_to_bids(empty, tmp_path / "bids", "01")
    assert not (tmp_path / "bids").exists()
    assert main(["dicom2bids", str(empty), str(tmp_path / "bids"), "--participant-label", "01"]) == 2
