"""Intracranial ("brain") extraction of a non-contrast head CT in Hounsfield units.

Pure numpy/scipy, in the spirit of CT_BET (Muschelli et al., NeuroImage 2015) without FSL:

1. Label the voxels that can never be intracranial soft tissue: bone (> 300 HU), air
   (< -200 HU) and, for scans that arrive already skull-stripped, the constant fill value
   that replaced the skull.
2. Work on a grid downsampled by integer blocks to 1.4-1.8 mm in-plane (and about 3 mm
   through-plane for thin slices): soft tissue = block mean in (-10, 120) HU with no barrier
   voxel in the block, which also keeps partial-volume bone out.
3. Erode by 6 mm (a Euclidean distance in mm, so anisotropic voxels are handled exactly) to
   cut the thin soft-tissue bridges through the skull foramina, keep the largest connected
   component, grow it back by the same distance inside the soft tissue and keep only what
   is connected to the core.
4. Fill holes in 3D and per axial slice (ventricles, hematomas, calcifications), drop the
   spinal canal below the foramen magnum, upsample, and add back the thin full-resolution
   rim between the coarse mask and the inner table of the skull.

Everything is done in voxel space with the voxel sizes in mm; the affine (tilt, shear,
obliquity) is not needed as long as the third axis is roughly inferior -> superior.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# Tissue thresholds (HU). Hematoma is 50-90 HU and can reach ~100 with a high hematocrit, so
# the soft-tissue ceiling sits above it; partial volume with bone is caught by BONE_HU, which
# is applied per full-resolution voxel before downsampling.
BONE_HU = 300.0
AIR_HU = -200.0
SOFT_LO_HU = -10.0
SOFT_HI_HU = 120.0
RIM_LO_HU = -50.0

EROSION_MM = 6.0  # 4 mm already leaks into the temporalis muscles on real scans; 6 has margin
RIM_MM = 2.0
# Coarse grid for the morphology: ~10x fewer voxels on a 0.5 mm scan, still fine enough to
# keep the skull-base foramina apart. 0.45-0.6 mm scans get 3x3 blocks, 0.9 mm ones 2x2.
TARGET_INPLANE_MM = 1.8
TARGET_THROUGHPLANE_MM = 3.0

MIN_FILL_FRACTION = 0.1  # a single exact value this common is a fill value, not tissue
# Below the foramen magnum the mask is a single blob of a few cm^2 (cord, CSF, canal).
CANAL_MAX_AREA_CM2 = 12.0
MIN_BLOB_CM2 = 0.5
SKULL_MIN_ML = 1.0


def extract_brain(hu: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """Return a boolean intracranial mask (brain + CSF + ventricles + any intracranial blood,
    including extra-axial/subdural blood between brain and skull) of a 3D head CT in Hounsfield units.

    ``hu`` is indexed (x, y, z) with z roughly inferior -> superior (RAS-like, as after
    ``nibabel.as_closest_canonical``); ``voxel_size`` is in mm. Works on scans with skull,
    on scans that were already skull-stripped (outside set to a constant such as 0 or
    -1024), on gantry-tilted (sheared) grids and on thick slices.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {hu.shape}")
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or min(vs) <= 0:
        raise ValueError(f"voxel_size must be three positive sizes in mm, got {voxel_size}")
    hu = np.nan_to_num(hu, nan=-1024.0, posinf=3071.0, neginf=-1024.0)

    fill = _fill_value(hu)
    barrier = _barrier(hu, fill)
    factors = _downsample_factors(vs)
    spacing = tuple(v * f for v, f in zip(vs, factors))

    barrier_ds = _block_reduce(barrier, factors, np.any)
    hu_ds = _block_reduce(hu, factors, np.mean)
    soft = (hu_ds > SOFT_LO_HU) & (hu_ds < SOFT_HI_HU) & ~barrier_ds
    coarse = _coarse_intracranial(soft, barrier_ds, spacing)
    coarse = _trim_spinal_canal(coarse, spacing)

    mask = _upsample(coarse, factors, hu.shape)
    return _add_rim(mask, hu, fill, vs)


def _fill_value(hu):
    """Constant that replaced skull/background (a skull-stripped scan), or None.

    A value that covers at least 10% of the volume exactly is a fill, not tissue (real tissue
    spreads over tens of HU). Only fills that would pass for soft tissue matter: air-like
    fills (-1024, -1500) are barriers anyway.
    """
    vals, counts = np.unique(hu[::4, ::4, :], return_counts=True)
    value, frac = float(vals[np.argmax(counts)]), counts.max() / counts.sum()
    if frac < MIN_FILL_FRACTION or not AIR_HU <= value <= BONE_HU:
        return None
    return value


def _barrier(hu, fill):
    """Full-resolution voxels that cannot be intracranial soft tissue."""
    barrier = (hu > BONE_HU) | (hu < AIR_HU)
    if fill is not None:
        barrier |= hu == fill
    return barrier


