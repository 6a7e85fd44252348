"""ANTs registration (ANTsPy) of a CT brain to the CT template, and warping between spaces."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from .geometry import LPS_TO_RAS, ants_affine_to_ras, resample, world_aligned_grid

#: ANTs registration runs on one ITK thread: with a fixed seed it then gives the same transform
#: on every run. Two threads are 2-3x faster but moved the template's brain by 0.6-4.6 mm on
#: average between identical runs (docs/benchmarks.md). ITK reads this once, at its first
#: multithreaded call in a process, so it is set when this module is imported, before any
#: ANTs work.
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

#: Isotropic spacing (mm) of the images handed to ANTs. The template is 1 mm, but an affine
#: fit converges to the same solution on 2 mm images in a fraction of the time.
REGISTRATION_SPACING_MM = 2.0


def _to_ants(data: np.ndarray, affine: np.ndarray):
    """Wrap an array on an axis-aligned RAS grid (diagonal positive affine) as an ANTs image."""
    import ants

    spacing = np.diag(affine)[:3]
    if not np.allclose(affine[:3, :3], np.diag(spacing)) or np.any(spacing <= 0):
        raise ValueError("_to_ants expects an axis-aligned RAS grid")
    origin_lps = (LPS_TO_RAS @ affine)[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in origin_lps),
        spacing=tuple(float(v) for v in spacing),
        direction=np.diag([-1.0, -1.0, 1.0]),
    )


def register_to_template(
    ct: np.ndarray,
    ct_affine: np.ndarray,
    brain_mask: np.ndarray,
    template_file: str | Path,
    out_transform: str | Path,
    transform_type: str = "Affine",
    seed: int = 1,
) -> dict:
    """Register the brain of a CT (in HU) to a skull-stripped CT template.

    The brain is cut out (outside set to 0 HU, as in the template), resampled to a
    2 mm axis-aligned grid so that ANTs sees an orthonormal image whatever the scan's tilt,
    and registered with ANTs (``transform_type``: ``"Rigid"`` or ``"Affine"``, Mattes
    mutual information). Writes the ANTs transform (template -> scan points, ITK ``.mat``)
    to ``out_transform`` and returns ``{"transform": path, "template_to_scan": 4x4 RAS}``.
    """
    import ants

    # ANTsPy (0.6) ignores a random_seed argument; its global seed is what reaches
    # antsRegistration (--random-seed), which makes the random metric sampling repeatable.
    ants.config._random_seed = int(seed)
    shape, grid = world_aligned_grid(brain_mask, ct_affine, REGISTRATION_SPACING_MM)
    brain = np.where(brain_mask, np.clip(ct, 0.0, 100.0), 0.0).astype(np.float32)
    moving = _to_ants(resample(brain, ct_affine, shape, grid), grid)
    fixed = ants.image_read(str(template_file))
    fixed = ants.resample_image(fixed, (REGISTRATION_SPACING_MM,) * 3, use_voxels=False, interp_type=0)
    workdir = tempfile.mkdtemp(prefix="ichseg-reg-")
    try:
        result = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform=transform_type,
            outprefix=str(Path(workdir) / "reg_"),
            aff_metric="mattes",
            aff_iterations=(1000, 500, 250),
            aff_shrink_factors=(4, 2, 1),
            aff_smoothing_sigmas=(2, 1, 0),
        )
        shutil.copyfile(result["fwdtransforms"][0], out_transform)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"transform": Path(out_transform), "template_to_scan": ants_affine_to_ras(out_transform)}


def warp_to_template(
    data: np.ndarray,
    affine: np.ndarray,
    template_img: nib.Nifti1Image,
    template_to_scan: np.ndarray,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a scan-space array onto the template grid."""
    return resample(data, affine, template_img.shape[:3], template_img.affine, template_to_scan, order, cval)


def warp_to_scan(
    data: np.ndarray,
    template_affine: np.ndarray,
    scan_shape: tuple[int, int, int],
    scan_affine: np.ndarray,
    template_to_scan: np.ndarray,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a template-space array (3D or channels-first 4D) onto the scan's own grid."""
    scan_to_template = np.linalg.inv(template_to_scan)
    return resample(data, template_affine, scan_shape, scan_affine, scan_to_template, order, cval)
