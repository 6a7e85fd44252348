"""Input checks of a head CT: each problem is an error (the scan is skipped with its reason)
or a warning (the scan runs and its report flags it).

Every message names the file, says what is wrong and what to do. The thresholds are
module constants so that they are documented in one place (see docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from ichseg.pipeline.geometry import shear_degrees, slice_geometry, voxel_sizes

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
#: Air is about -1000 HU. A head CT in HU has air around the head unless it was skull-stripped
#: onto a background of 0; an image with less than this fraction of voxels at or below
#: AIR_HU is checked for a display-window export.
AIR_HU, MIN_AIR_FRACTION = -500.0, 0.01
#: Without air, the median of the positive voxels of a CT in HU is brain (20-45 HU); above
#: this, the values are display grey levels (an 8-bit brain window puts brain at 80-140).
MAX_TISSUE_MEDIAN_HU = 80.0
#: Bone and denser (HU): a head CT is mostly air and soft tissue, so more than this fraction
#: of voxels that dense means inverted or non-HU values (the test heads have 5-8 %).
BONE_HU, MAX_BONE_FRACTION = 300.0, 0.4
#: A scan without air but with more bone-dense voxels than this is a head with its skull in
#: display grey levels, not a skull-stripped scan in HU (deepbleed-brain: 0.00006 %).
MIN_SKULL_FRACTION = 0.005
#: Head tissue: voxels from this HU up (skin, fat, brain, bone), excluding an exact-zero
#: background; a slice holds head when its tissue covers at least HEAD_SLICE_AREA_MM2.
HEAD_TISSUE_HU, HEAD_SLICE_AREA_MM2 = -300.0, 1000.0
#: Head extent from inferior to superior below which the field of view cuts the brain (an
#: adult brain spans about 120-150 mm; the test heads cover 112-165 mm): warning, and the
#: volumes are lower bounds.
MIN_HEAD_COVERAGE_MM = 100.0
#: gzip files start with these two bytes.
GZIP_MAGIC = b"\x1f\x8b"
#: Words in DICOM-derived sidecar fields that mark a series this method must not run on.
LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM", "SURVIEW")
CONTRAST_WORDS = ("CONTRAST", "CTA", "ANGIO", "C+", "POST")


class InputImageError(ValueError):
    """A scan that cannot be processed; the message names the file, the problem and a fix."""


@dataclass(frozen=True)
class CheckResult:
    """What the checks found: the image as loaded (3D, float32), the warnings and the measures
    (``head_coverage_mm``) that go into the QC columns."""

    image: nib.Nifti1Image
    warnings: tuple[str, ...]
    measures: Mapping[str, float] = field(default_factory=dict)


def read_ct(path: str | Path) -> nib.Nifti1Image:
    """Read a NIfTI file as one 3D float32 volume; unreadable or non-3D files are errors."""
    path = Path(path)
    if path.is_dir():
        raise InputImageError(folder_message(path))
    if path.name.endswith(".gz") and _leading_bytes(path, 2) not in (GZIP_MAGIC, b""):
        raise InputImageError(
            f"{path}: the file is not gzip-compressed although its name ends in .gz: rename it "
            f"to {path.name[:-3]} (or compress it with gzip)."
        )
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        if data.dtype.kind not in "biuf":  # complex or RGB voxels
            raise TypeError(f"voxel type {data.dtype} is not a grey-level image")
        data = np.asarray(data, dtype=np.float32) if data.ndim in (3, 4) else data
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


def folder_message(path: str | Path) -> str:
    """The error for a folder where a CT image should be."""
    return (f"{path}: this is a folder, not a NIfTI file. Put the CT image itself at this path "
            "(convert the DICOM series with dcm2niix) or remove the folder.")


def _leading_bytes(path: Path, n: int) -> bytes:
    with open(path, "rb") as fobj:
        return fobj.read(n)


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
    dense = np.count_nonzero(data > BONE_HU) / data.size
    if dense > MAX_BONE_FRACTION:
        raise InputImageError(
            f"{path}: not Hounsfield units: {dense:.0%} of the voxels are denser than {BONE_HU:g}, "
            "as dense as bone, where a head CT in HU is mostly air (-1000 HU) and soft tissue "
            "(0-80 HU). The values look inverted or rescaled; re-export the scan from the DICOM "
            "series in HU (dcm2niix does this by default)."
        )
    air = np.count_nonzero(data <= AIR_HU) / data.size
    if air < MIN_AIR_FRACTION:
        positive = data[data > 0]
        tissue = float(np.median(positive)) if positive.size else 0.0
        eight_bit = low >= 0 and high == 255 and np.array_equal(data, np.round(data))
        # skull-stripped scans have no air but no bone either
        if eight_bit or tissue > MAX_TISSUE_MEDIAN_HU or dense > MIN_SKULL_FRACTION:
            raise InputImageError(
                f"{path}: not Hounsfield units: there is no air (no voxel at -1000 HU) around a head "
                f"with {dense:.0%} of bone-dense voxels; values run from {low:g} to {high:g} and "
                f"the tissue sits at {tissue:g}, where brain would be 20-45 HU. This looks like a "
                "display-window (e.g. 8-bit) export. Re-export the scan from the DICOM series in "
                "HU (dcm2niix does this by default)."
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


def head_coverage_mm(data: np.ndarray, affine: np.ndarray) -> float:
    """Extent (mm) from inferior to superior of the slices that hold head tissue.

    Slices are taken along the voxel axis closest to the scanner's inferior-superior axis; a
    slice holds head when its voxels of at least HEAD_TISSUE_HU (an exact-zero background
    excluded) cover HEAD_SLICE_AREA_MM2.
    """
    axis, edges, _ = slice_geometry(affine)
    in_plane_mm2 = float(np.linalg.norm(np.cross(edges[0], edges[1])))
    tissue = (data >= HEAD_TISSUE_HU) & (data != 0)
    other = tuple(i for i in range(3) if i != axis)
    area = np.count_nonzero(tissue, axis=other) * in_plane_mm2
    slices = np.flatnonzero(area >= HEAD_SLICE_AREA_MM2)
    if slices.size == 0:
        return 0.0
    return float((slices[-1] - slices[0] + 1) * abs(affine[2, axis]))


def check_coverage(img: nib.Nifti1Image) -> tuple[list[str], dict[str, float]]:
    """Warning when the field of view holds less than a whole head, and the measured extent."""
    coverage = head_coverage_mm(np.asanyarray(img.dataobj), img.affine)
    warnings = []
    if coverage < MIN_HEAD_COVERAGE_MM:
        warnings.append(
            f"incomplete head coverage: the scan holds {coverage:.0f} mm of head from inferior to "
            f"superior (a whole brain spans about 120-150 mm; below {MIN_HEAD_COVERAGE_MM:g} mm "
            "the field of view cuts it). Hemorrhage outside the field of view is not counted: "
            "the volumes are lower bounds. Use the full axial series if there is one."
        )
    return warnings, {"head_coverage_mm": coverage}


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
    coverage_warnings, measures = check_coverage(img)
    return CheckResult(img, tuple(warnings + coverage_warnings), measures)
