"""Geometry in one place: voxel grids, affine transforms between spaces, and resampling.

Every affine here is a 4x4 matrix in world RAS millimetres (the NIfTI/nibabel convention).
ANTs (ITK) works in LPS; :func:`ants_affine_to_ras` converts its affine transform files.
Resampling is done with :func:`scipy.ndimage.map_coordinates` on the voxel centres of the
target grid, so sheared grids (gantry tilt as written by dcm2niix) are handled exactly,
which ITK's orthonormal image directions cannot represent.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def within_mm(mask: np.ndarray, affine: np.ndarray, mm: float) -> np.ndarray:
    """Voxels within ``mm`` of ``mask`` (the mask included), by the distance between voxel
    centres."""
    return ndimage.distance_transform_edt(~np.asarray(mask, dtype=bool), sampling=voxel_sizes(affine)) <= mm


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the scanner's inferior-superior axis: the axis of the axial
    slices as acquired (gantry tilt included)."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def slice_geometry(affine: np.ndarray) -> tuple[int, np.ndarray, float]:
    """Slice axis, the two in-plane voxel edge vectors (2 x 3, mm) and the distance between
    slice planes (mm), which on a sheared (tilted) grid is less than the voxel edge along the
    slice axis."""
    axis = slice_axis(affine)
    edges = np.asarray(affine, dtype=float)[:3, [i for i in range(3) if i != axis]].T
    in_plane_mm2 = float(np.linalg.norm(np.cross(edges[0], edges[1])))
    spacing = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / in_plane_mm2
    return axis, edges, spacing


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
    The returned matrix maps template RAS points to scan RAS points. The file is ITK's
    MATLAB v4 format (``AffineTransform_<type>_3_3``: the 9 matrix entries row by row, then
    the translation; ``fixed``: the centre), read with SciPy: importing ANTsPy only to
    read 15 numbers cost the step that maps results back seconds.
    """
    from scipy.io import loadmat

    variables = loadmat(str(transform_file))
    names = [k for k in variables if k.startswith(("AffineTransform_", "MatrixOffsetTransformBase_"))]
    if len(names) != 1 or "fixed" not in variables:
        raise ValueError(f"{transform_file}: not an ITK affine transform file (variables: {sorted(variables)})")
    params = np.asarray(variables[names[0]], dtype=float).ravel()
    center = np.asarray(variables["fixed"], dtype=float).ravel()
    if params.size != 12 or center.size != 3:
        raise ValueError(f"{transform_file}: expected a 3D affine transform (12 parameters and a 3D centre)")
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
) -> np.ndarray:
    """Sample ``data`` (3D, or 4D with channels first) on the voxel centres of a target grid.

    ``target_to_source`` maps target-space RAS points to source-space RAS points (identity
    when both grids live in the same world space). Points outside the source grid get
    ``cval``; points that miss its first or last voxel by rounding error count as on it.
    ``order`` is 0 (nearest neighbour) or 1 (linear).
    """
    if order not in (0, 1):
        raise ValueError(f"resample supports interpolation order 0 or 1, not {order}")
    mapping = np.linalg.inv(source_affine) @ (
        np.eye(4) if target_to_source is None else target_to_source
    ) @ target_affine
    channels = data[None] if data.ndim == 3 else data
    out = np.full((channels.shape[0],) + tuple(target_shape), cval, dtype=np.float32)
    # Only target voxels that can land on the source grid are sampled (the rest is cval):
    # a brain-sized source warped onto a whole-head scan covers a fraction of it.
    box = _target_box(mapping, channels.shape[1:], target_shape)
    shape = tuple(hi - lo for lo, hi in box)
    if min(shape) <= 0:
        return out[0] if data.ndim == 3 else out
    corner = np.array([lo for lo, _ in box], dtype=float)
    matrix, offset = mapping[:3, :3], mapping[:3, 3] + mapping[:3, :3] @ corner
    inside = _inside_source(matrix, offset, shape, channels.shape[1:])
    region = tuple(slice(lo, hi) for lo, hi in box)
    for c, channel in enumerate(channels):
        # "nearest" extends the edge values, so that a point a rounding error outside the
        # grid takes the edge's value; points really outside are set to cval below.
        sampled = ndimage.affine_transform(
            channel, matrix, offset, output_shape=shape, order=order, mode="nearest", prefilter=False,
            output=np.float32,
        )
        sampled[~inside] = cval
        out[(c,) + region] = sampled
    return out[0] if data.ndim == 3 else out


def resample_voxel_mean(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    target_to_source: np.ndarray | None = None,
    cval: float = 0.0,
) -> np.ndarray:
    """Like :func:`resample` (linear), but the mean of ``data`` over each target voxel's
    extent rather than its value at the voxel centre.

    Along each target axis whose voxel edge spans more than one source voxel, the voxel is
    sampled at that many evenly spaced points (the midpoint rule): a 5 mm slice of a scan,
    resampled from a 1 mm grid, is the mean of 5 samples 1 mm apart. Of a probability map
    this is the expected share of the voxel that the class fills, which is how a partially
    covered voxel is judged (filled at least half: in the class).
    """
    source_step = min(voxel_sizes(source_affine))
    counts = [max(1, int(round(edge / source_step))) for edge in voxel_sizes(target_affine)]
    total = None
    for offset in np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in counts],
                                       indexing="ij"), axis=-1).reshape(-1, 3):
        shifted = np.asarray(target_affine, dtype=float).copy()
        shifted[:3, 3] += shifted[:3, :3] @ offset
        sampled = resample(data, source_affine, target_shape, shifted, target_to_source, order=1, cval=cval)
        total = sampled if total is None else total + sampled
    return total / float(np.prod(counts))


def _inside_source(matrix: np.ndarray, offset: np.ndarray, shape, source_shape) -> np.ndarray:
    """Which target voxels (of a box of ``shape``) map into the source grid, within
    rounding: source index ``matrix @ ijk + offset`` in [0, n - 1] on every axis.

    Along the last target axis the source index is linear, so each (i, j) row is inside on
    one interval of k, solved per row instead of mapping every voxel.
    """
    nx, ny, nz = shape
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    first = np.full((nx, ny), -np.inf)
    last = np.full((nx, ny), np.inf)
    for axis, size in enumerate(source_shape):
        base = matrix[axis, 0] * ii + matrix[axis, 1] * jj + offset[axis]
        low, high = -_EDGE_TOLERANCE, size - 1 + _EDGE_TOLERANCE
        slope = matrix[axis, 2]
        if abs(slope) < 1e-12:
            first[(base < low) | (base > high)] = np.inf
            continue
        a, b = (low - base) / slope, (high - base) / slope
        first = np.maximum(first, np.minimum(a, b))
        last = np.minimum(last, np.maximum(a, b))
    k = np.arange(nz)
    return (k >= first[..., None]) & (k <= last[..., None])


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


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """The smallest box around the true voxels of ``mask``, grown by ``margin`` voxels per axis
    and kept inside the array; None when the mask is empty."""
    ijk = np.argwhere(mask)
    if ijk.size == 0:
        return None
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    low = np.maximum(ijk.min(0) - margin, 0)
    high = np.minimum(ijk.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def box_affine(affine: np.ndarray, box: Sequence[slice]) -> np.ndarray:
    """The affine of an array cropped to ``box`` from an array with ``affine``."""
    shifted = np.array(affine, dtype=float)
    shifted[:3, 3] = affine[:3, :3] @ np.array([s.start or 0 for s in box[:3]]) + affine[:3, 3]
    return shifted


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
