"""ANTs registration (ANTsPy) of a CT brain to the CT template, and warping between spaces."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.geometry import (
    LPS_TO_RAS,
    ants_affine_to_ras,
    resample,
    resample_voxel_mean,
    world_aligned_grid,
)

#: ANTs registration runs on one ITK thread: with a fixed seed it then gives the same transform
#: on every run. With the earlier schedule two threads were 2-3x faster but moved the
#: template's brain by 0.6-4.6 mm on average between identical runs; with the current one they
#: were no faster (docs/benchmarks.md). ITK reads this once, at its first multithreaded call in
#: a process, so it is set when this module is imported, before any ANTs work.
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


@dataclass(frozen=True)
class RegistrationSettings:
    """The ANTs schedule: grid of the images handed to ANTs and the multi-resolution levels.

    ``sampling_rate`` is the share of the fixed image's voxels at which the Mattes metric is
    evaluated (ANTs ``regular`` sampling with a seeded jitter); 1.0 is every voxel.
    ``metric_margin_mm``: if set, the metric is evaluated only within this distance of the
    template's brain (a fixed-image mask); the rest of the template's box is empty background.
    """

    spacing_mm: float = 3.0
    sampling_rate: float = 0.5
    metric_margin_mm: float | None = 6.0
    iterations: tuple[int, ...] = (1000, 500, 40)
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2, 1, 0)


#: The schedule ichseg uses: 3 mm grids, the metric sampled at half of the voxels within 6 mm
#: of the template's brain, at most 40 iterations at the finest level (where one iteration
#: costs ten times as much as at the level before). Chosen by time and motion consistency on
#: the real CTs against the earlier schedule (docs/benchmarks.md, "Registration").
DEFAULT_REGISTRATION = RegistrationSettings()

#: The earlier schedule (2 mm grids, 20 % sampling of the whole template box), kept for
#: comparison in bench/registration_consistency.py.
PREVIOUS_REGISTRATION = RegistrationSettings(
    spacing_mm=2.0, sampling_rate=0.2, metric_margin_mm=None, iterations=(1000, 500, 250)
)


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
    settings: RegistrationSettings = DEFAULT_REGISTRATION,
) -> dict:
    """Register the brain of a CT (in HU) to a skull-stripped CT template.

    The brain is cut out (outside set to 0 HU, as in the template), resampled to an
    axis-aligned grid of ``settings.spacing_mm`` so that ANTs sees an orthonormal image
    whatever the scan's tilt, and registered with ANTs (``transform_type``: ``"Rigid"``,
    ``"Affine"`` or ``"Translation"``, Mattes mutual information). Writes the ANTs transform
    (template -> scan points, ITK ``.mat``) to ``out_transform`` and returns
    ``{"transform": path, "template_to_scan": 4x4 RAS}``.
    """
    import ants

    # ANTsPy (0.6) ignores a random_seed argument; its global seed is what reaches
    # antsRegistration (--random-seed), which makes the random metric sampling repeatable.
    ants.config._random_seed = int(seed)
    spacing = float(settings.spacing_mm)
    shape, grid = world_aligned_grid(brain_mask, ct_affine, spacing)
    brain = np.where(brain_mask, np.clip(ct, 0.0, 100.0), 0.0).astype(np.float32)
    moving = _to_ants(resample(brain, ct_affine, shape, grid), grid)
    fixed = ants.image_read(str(template_file))
    fixed = ants.resample_image(fixed, (spacing,) * 3, use_voxels=False, interp_type=0)
    fixed_mask = None
    if settings.metric_margin_mm is not None:
        inside = ndi.distance_transform_edt(fixed.numpy() <= 0, sampling=(spacing,) * 3)
        fixed_mask = fixed.new_image_like((inside <= settings.metric_margin_mm).astype(np.float32))
    workdir = tempfile.mkdtemp(prefix="ichseg-reg-")
    try:
        result = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform=transform_type,
            outprefix=str(Path(workdir) / "reg_"),
            aff_metric="mattes",
            aff_random_sampling_rate=float(settings.sampling_rate),
            aff_iterations=tuple(settings.iterations),
            aff_shrink_factors=tuple(settings.shrink_factors),
            aff_smoothing_sigmas=tuple(settings.smoothing_sigmas),
            mask=fixed_mask,
        )
        shutil.copyfile(result["fwdtransforms"][0], out_transform)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"transform": Path(out_transform), "template_to_scan": ants_affine_to_ras(out_transform)}


#: HU given to template voxels outside the scan's field of view: air.
OUTSIDE_FOV_HU = -1000.0


@dataclass(frozen=True)
class AtlasAlignment:
    """A scan's head turned onto the template (:func:`align_for_atlas`)."""

    #: template points -> scan points (4x4 RAS)
    atlas_to_scan: np.ndarray
    #: the CT on the template grid (HU; the registration check)
    aligned_ct: np.ndarray
    #: registration_dice, registration_similarity
    qc: dict


@dataclass(frozen=True)
class TemplateSpace:
    """A scan brought onto the template grid (:func:`to_template_space`)."""

    ct: np.ndarray  # HU; air outside the scan's field of view
    brain_mask: np.ndarray  # bool
    template_to_scan: np.ndarray  # 4x4 RAS affine (template points -> scan points)
    #: the head turned onto the template: this grid itself unless ``template_to_scan`` is a
    #: translation; None when a translation was asked for without it (``atlas=False``)
    atlas: AtlasAlignment | None

    @property
    def qc(self) -> dict:
        return self.atlas.qc if self.atlas else {}


