"""Geometry in one place: voxel grids, affine transforms between spaces, and resampling.

Every affine here is a 4x4 matrix in world RAS millimetres (the NIfTI/nibabel convention).
ANTs (ITK) works in LPS; :func:`ants_affine_to_ras` converts its affine transform files.
Resampling is done with :func:`scipy.ndimage.map_coordinates` on the voxel centres of the
target grid, so sheared grids (gantry tilt as written by dcm2niix) are handled exactly,
which ITK's orthonormal image directions cannot represent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

#: RAS <-> LPS flip (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (absolute determinant of the affine's 3x3 part)."""
    return float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm (norms of the affine's columns)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def shear_degrees(affine: np.ndarray) -> float:
    """Largest deviation from 90 degrees between two voxel axes (0 for orthogonal grids).

    A gantry-tilted CT converted without tilt correction has a sheared affine: its slice
    axis is not perpendicular to the in-plane axes.
    """
    axes = np.asarray(affine)[:3, :3] / np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    worst = 0.0
    for i in range(3):
        for j in range(i + 1, 3):
            cosine = abs(float(axes[:, i] @ axes[:, j]))
            worst = max(worst, 90.0 - np.degrees(np.arccos(min(cosine, 1.0))))
    return worst


def ants_affine_to_ras(transform_file: str | Path) -> np.ndarray:
    """Read an ANTs/ITK affine transform file and return it as a 4x4 RAS point mapping.

    ANTs registration writes the transform that maps points of the *fixed* (template)
    space to the *moving* (scan) space, in LPS coordinates, as ``A (x - c) + t + c``.
    The returned matrix maps template RAS points to scan RAS points.
    """
    import ants  # local import: antspyx is heavy and only needed here

    transform = ants.read_transform(str(transform_file))
    params = np.asarray(transform.parameters, dtype=float)
    center = np.asarray(transform.fixed_parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + center - matrix @ center
    return LPS_TO_RAS @ lps @ LPS_TO_RAS


def resample(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    target_to_source: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
    chunk_voxels: int = 4_000_000,
) -> np.ndarray:
    """Sample ``data`` (3D, or 4D with channels first) on the voxel centres of a target grid.

    ``target_to_source`` maps target-space RAS points to source-space RAS points (identity
    when both grids live in the same world space). Points outside the source grid get
    ``cval``. The work is done in chunks of target voxels to bound memory: full-size
    coordinate arrays of a 512x512x40 grid would take about 250 MB.
    """
    mapping = np.linalg.inv(source_affine) @ (
        np.eye(4) if target_to_source is None else target_to_source
    ) @ target_affine
    channels = data[None] if data.ndim == 3 else data
    out = np.full((channels.shape[0],) + tuple(target_shape), cval, dtype=np.float32)
    # Only target voxels that can land on the source grid are sampled (the rest is cval):
    # a brain-sized source warped onto a whole-head scan covers a fraction of it.
    (x0, x1), (y0, y1), (z_lo, z_hi) = _target_box(mapping, channels.shape[1:], target_shape)
    nx, ny = x1 - x0, y1 - y0
    if nx <= 0 or ny <= 0 or z_hi <= z_lo:
        return out[0] if data.ndim == 3 else out
    slab = max(1, chunk_voxels // max(1, nx * ny))
    ii, jj = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), indexing="ij")
    for z0 in range(z_lo, z_hi, slab):
        z1 = min(z_hi, z0 + slab)
        kk = np.arange(z0, z1)
        grid = np.stack(
            [
                np.broadcast_to(ii[..., None], (nx, ny, z1 - z0)),
                np.broadcast_to(jj[..., None], (nx, ny, z1 - z0)),
                np.broadcast_to(kk[None, None, :], (nx, ny, z1 - z0)),
            ]
        ).reshape(3, -1)
        coords = mapping[:3, :3] @ grid + mapping[:3, 3:4]
        _snap_to_edges(coords, channels.shape[1:])
        for c, channel in enumerate(channels):
            out[c, x0:x1, y0:y1, z0:z1] = ndimage.map_coordinates(
                channel, coords, order=order, mode="constant", cval=cval, prefilter=False
            ).reshape(nx, ny, z1 - z0)
    return out[0] if data.ndim == 3 else out


def _target_box(mapping: np.ndarray, source_shape, target_shape) -> list[tuple[int, int]]:
    """Per axis, the [start, stop) target voxels whose points can fall on the source grid.

    ``mapping`` takes target voxel indices to source voxel indices. The corners of the source
    grid grown by one voxel are mapped back to the target; an affine map keeps every source
    point inside their hull, so target voxels outside the box sample nothing but ``cval``.
    """
    corners = np.array(np.meshgrid(*[(-1.0, n) for n in source_shape], indexing="ij")).reshape(3, -1)
    back = np.linalg.inv(mapping)
    points = back[:3, :3] @ corners + back[:3, 3:4]
    return [
        (int(max(0, np.floor(points[a].min()) - 1)), int(min(target_shape[a], np.ceil(points[a].max()) + 2)))
        for a in range(3)
    ]


#: Voxel coordinates this close outside the source grid count as on its edge.
_EDGE_TOLERANCE = 1e-4


def _snap_to_edges(coords: np.ndarray, shape: tuple[int, ...]) -> None:
    """Move coordinates that miss the grid's first/last voxel by rounding error onto it.

    ``inv(source) @ target`` of non-diagonal affines carries ~1e-15 errors, and scipy's
    ``mode="constant"`` treats a coordinate of -1e-15 as outside the image.
    """
    for axis, size in enumerate(shape):
        c = coords[axis]
        c[(c < 0) & (c > -_EDGE_TOLERANCE)] = 0.0
        last = size - 1
        c[(c > last) & (c < last + _EDGE_TOLERANCE)] = last


def world_aligned_grid(
    mask: np.ndarray, affine: np.ndarray, spacing: float, margin_mm: float = 10.0
) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned RAS grid with isotropic ``spacing`` that covers the true voxels of ``mask``.

    Used to hand ANTs an orthonormal image whatever the scan's own grid (tilted, sheared,
    anisotropic), and small enough to register quickly.
    """
    ijk = np.argwhere(mask)
    if ijk.size == 0:
        raise ValueError("cannot build a grid around an empty mask")
    corners = np.array([ijk.min(0), ijk.max(0)], dtype=float)
    box = np.array(np.meshgrid(*corners.T, indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ box + affine[:3, 3:4]
    low = world.min(1) - margin_mm
    high = world.max(1) + margin_mm
    shape = tuple(int(np.ceil((h - l) / spacing)) + 1 for l, h in zip(low, high))
    grid_affine = np.diag([spacing, spacing, spacing, 1.0])
    grid_affine[:3, 3] = low
    return shape, grid_affine
