"""Loading, checking and conforming head CTs (ichseg.pipeline.image)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    ornt_transform,
)

from ichseg.pipeline.checks import MIN_HEAD_COVERAGE_MM, check_ct
from ichseg.pipeline.geometry import shear_degrees
from ichseg.pipeline.image import (
    InputImageError,
    conform_ct,
    load_ct,
    to_source_orientation,
)
from ichseg.pipeline.phantom import make_head_phantom, phantom_affine

ORIENTATIONS = [
    ("R", "A", "S"),
    ("L", "A", "S"),
    ("L", "P", "S"),
    ("P", "S", "R"),
    ("I", "L", "A"),
    ("A", "I", "L"),
    ("R", "P", "I"),
]


@pytest.fixture(scope="module")
def phantom():
    return make_head_phantom(voxel_size=(2.0, 2.0, 6.0), shape=(90, 110, 26), hemorrhage_ml=10.0)


def _save(data, affine, path, dtype=None):
    img = nib.Nifti1Image(np.asarray(data if dtype is None else data.astype(dtype)), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def _ras_volume(rng, shape=(9, 8, 7)):
    """A CT-like RAS volume (HU range, every value distinct) and its RAS affine."""
    data = (rng.permutation(np.prod(shape)).reshape(shape) % 1100 - 1000).astype(np.float32)
    data.flat[0] = 80.0
    affine = np.diag([0.9, 1.1, 2.5, 1.0])
    affine[:3, 3] = (-40.0, 25.0, -7.0)
    return data, affine


def _reorient(data, affine, codes):
    """The same image stored with voxel axes ``codes`` (data and affine), from a RAS one."""
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes))
    out = apply_orientation(data, transform)
    out_affine = affine @ inv_ornt_aff(transform, data.shape)
    assert nib.aff2axcodes(out_affine) == tuple(codes)
    return out, out_affine


# --------------------------------------------------------------------------- load_ct


def test_load_ct_accepts_phantom(tmp_path, phantom):
    path = _save(phantom.data, phantom.affine, tmp_path / "sub-01_ct.nii.gz")
    img = load_ct(path)
    assert isinstance(img, nib.Nifti1Image)
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.float32 and data.shape == phantom.data.shape
    np.testing.assert_array_equal(data, phantom.data.astype(np.float32))
    np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-5)


def test_load_ct_applies_header_scaling(tmp_path, phantom):
    """Stored values 0..4095 with intercept -1024 are HU after scaling: accepted."""
    raw = (phantom.data.astype(np.int32) + 1024).astype(np.uint16)
    img = nib.Nifti1Image(raw, phantom.affine)
    img.header.set_slope_inter(1.0, -1024.0)
    img.set_data_dtype(np.uint16)
    path = tmp_path / "scaled_ct.nii.gz"
    nib.save(img, str(path))
    data = np.asanyarray(load_ct(path).dataobj)
    np.testing.assert_array_equal(data, phantom.data.astype(np.float32))


def test_load_ct_accepts_skull_stripped(tmp_path):
    stripped = make_head_phantom(voxel_size=(3.0, 3.0, 6.0), shape=(60, 72, 26), skull=False)
    path = _save(stripped.data, stripped.affine, tmp_path / "stripped_ct.nii.gz")
    assert load_ct(path).shape == stripped.data.shape


def test_load_ct_accepts_single_volume_4d(tmp_path, phantom):
    path = _save(phantom.data[..., None], phantom.affine, tmp_path / "one_ct.nii.gz")
    img = load_ct(path)
    assert img.shape == phantom.data.shape
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), phantom.data)


def _expect_input_error(path, *words):
    with pytest.raises(InputImageError) as info:
        load_ct(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word.lower() in message.lower()
    return message


def test_load_ct_rejects_multiple_volumes(tmp_path, phantom):
    data = np.stack([phantom.data, phantom.data], axis=-1)
    path = _save(data, phantom.affine, tmp_path / "two_ct.nii.gz")
    _expect_input_error(path, "3D", str((*phantom.data.shape, 2)))


@pytest.mark.parametrize(("shape", "word"), [((40, 50), "3D"), ((40, 50, 1), "slice")])
def test_load_ct_rejects_2d(tmp_path, shape, word):
    data = np.full(shape, -1000, dtype=np.int16)
    data[10:30, 10:30] = 40
    path = _save(data, np.eye(4), tmp_path / "slice_ct.nii.gz")
    _expect_input_error(path, word)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_load_ct_rejects_non_finite(tmp_path, phantom, bad):
    data = phantom.data.astype(np.float32)
    data[40, 50, 12] = bad
    path = _save(data, phantom.affine, tmp_path / "nan_ct.nii.gz")
    _expect_input_error(path, "NaN")


def test_load_ct_rejects_raw_detector_values(tmp_path, phantom):
    raw = np.clip(phantom.data.astype(np.int32) + 1024, 0, 4095).astype(np.uint16)
    raw[0, 0, 0], raw[1, 0, 0] = 0, 4095
    assert raw.min() == 0 and raw.max() == 4095
    path = _save(raw, phantom.affine, tmp_path / "raw_ct.nii.gz")
    _expect_input_error(path, "Hounsfield", "RescaleIntercept")


def test_load_ct_rejects_images_without_tissue_values(tmp_path):
    data = np.full((20, 20, 10), -1000.0, dtype=np.float32)
    data[5:15, 5:15, 2:8] = 10.0  # nothing at brain density: not a CT in HU
    path = _save(data, np.eye(4), tmp_path / "dark_ct.nii.gz")
    _expect_input_error(path, "Hounsfield")


def test_load_ct_rejects_truncated_gzip(tmp_path, phantom):
    good = _save(phantom.data, phantom.affine, tmp_path / "good_ct.nii.gz")
    assert load_ct(good).shape == phantom.data.shape
    blob = good.read_bytes()
    cut = tmp_path / "cut_ct.nii.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    # the header still reads: the damage is only found when the voxels are
    assert nib.load(str(cut)).shape == phantom.data.shape
    _expect_input_error(cut, "truncated")


def test_load_ct_rejects_unreadable_file(tmp_path):
    path = tmp_path / "junk_ct.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti file" * 10))
    _expect_input_error(path, "cannot read")


def _window(hu, level=40.0, width=80.0):
    """A display-window export: HU mapped to grey levels 0-255."""
    return np.clip((hu - (level - width / 2)) / width * 255, 0, 255).round()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_load_ct_rejects_display_window_export(tmp_path, phantom, dtype):
    path = _save(_window(phantom.data), phantom.affine, tmp_path / "win_ct.nii.gz", dtype=dtype)
    _expect_input_error(path, "not Hounsfield units", "no air", "re-export", "DICOM")


def test_load_ct_rejects_wide_window_export_by_its_skull_without_air(tmp_path, phantom):
    grey = _window(phantom.data, level=300.0, width=600.0) * 4  # 0-1020, brain at 51: only the skull tells
    path = _save(grey, phantom.affine, tmp_path / "wide_ct.nii.gz", dtype=np.int16)
    _expect_input_error(path, "not Hounsfield units")


def test_load_ct_rejects_plain_nifti_named_gz(tmp_path, phantom):
    plain = _save(phantom.data, phantom.affine, tmp_path / "plain_ct.nii")
    disguised = tmp_path / "disguised_ct.nii.gz"
    disguised.write_bytes(plain.read_bytes())
    _expect_input_error(disguised, "not gzip-compressed", "rename it to disguised_ct.nii")


def test_load_ct_rejects_a_folder(tmp_path):
    folder = tmp_path / "sub-01_ct.nii.gz"
    folder.mkdir()
    _expect_input_error(folder, "is a folder, not a NIfTI file")


def test_load_ct_rejects_complex_voxels(tmp_path, phantom):
    path = tmp_path / "complex_ct.nii.gz"
    nib.save(nib.Nifti1Image(phantom.data.astype(np.complex64), phantom.affine), str(path))
    _expect_input_error(path, "cannot read", "complex")


def test_head_coverage_warns_and_measures_the_extent(tmp_path, phantom):
    whole = check_ct(_save(phantom.data, phantom.affine, tmp_path / "whole_ct.nii.gz"))
    assert whole.measures["head_coverage_mm"] >= MIN_HEAD_COVERAGE_MM
    assert not any("coverage" in w for w in whole.warnings)
    partial = check_ct(_save(phantom.data[:, :, 10:16], phantom.affine, tmp_path / "six_ct.nii.gz"))
    assert partial.measures["head_coverage_mm"] == pytest.approx(36.0)  # 6 slices of 6 mm
    warning = next(w for w in partial.warnings if w.startswith("incomplete head coverage"))
    assert "36 mm" in warning and "lower bounds" in warning


# --------------------------------------------------------------------------- conform_ct


@pytest.mark.parametrize("codes", ORIENTATIONS, ids="".join)
def test_conform_ct_gives_ras_and_keeps_voxels(tmp_path, codes):
    rng = np.random.default_rng(7)
    ras_data, ras_affine = _ras_volume(rng)
    data, affine = _reorient(ras_data, ras_affine, codes)
    source = _save(data, affine, tmp_path / "src_ct.nii.gz", dtype=np.int16)
    out = tmp_path / "conformed.nii.gz"
    warnings = conform_ct(source, out).warnings
    # 0.9-2.5 mm voxels, orthogonal grid, consistent header: only the tiny volume's coverage
    assert [w for w in warnings if not w.startswith("incomplete head coverage")] == []
    img = nib.load(str(out))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.float32
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    conformed = np.asanyarray(img.dataobj)
    # exactly the RAS volume we started from, voxel for voxel, on the same world grid
    np.testing.assert_array_equal(conformed, ras_data)
    np.testing.assert_allclose(img.affine, ras_affine, atol=1e-5)
    # and what nibabel's own reorientation gives
    canonical = nib.as_closest_canonical(nib.load(str(source)))
    np.testing.assert_array_equal(conformed, np.asanyarray(canonical.dataobj))
    np.testing.assert_allclose(img.affine, canonical.affine, atol=1e-5)


def test_conform_ct_keeps_a_sheared_affine(tmp_path, phantom):
    tilted = make_head_phantom(
        voxel_size=(2.0, 2.0, 6.0), shape=(90, 110, 26), tilt_deg=18.5, hemorrhage_ml=5.0
    )
    assert nib.aff2axcodes(tilted.affine) == ("L", "A", "S")
    source = _save(tilted.data, tilted.affine, tmp_path / "tilt_ct.nii.gz")
    warnings = conform_ct(source, tmp_path / "conformed.nii.gz").warnings
    assert any("tilt" in w for w in warnings)
    img = nib.load(str(tmp_path / "conformed.nii.gz"))
    # the only change is an L->R flip of the first axis: the shear stays in the affine
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = tilted.data.shape[0] - 1
    np.testing.assert_allclose(img.affine, tilted.affine @ flip, atol=1e-4)
    assert shear_degrees(img.affine) == pytest.approx(18.5, abs=1e-3)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), tilted.data[::-1].astype(np.float32))


def test_conform_ct_reports_bad_input(tmp_path):
    data = np.full((10, 10, 10), 500.0, dtype=np.float32)
    data[0, 0, 0] = np.nan
    source = _save(data, np.eye(4), tmp_path / "nan_ct.nii.gz")
    with pytest.raises(InputImageError, match="nan_ct"):
        conform_ct(source, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


# --------------------------------------------------------------------------- to_source_orientation


@pytest.mark.parametrize("codes", ORIENTATIONS + [("S", "R", "P")], ids="".join)
def test_to_source_orientation_inverts_conform(tmp_path, codes):
    rng = np.random.default_rng(11)
    ras_data, ras_affine = _ras_volume(rng, shape=(7, 10, 6))
    data, affine = _reorient(ras_data, ras_affine, codes)
    source_path = _save(data, affine, tmp_path / "src_ct.nii.gz", dtype=np.int16)
    conform_ct(source_path, tmp_path / "conformed.nii.gz")
    conformed = nib.load(str(tmp_path / "conformed.nii.gz"))
    source = nib.load(str(source_path))
    back = to_source_orientation(np.asanyarray(conformed.dataobj), conformed.affine, source)
    assert back.shape == source.shape
    np.testing.assert_array_equal(back, np.asanyarray(source.dataobj))
    # a label map made on the conformed grid lands on the source voxels at the same world points
    labels = (np.arange(conformed.shape[0] * conformed.shape[1] * conformed.shape[2]) % 251).reshape(
        conformed.shape
    ).astype(np.uint8)
    on_source = to_source_orientation(labels, conformed.affine, source)
    ijk = np.array([1, 2, 3])
    world = source.affine[:3, :3] @ ijk + source.affine[:3, 3]
    conf_ijk = np.rint(np.linalg.solve(conformed.affine[:3, :3], world - conformed.affine[:3, 3])).astype(int)
    assert on_source[tuple(ijk)] == labels[tuple(conf_ijk)]


def test_to_source_orientation_on_sheared_grid(tmp_path):
    affine = phantom_affine((2.0, 2.0, 6.0), (30, 40, 12), tilt_deg=20.0)
    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 100, size=(30, 40, 12)).astype(np.int16)
    data[0, 0, 0] = 60
    # store it with permuted axes: stored voxel (a, b, c) is LAS voxel (c, 39 - a, b)
    stored = data.transpose(1, 2, 0)[::-1]
    perm = np.array([[0, 0, 1, 0], [-1, 0, 0, 39], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    stored_affine = affine @ perm
    assert stored[5, 3, 7] == data[7, 39 - 5, 3]
    source_path = _save(stored, stored_affine, tmp_path / "src_ct.nii.gz")
    conform_ct(source_path, tmp_path / "conformed.nii.gz")
    conformed = nib.load(str(tmp_path / "conformed.nii.gz"))
    assert nib.aff2axcodes(conformed.affine) == ("R", "A", "S")
    assert shear_degrees(conformed.affine) == pytest.approx(20.0, abs=1e-3)
    # the conformed grid is the LAS grid with its first axis flipped
    np.testing.assert_array_equal(np.asanyarray(conformed.dataobj), data[::-1])
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 29
    np.testing.assert_allclose(conformed.affine, affine @ flip, atol=1e-4)
    source = nib.load(str(source_path))
    back = to_source_orientation(np.asanyarray(conformed.dataobj), conformed.affine, source)
    np.testing.assert_array_equal(back, stored)