def _warp_with_overlap(ct, ct_affine, brain_mask, template_img, template_mask, template_to_scan,
                       measure: bool = True):
    """CT (HU) and brain mask on the template grid, and how well that brain overlaps the
    template's (:func:`_overlap_qc`; None without ``measure``: a grid that only shifts the
    head says nothing of the registration's quality)."""
    # CT and mask in one pass (the sample coordinates are computed once). Interpolation is
    # linear, so warping CT - OUTSIDE_FOV_HU with fill 0 and adding it back is the CT
    # warped with fill OUTSIDE_FOV_HU.
    channels = np.stack([ct - OUTSIDE_FOV_HU, brain_mask.astype(np.float32), np.ones_like(ct)])
    warped = warp_to_template(channels, ct_affine, template_img, template_to_scan)
    warped_ct, warped_mask = warped[0] + OUTSIDE_FOV_HU, warped[1] >= 0.5
    qc = _overlap_qc(warped_ct, warped_mask, warped[2] >= 0.5,
                     np.asanyarray(template_img.dataobj, dtype=np.float32), template_mask) if measure else None
    return warped_ct, warped_mask, qc


def align_for_atlas(
    ct: np.ndarray,
    ct_affine: np.ndarray,
    brain_mask: np.ndarray,
    template_img: nib.Nifti1Image,
    template_mask: np.ndarray,
    out_transform: str | Path,
    seed: int = 1,
) -> AtlasAlignment:
    """Turn the head onto the template with a rigid registration (written to ``out_transform``):
    what the atlas regions and the overlap QC need when the network's grid keeps the head as
    scanned (a translation). A separate step, so that it can run beside the translation."""
    atlas_to_scan = register_to_template(
        ct, ct_affine, brain_mask, template_img.get_filename(), out_transform, "Rigid", seed,
    )["template_to_scan"]
    aligned_ct, _, qc = _warp_with_overlap(ct, ct_affine, brain_mask, template_img, template_mask, atlas_to_scan)
    return AtlasAlignment(atlas_to_scan, aligned_ct, qc)


def to_template_space(
    ct: np.ndarray,
    ct_affine: np.ndarray,
    brain_mask: np.ndarray,
    template_img: nib.Nifti1Image,
    template_mask: np.ndarray,
    out_transform: str | Path,
    transform_type: str = "Rigid",
    seed: int = 1,
    out_atlas_transform: str | Path | None = None,
    atlas: bool = True,
) -> TemplateSpace:
    """Register a CT's brain to the template (:func:`register_to_template`, which writes the
    transform to ``out_transform``), warp CT and brain mask onto the template grid, and
    measure how well the brains overlap inside the scan's field of view.

    A ``Translation`` leaves the head as scanned on the template grid; the atlas regions and
    the overlap measures need it turned onto the template, so :func:`align_for_atlas` adds a
    rigid registration, written to ``out_atlas_transform`` (unless ``atlas`` is False: the
    workflow runs it as a step of its own). For ``Rigid`` and ``Affine`` the grid is the
    atlas's, and ``out_atlas_transform`` is a copy of ``out_transform``."""
    template_to_scan = register_to_template(
        ct, ct_affine, brain_mask, template_img.get_filename(), out_transform, transform_type, seed,
    )["template_to_scan"]
    shifted_only = transform_type == "Translation"
    warped_ct, warped_mask, qc = _warp_with_overlap(ct, ct_affine, brain_mask, template_img, template_mask,
                                                    template_to_scan, measure=not shifted_only)
    if not shifted_only:
        if out_atlas_transform is not None:
            shutil.copyfile(out_transform, out_atlas_transform)
        alignment = AtlasAlignment(template_to_scan, warped_ct, qc)
    elif not atlas:
        alignment = None
    else:
        with tempfile.TemporaryDirectory(prefix="ichseg-atlas-") as tmp:
            alignment = align_for_atlas(ct, ct_affine, brain_mask, template_img, template_mask,
                                        out_atlas_transform or Path(tmp) / "template_to_scan_rigid.mat", seed)
    return TemplateSpace(warped_ct, warped_mask, template_to_scan, alignment)


def _overlap_qc(warped_ct, warped_mask, in_view, template, template_mask) -> dict:
    """How well a brain turned onto the template overlaps the template's brain."""
    # Compared inside the scan's field of view only: a scan that covers part of the head
    # (flag_head_coverage) is judged on the part it has.
    inside = template_mask & in_view
    both = warped_mask & inside
    return {
        "registration_dice": float(2 * both.sum() / max(1, warped_mask.sum() + inside.sum())),
        "registration_similarity": (
            float(np.corrcoef(np.clip(warped_ct[both], 0, 100), template[both])[0, 1])
            if both.sum() > 10 else 0.0
        ),
    }


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
    voxel_mean: bool = False,
) -> np.ndarray:
    """Resample a template-space array (3D or channels-first 4D) onto the scan's own grid:
    the value at each scan voxel's centre, or with ``voxel_mean`` (linear only) the mean over
    the voxel (:func:`~ichseg.pipeline.geometry.resample_voxel_mean`)."""
    scan_to_template = np.linalg.inv(template_to_scan)
    if voxel_mean:
        if order != 1:
            raise ValueError("voxel_mean resampling is linear (order=1)")
        return resample_voxel_mean(data, template_affine, scan_shape, scan_affine, scan_to_template, cval)
    return resample(data, template_affine, scan_shape, scan_affine, scan_to_template, order, cval)