def _downsample_factors(vs):
    """Integer block sizes for a grid of at most 1.8 x 1.8 x 3 mm (1 where voxels are coarser)."""
    fxy = max(1, int(np.floor(TARGET_INPLANE_MM / min(vs[0], vs[1]) + 1e-6)))
    fz = max(1, int(np.floor(TARGET_THROUGHPLANE_MM / vs[2] + 1e-6)))
    return (fxy, fxy, fz)


def _block_reduce(a, factors, func):
    """Reduce non-overlapping blocks (edge-padded to a multiple of the block size) with func."""
    if factors == (1, 1, 1):
        return a
    pad = [(0, (-n) % f) for n, f in zip(a.shape, factors)]
    if any(p for _, p in pad):
        a = np.pad(a, pad, mode="edge")
    (nx, ny, nz), (fx, fy, fz) = a.shape, factors
    return func(a.reshape(nx // fx, fx, ny // fy, fy, nz // fz, fz), axis=(1, 3, 5))


def _upsample(mask, factors, shape):
    """Nearest-neighbour inverse of _block_reduce, cropped to the original shape."""
    for axis, f in enumerate(factors):
        if f > 1:
            mask = np.repeat(mask, f, axis=axis)
    return mask[: shape[0], : shape[1], : shape[2]]


def _erode(mask, radius_mm, spacing):
    """Erosion by a ball of radius_mm (in mm, so anisotropic voxels are exact)."""
    return ndi.distance_transform_edt(mask, sampling=spacing) > radius_mm


def _dilate(mask, radius_mm, spacing):
    """Dilation by a ball of radius_mm (in mm)."""
    return ndi.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def _largest_component(mask):
    """Largest 6-connected component (empty in, empty out)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


def _components_touching(mask, seed):
    """Connected components of mask that overlap seed."""
    lab, _ = ndi.label(mask)
    keep = np.unique(lab[seed & mask])
    return np.isin(lab, keep[keep > 0])


def _large_components(mask, min_voxels):
    """Connected components of at least min_voxels voxels."""
    lab, _ = ndi.label(mask)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return (sizes >= min_voxels)[lab]


def _fill_holes(mask):
    """Fill holes in 3D, then per axial slice (catches cavities open through a cut slice)."""
    mask = ndi.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndi.binary_fill_holes(mask[:, :, z])
    return mask


def _coarse_intracranial(soft, barrier, spacing):
    """Erode -> largest component -> grow back inside soft tissue -> fill holes (coarse grid)."""
    core = _largest_component(_erode(soft, EROSION_MM, spacing))
    if not core.any():
        return core
    # Grow one voxel further than the erosion so the surface is fully recovered.
    grown = _dilate(core, EROSION_MM + max(spacing[:2]), spacing) & soft
    # Growing is Euclidean and crosses thin bone: keep only what is connected to the core.
    brain = _fill_holes(_components_touching(grown, core))
    # Hole filling may close a slice-wise ring around skull-base bone; remove the skull
    # (large bone components) again but keep small calcifications (pineal, plexus) inside.
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return brain & ~_large_components(barrier, SKULL_MIN_ML / voxel_ml)


def _trim_spinal_canal(mask, spacing):
    """Clear the inferior run of slices holding one small blob (the canal below the foramen magnum)."""
    pix_cm2 = spacing[0] * spacing[1] / 100.0
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    if zs.size == 0:
        return mask
    for z in range(zs[0], zs[-1] + 1):
        sl = mask[:, :, z]
        if sl.sum() * pix_cm2 >= CANAL_MAX_AREA_CM2:
            break
        lab, _ = ndi.label(sl)
        blobs = np.bincount(lab.ravel())[1:] * pix_cm2
        # Two or more blobs (e.g. frontal lobe and medulla on a tilted slice) is brain: stop.
        if np.count_nonzero(blobs >= MIN_BLOB_CM2) > 1:
            break
        mask[:, :, z] = False
    return mask


def _add_rim(mask, hu, fill, vs):
    """Add the full-resolution partial-volume rim (<= RIM_MM) between the coarse mask and bone."""
    kx, ky, kz = (2 * int(round(RIM_MM / v)) + 1 for v in vs)
    if max(kx, ky, kz) == 1 or not mask.any():
        return mask
    # A box (separable max filter) is much faster than a ball at full resolution and the
    # difference over 2 mm is below a voxel.
    rim = ndi.maximum_filter(mask, size=(kx, ky, kz)) & ~mask
    rim &= (hu > RIM_LO_HU) & (hu < BONE_HU)
    if fill is not None:
        rim &= hu != fill
    # Rim voxels that touch the mask only diagonally through bone would be loose specks.
    return _components_touching(mask | rim, mask)
