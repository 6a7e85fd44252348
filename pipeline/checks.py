"""Input checks of a head CT: each problem is an error (the scan is skipped with its reason)
or a warning (the scan runs and its report flags it).

Every message names the file, says what is wrong and what to do. The thresholds are
module constants so that they are documented in one place (see docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from .geometry import shear_degrees, voxel_sizes

#: Voxel edges outside this range (mm) are not a head CT or a broken header: error.
VOXEL_SIZE_RANGE_MM = (0.1, 10.0)
#: Slices thicker than this (mm) make small bleeds unreliable: warning.
THICK_SLICE_MM = 5.0
#: Fewer slices than this cannot hold a head: error (a single slice, a localizer).
MIN_SLICES = 5
#: A sheared voxel grid (gantry tilt) beyond this many degrees is reported: warning.
TILT_WARNING_DEG = 1.0
#: qform and sform that place voxels further apart than this (mm) disagree: warning.
FORM_DISAGREEMENT_MM = 1.0
#: Values of raw stored CT data (no rescale): 0..4095; HU data has air near -1000.
RAW_MIN, RAW_MAX_ABOVE = 0.0, 2000.0
#: Brain tissue is 20-45 HU; a CT in HU reaches at least this somewhere.
MIN_MAX_HU = 20.0
#: Words in DICOM-derived sidecar fields that mark a series this method must not run on.
LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM", "SURVIEW")
CONTRAST_WORDS = ("CONTRAST", "CTA", "ANGIO", "C+", "POST")


class InputImageError(ValueError):
    """A scan that cannot be processed; the message names the file, the problem and a fix."""


@dataclass(frozen=True)
class CheckResult:
    """What the checks found: the image as loaded (3D, float32) and the warnings."""

    image: nib.Nifti1Image
    warnings: tuple[str, ...]


def read_ct(path: str | Path) -> nib.Nifti1Image:
    """Read a NIfTI file as one 3D float32 volume; unreadable or non-3D files are errors."""
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
    if data.ndim != 3:
        raise InputImageError(
            f"{path}: expected one 3D head CT volume, got an image of shape {data.shape}. "
            "Split multi-volume series and pass each 3D volume as its own *_ct.nii.gz."
        )
    if min(data.shape) < MIN_SLICES:
        raise InputImageError(
            f"{path}: the image has only {min(data.shape)} slice(s) along one axis (shape "
            f"{data.shape}); a head CT needs at least {MIN_SLICES}. Is this a single slice or a "
            "localizer? Export the full axial series."
        )
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine, img.header)


def check_intensities(data: np.ndarray, path: str | Path) -> None:
    """Errors for values that cannot be a CT in Hounsfield units."""
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputImageError(
            f"{path}: {bad} voxel(s) are NaN or infinite; re-export the scan from DICOM."
        )
    low, high = float(data.min()), float(data.max())
    if low >= RAW_MIN and high > RAW_MAX_ABOVE:
        raise InputImageError(
            f"{path}: intensities run from {low:g} to {high:g}, which looks like raw stored "
            "values or Cormack units (HU + 1024) rather than Hounsfield units (air is about "
            "-1000 HU). Convert with the DICOM RescaleSlope/RescaleIntercept (dcm2niix does "
            "this by default), or subtract 1024 from Cormack-unit images."
        )
    if high < MIN_MAX_HU:
        raise InputImageError(
            f"{path}: the highest intensity is {high:g}, too low for a head CT in Hounsfield "
            "units (brain is about 20-45 HU). Check that this is a CT and that it is in HU."
        )


def check_geometry(img: nib.Nifti1Image, path: str | Path) -> list[str]:
    """Errors for unusable voxel grids; warnings for thick slices, tilt and header conflicts."""
    warnings = []
    header = img.header
    sizes = voxel_sizes(img.affine)
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        raise InputImageError(
            f"{path}: the NIfTI header has no orientation (qform and sform codes are 0), so left "
            "and right are unknown. Convert the DICOM series with dcm2niix, which writes them."
        )
    low, high = VOXEL_SIZE_RANGE_MM
    if not all(low <= s <= high for s in sizes):
        raise InputImageError(
            f"{path}: implausible voxel size {tuple(round(s, 3) for s in sizes)} mm (expected "
            f"{low}-{high} mm). The header is probably wrong; re-convert the DICOM series."
        )
    if max(sizes) > THICK_SLICE_MM:
        warnings.append(
            f"thick slices ({max(sizes):.1f} mm > {THICK_SLICE_MM:g} mm): small or thin bleeds "
            "may be missed or their volume misjudged; use thin-slice reconstructions if available."
        )
    tilt = shear_degrees(img.affine)
    if tilt > TILT_WARNING_DEG:
        warnings.append(
            f"gantry tilt of {tilt:.1f} degrees (sheared voxel grid): handled by resampling, "
            "but check the registration figure."
        )
    if int(header["sform_code"]) > 0 and int(header["qform_code"]) > 0:
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in img.shape[:3]], indexing="ij")).reshape(3, -1)
        corners = np.vstack([corners, np.ones(corners.shape[1])])
        gap = np.abs((header.get_qform() - header.get_sform()) @ corners)[:3].max()
        if gap > FORM_DISAGREEMENT_MM and tilt <= TILT_WARNING_DEG:
            # (a sheared sform cannot be stored in a qform: that disagreement is expected)
            warnings.append(
                f"the header's qform and sform disagree by up to {gap:.1f} mm; the sform is used."
            )
    return warnings


def check_sidecar(sidecar: Mapping, path: str | Path) -> list[str]:
    """Errors for localizer and contrast-enhanced series named in the JSON sidecar."""
    def text(*keys):
        values = []
        for key in keys:
            value = sidecar.get(key)
            values.extend(value if isinstance(value, list) else [value] if value is not None else [])
        return " ".join(str(v) for v in values).upper()

    kind = text("ImageType", "SeriesDescription", "ProtocolName")
    if any(word in kind for word in LOCALIZER_WORDS):
        raise InputImageError(
            f"{path}: the sidecar describes a localizer/scout series ({kind.strip()}); this method "
            "needs the axial head CT series. Remove the localizer from the dataset or filter it "
            "out with --bids-filter-file."
        )
    agent = sidecar.get("ContrastBolusAgent")
    description = text("SeriesDescription", "ProtocolName")
    has_agent = agent not in (None, "", "None", "NONE", "none", "No", "NO")
    if has_agent or any(f" {w} " in f" {description} " or description.startswith(w) for w in CONTRAST_WORDS):
        raise InputImageError(
            f"{path}: the sidecar describes a contrast-enhanced series (ContrastBolusAgent="
            f"{agent!r}, description {description.strip()!r}); the model is trained on "
            "non-contrast CT and would label enhancing vessels as blood. Use the non-contrast series."
        )
    return []


def check_ct(path: str | Path, sidecar: Mapping | None = None) -> CheckResult:
    """Run every input check on a CT file; raise :class:`InputImageError` for errors."""
    img = read_ct(path)
    check_intensities(np.asanyarray(img.dataobj), path)
    warnings = check_geometry(img, path)
    warnings += check_sidecar(sidecar or {}, path)
    return CheckResult(img, tuple(warnings))
