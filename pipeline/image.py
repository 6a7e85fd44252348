"""Loading and checking head CT images, and putting them in a standard orientation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.pipeline.checks import CheckResult, InputImageError, check_ct

__all__ = ["InputImageError", "check_ct", "conform_ct", "load_ct", "to_source_orientation"]


def load_ct(path: str | Path, sidecar: dict | None = None) -> nib.Nifti1Image:
    """Load a head CT after every input check (see :mod:`ichseg.pipeline.checks`).

    Raises :class:`InputImageError` with an actionable message for unusable input.
    """
    return check_ct(path, sidecar).image


def conform_ct(in_file: str | Path, out_file: str | Path, sidecar: dict | None = None) -> CheckResult:
    """Check a CT, reorient it to the closest RAS axes, save it as float32; return what the
    checks found (warnings and measures; its ``image`` is the unreoriented input).

    Reorientation only permutes and flips voxel axes (no interpolation), so a shear from
    gantry tilt is kept in the affine and handled downstream by :mod:`ichseg.pipeline.geometry`.
    """
    checked = check_ct(in_file, sidecar)
    img = nib.as_closest_canonical(checked.image)
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    nib.save(out, str(out_file))
    return checked


def to_source_orientation(data: np.ndarray, conformed_affine: np.ndarray, source_img) -> np.ndarray:
    """Undo :func:`conform_ct`'s axis reordering: bring a conformed-grid array to the source grid."""
    from_ornt = nib.orientations.io_orientation(conformed_affine)
    to_ornt = nib.orientations.io_orientation(source_img.affine)
    transform = nib.orientations.ornt_transform(from_ornt, to_ornt)
    return nib.orientations.apply_orientation(data, transform)
