"""Property-based test of the image loader and input checks (hypothesis).

Any file a user may pass as a CT, built from a small head-like volume with arbitrary dtypes,
header scaling, affines, shapes, orientation codes and damaged bytes, must give either a
checked 3D float32 image or an :class:`InputImageError` that names the file: never another
exception (a traceback for the user). And an image whose values are not Hounsfield units
must never pass as a CT. Derandomised and bounded so that CI runs the same examples in a few
seconds.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ichseg.pipeline.checks import CheckResult, InputImageError, check_ct

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _head(shape=(24, 24, 10)) -> np.ndarray:
    """Air, a skull shell and brain at CT densities (HU)."""
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / centre.clip(1)) ** 2).sum(axis=0))
    head = np.full(shape, -1000.0, dtype=np.float32)
    head[radius < 0.95] = 900.0
    head[radius < 0.8] = 35.0
    return head


#: Values that are not Hounsfield units, by what a user may have exported.
NOT_HU = {
    "raw stored values": lambda hu: np.clip(hu + 1024, 0, None) * 2.5,
    "8-bit brain window": lambda hu: np.clip((hu - 0) / 80 * 255, 0, 255).round(),
    "constant": lambda hu: np.full_like(hu, 7.0),
    "inverted": lambda hu: -hu,
}

dtypes = st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
voxel = st.floats(min_value=-20.0, max_value=20.0, allow_nan=False)
affines = st.one_of(
    st.builds(lambda d: np.diag([*d, 1.0]), st.tuples(voxel, voxel, voxel)),
    st.lists(st.floats(min_value=-50, max_value=50, allow_nan=False), min_size=12, max_size=12).map(
        lambda v: np.vstack([np.reshape(v, (3, 4)), [0, 0, 0, 1]])),
)
shapes = st.sampled_from(["3d", "2d", "4d-one", "4d-two", "thin", "5d"])
scalings = st.sampled_from([(None, None), (1.0, -1024.0), (0.0, 0.0), (np.nan, np.nan), (2.0, 0.0), (1e-4, 0.0)])
codes = st.sampled_from([0, 1, 2])
damage = st.sampled_from(["none", "truncate", "plain-as-gz", "garbage", "empty"])


def _reshape(data: np.ndarray, kind: str) -> np.ndarray:
    return {
        "3d": data, "2d": data[:, :, 4], "4d-one": data[..., None], "4d-two": np.stack([data, data], -1),
        "thin": data[:, :, :2], "5d": data[..., None, None],
    }[kind]


def _write(path: Path, data, affine, dtype, scaling, qcode, scode, how: str) -> None:
    """Write the file as a user may have it; skip headers that nibabel itself refuses to write
    (not an input a user can have)."""
    try:
        _write_file(path, data, affine, dtype, scaling, qcode, scode, how)
    except Exception:
        assume(False)


def _write_file(path: Path, data, affine, dtype, scaling, qcode, scode, how: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = nib.Nifti1Image(data.astype(dtype), affine)
        img.set_qform(affine, code=qcode)
        img.set_sform(affine, code=scode)
        if scaling != (None, None):
            img.header.set_slope_inter(*scaling)
        blob = img.to_bytes()
    if how == "truncate":
        blob = gzip.compress(blob)[: len(blob) // 5]
    elif how == "garbage":
        blob = gzip.compress(b"\x00\x01 not a NIfTI header " * 40)
    elif how == "empty":
        blob = b""
    elif how != "plain-as-gz":
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def _check(path: Path) -> CheckResult | InputImageError:
    try:
        return check_ct(path)
    except InputImageError as err:
        assert str(path) in str(err), f"the message does not name the file: {err}"
        return err


@SETTINGS
@given(dtype=dtypes, affine=affines, shape=shapes, scaling=scalings, qcode=codes, scode=codes, how=damage,
       scale=st.floats(min_value=-3, max_value=3, allow_nan=False))
def test_any_input_gives_a_result_or_a_named_error(tmp_path, dtype, affine, shape, scaling, qcode, scode, how, scale):
    path = tmp_path / "sub-x_ct.nii.gz"
    _write(path, _reshape(_head() * scale, shape), affine, dtype, scaling, qcode, scode, how)
    outcome = _check(path)
    if isinstance(outcome, CheckResult):
        image = np.asanyarray(outcome.image.dataobj)
        assert image.ndim == 3 and image.dtype == np.float32 and np.isfinite(image).all()
        assert np.isfinite(outcome.image.affine).all()
        assert outcome.measures["head_coverage_mm"] >= 0


@SETTINGS
@given(kind=st.sampled_from(sorted(NOT_HU)), dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
       affine=affines)
def test_values_that_are_not_hounsfield_units_never_pass(tmp_path, kind, dtype, affine):
    data = NOT_HU[kind](_head())
    assume(np.array_equal(data.astype(dtype), data))  # the export's dtype holds its values
    path = tmp_path / "sub-x_ct.nii.gz"
    _write(path, data, affine, dtype, (None, None), 1, 1, "none")
    assert isinstance(_check(path), InputImageError), kind


@pytest.mark.parametrize("kind", sorted(NOT_HU))
def test_every_kind_of_non_hu_export_is_refused_on_a_plain_grid(tmp_path, kind):
    path = tmp_path / "sub-x_ct.nii.gz"
    _write(path, NOT_HU[kind](_head()), np.diag([0.5, 0.5, 5.0, 1.0]), np.float32, (None, None), 1, 1, "none")
    assert isinstance(_check(path), InputImageError)
