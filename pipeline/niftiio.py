"""Writing NIfTI outputs on a reference image's grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def save_like(data: np.ndarray, reference: nib.Nifti1Image, out_file: str | Path, affine=None) -> Path:
    """Save :func:`image_like` ``(data, reference, affine)`` to ``out_file``."""
    nib.save(image_like(data, reference, affine), str(out_file))
    return Path(out_file)


def image_like(data: np.ndarray, reference: nib.Nifti1Image, affine=None) -> nib.Nifti1Image:
    """``data`` as an image with the reference's grid (affine and both sform/qform codes).

    The header is rebuilt rather than copied so that the reference's intensity scaling
    (``scl_slope``) and data type never leak into label maps or probabilities. A sheared
    affine (gantry tilt) is kept exactly in the sform; the qform gets nibabel's closest fit.
    """
    affine = reference.affine if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data), affine)
    header = reference.header if isinstance(reference, nib.Nifti1Image) else None
    sform_code = int(header["sform_code"]) if header is not None and header["sform_code"] > 0 else 1
    qform_code = int(header["qform_code"]) if header is not None and header["qform_code"] > 0 else 1
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    if header is not None:
        img.header.set_xyzt_units(*header.get_xyzt_units())
    return img
