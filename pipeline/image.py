"""Loading and checking head CT images, and putting them in a standard orientation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: Air is about -1000 HU; a CT in HU has values well below this somewhere (air around the head),
#: unless it arrives already skull-stripped with a constant background (see :func:`check_hu`).
AIR_THRESHOLD_HU = -500.0


class InputImageError(ValueError):
    """A scan that cannot be processed; the message names the file, the problem and a fix."""


def load_ct(path: str | Path) -> nib.Nifti1Image:
    """Load a head CT, checking that it is a readable 3D image in Hounsfield units.

    Raises :class:`InputImageError` with an actionable message otherwise.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise InputImageError(
            f"{path}: cannot read the image ({type(exc).__name__}: {exc}). The file may be "
            "truncated or corrupt; re-export it from the DICOM series (e.g. with dcm2niix)."
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise InputImageError(
            f"{path}: expected one 3D head CT volume, got an image of shape {data.shape}. "
            "Split multi-volume series and pass each 3D volume as its own *_ct.nii.gz."
        )
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputImageError(
            f"{path}: the image holds NaN or infinite values; re-export it from DICOM."
        )
    check_hu(data, path)
    return nib.Nifti1Image(data, img.affine, img.header)


def check_hu(data: np.ndarray, path: str | Path) -> None:
    """Reject intensities that cannot be Hounsfield units (e.g. raw 0..4095 detector values)."""
    low, high = float(data.min()), float(data.max())
    if low >= 0 and high > 2000:
        raise InputImageError(
            f"{path}: intensities run from {low:g} to {high:g}, which looks like raw stored "
            "values rather than Hounsfield units (air should be about -1000 HU). Convert with "
            "the DICOM RescaleSlope/RescaleIntercept (dcm2niix does this by default)."
        )
    if high < 20:
        raise InputImageError(
            f"{path}: the highest intensity is {high:g}, too low for a head CT in Hounsfield "
            "units (brain is about 20-45 HU). Check that this is a CT and that it is in HU."
        )


def conform_ct(in_file: str | Path, out_file: str | Path) -> Path:
    """Load and check a CT, reorient it to the closest RAS axes, and save it as float32.

    Reorientation only permutes and flips voxel axes (no interpolation), so a shear from
    gantry tilt is kept in the affine and handled downstream by :mod:`ichseg.pipeline.geometry`.
    """
    img = nib.as_closest_canonical(load_ct(in_file))
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    nib.save(out, str(out_file))
    return Path(out_file)


def to_source_orientation(data: np.ndarray, conformed_affine: np.ndarray, source_img) -> np.ndarray:
    """Undo :func:`conform_ct`'s axis reordering: bring a conformed-grid array to the source grid."""
    from_ornt = nib.orientations.io_orientation(conformed_affine)
    to_ornt = nib.orientations.io_orientation(source_img.affine)
    transform = nib.orientations.ornt_transform(from_ornt, to_ornt)
    return nib.orientations.apply_orientation(data, transform)
