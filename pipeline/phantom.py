"""Synthetic non-contrast head CT with known ground truth, for tests and the demo dataset.

The phantom is built in world (RAS, mm) space and then sampled on the voxel grid given by a
scanner-like affine, so that a gantry tilt (a sheared affine) gives a sheared head in voxel
space exactly as a real tilted acquisition does, while the anatomy in world space stays the
same. Layers, from the inside out: brain (grey/white texture, deep grey nuclei, lateral
ventricles, sulcal CSF), a thin CSF rim, skull (inner/outer table with diploe), scalp, air.
Below the skull there is a neck with a spinal canal that enters the head through a foramen
magnum, and two orbits in front: structures that a brain mask must leave out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.geometry import voxel_volume_ml

# Intracranial ellipsoid semi-axes (L-R, A-P, I-S) in mm: an adult intracranial cavity of
# about 140 x 170 x 120 mm, i.e. about 1.5 L.
ICV_SEMI_AXES_MM = (70.0, 85.0, 60.0)
# World position of the intracranial centre: roughly where an MNI-space head has it.
HEAD_CENTRE_RAS = (0.0, -18.0, 10.0)
SKULL_MM = 7.0
SCALP_MM = 4.0
CSF_RIM_MM = 1.5
TOP_MARGIN_MM = 5.0

HU_AIR = -1000.0
HU_FAT = -90.0
HU_CSF = 5.0
HU_WHITE = 27.0
HU_GREY = 38.0
HU_DEEP_GREY = 35.0
HU_SCALP = 35.0
HU_MUSCLE = 45.0
HU_VITREOUS = 10.0
HU_BLOOD = 70.0
HU_TABLE = 1500.0
HU_DIPLOE = 800.0
HU_VERTEBRA = 700.0
NOISE_HU = 5.0


@dataclass
class HeadPhantom:
    """A synthetic head CT (HU, int16) with its affine and ground-truth masks."""

    data: np.ndarray  # int16 HU
    affine: np.ndarray  # 4x4, voxel -> RAS mm (scanner-like LAS orientation)
    brain_mask: np.ndarray  # bool, intracranial truth
    hemorrhage_mask: np.ndarray  # bool, truth
    voxel_size: tuple[float, float, float]  # column norms of the affine (the header zooms)

    @property
    def voxel_ml(self) -> float:
        """Physical volume of one voxel in mL: |det| of the affine, < prod(voxel_size) if tilted."""
        return voxel_volume_ml(self.affine)


def phantom_affine(voxel_size, shape, tilt_deg=0.0) -> np.ndarray:
    """Scanner-like LAS affine that puts the phantom's intracranial centre at HEAD_CENTRE_RAS.

    A gantry tilt is written the way dcm2niix writes an uncorrected tilted series (compare
    ``ge-head_ct``): the image plane is tilted about the L-R axis, so the in-plane A-P column
    gets an I-S component, while successive slices still step along the table (I-S) axis.
    """
    vx, vy, vz = (float(v) for v in voxel_size)
    t = np.deg2rad(tilt_deg)
    lin = np.array(
        [[-vx, 0.0, 0.0], [0.0, vy * np.cos(t), 0.0], [0.0, vy * np.sin(t), vz]]
    )
    # The head's top sits TOP_MARGIN_MM below the top slice, like a real head CT that starts
    # at the vertex and runs down to the skull base / upper neck.
    top_mm = ICV_SEMI_AXES_MM[2] + SKULL_MM + SCALP_MM + TOP_MARGIN_MM
    kc = (shape[2] - 1) - top_mm / vz if shape[2] * vz > top_mm else (shape[2] - 1) / 2
    ref_vox = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, kc])
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = np.asarray(HEAD_CENTRE_RAS) - lin @ ref_vox
    return affine


def _world_grid(affine, shape):
    """Head-centred world coordinates (mm, float32) of every voxel centre."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    lin = affine[:3, :3].astype(np.float32)
    off = (affine[:3, 3] - np.asarray(HEAD_CENTRE_RAS)).astype(np.float32)
    # Each world axis is a sum of per-axis terms: build it by broadcasting, no big matmul.
    return [
        lin[a, 0] * i[:, None, None]
        + lin[a, 1] * j[None, :, None]
        + lin[a, 2] * k[None, None, :]
        + off[a]
        for a in range(3)
    ]


def _radial_depth(x, y, z, semi_axes, wobble=None):
    """Signed distance (mm, along the ray from the centre) to an ellipsoid surface; > 0 outside."""
    a, b, c = semi_axes
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2) + 1e-6
    if wobble is not None:
        rho = rho / wobble
    return np.sqrt(x * x + y * y + z * z) * (1.0 - 1.0 / rho)


def _shape_wobble(x, y, z):
    """Low-order smooth bumps of the intracranial surface (a head is not a perfect ellipsoid)."""
    r = np.sqrt(x * x + y * y + z * z) + 1e-6
    ux, uy, uz = x / r, y / r, z / r
    # Flatter occiput-to-vertex curve, slightly wider posteriorly, temporal bulges.
    return 1.0 + 0.04 * uy * (uz - 0.3) - 0.03 * uy + 0.03 * (ux * ux - 0.3) * (1 - uz * uz)


def _ellipsoid(x, y, z, centre, semi_axes):
    """Normalised ellipsoid radius field: <= 1 inside."""
    return sum(((v - c) / s) ** 2 for v, c, s in zip((x, y, z), centre, semi_axes))


def _box(affine, shape, centre, semi_axes):
    """Voxel-index slices that cover a head-centred ellipsoid (so small structures cost little)."""
    extent = [(c - a, c + a) for c, a in zip(centre, semi_axes)]
    corners = np.array(np.meshgrid(*extent)).reshape(3, -1)
    world = corners + np.asarray(HEAD_CENTRE_RAS)[:, None]
    vox = np.linalg.solve(affine[:3, :3], world - affine[:3, 3:4])
    lo = np.clip(np.floor(vox.min(axis=1)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(vox.max(axis=1)).astype(int) + 2, 0, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _paint(target, value, x, y, z, affine, centre, semi_axes, where=None):
    """Set target to value inside a head-centred ellipsoid (optionally only where `where`)."""
    sl = _box(affine, target.shape, centre, semi_axes)
    inside = _ellipsoid(x[sl], y[sl], z[sl], centre, semi_axes) <= 1
    if where is not None:
        inside &= where[sl]
    target[sl][inside] = value


def _smooth_field(rng, shape, voxel_size, grain_mm=4.0):
    """Zero-mean, unit-variance random field smooth on a scale of grain_mm (texture, irregularity).

    Filtered on a ~2 mm grid and interpolated up: much faster on fine grids, same look.
    """
    factors = [max(1, int(2.0 / v)) for v in voxel_size]
    coarse = [int(np.ceil(n / f)) for n, f in zip(shape, factors)]
    sigma = [grain_mm / (v * f) for v, f in zip(voxel_size, factors)]
    f = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma, mode="wrap")
    if any(c != n for c, n in zip(coarse, shape)):
        zoom = [n / c for n, c in zip(shape, coarse)]
        f = ndi.zoom(f, zoom, order=1, grid_mode=True, mode="grid-wrap")
    return (f - f.mean()) / (f.std() + 1e-6)


def _hematoma_mask(x, y, z, inside, hemorrhage_ml, voxel_ml, field):
    """Irregular blob in the left basal ganglia with exactly round(hemorrhage_ml / voxel_ml) voxels.

    The blob is a level set of an ellipsoid radius perturbed by a smooth field; taking the k
    voxels with the lowest level makes the voxel volume exact whatever the grid.
    """
    n = int(round(hemorrhage_ml / voxel_ml))
    if n <= 0:
        return np.zeros(x.shape, dtype=bool)
    # Left putamen/external capsule, relative to the intracranial centre (RAS: left is -x).
    q = _ellipsoid(x, y, z, (-24.0, 16.0, -4.0), (1.0, 1.45, 1.1))
    q = np.sqrt(q) * (1.0 + 0.12 * field)
    q = np.where(inside, q, np.inf)
    if n > np.count_nonzero(inside):
        raise ValueError(f"hemorrhage_ml={hemorrhage_ml} does not fit inside the phantom brain")
    flat = q.ravel()
    cut = np.partition(flat, n - 1)[n - 1]
    mask = q <= cut
    # Ties at the cut (only possible with exactly equal levels) must not change the count.
    if mask.sum() != n:
        idx = np.argsort(flat, kind="stable")[:n]
        mask = np.zeros(flat.shape, dtype=bool)
        mask[idx] = True
        mask = mask.reshape(q.shape)
    return mask


def make_head_phantom(
    voxel_size=(0.9, 0.9, 5.0),
    shape=(256, 256, 32),
    hemorrhage_ml=20.0,
    skull=True,
    tilt_deg=0.0,
    seed=0,
) -> HeadPhantom:
    """Build a synthetic adult head CT with a left basal-ganglia hematoma of the given volume.

    ``skull=False`` gives an already skull-stripped scan: everything outside the intracranial
    truth mask is 0 HU, the way some public datasets are distributed. ``tilt_deg`` shears the
    affine like a gantry tilt. The result is deterministic for a given seed.
    """
    voxel_size = tuple(float(v) for v in voxel_size)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or len(voxel_size) != 3:
        raise ValueError("shape and voxel_size must have three entries")
    if hemorrhage_ml < 0:
        raise ValueError("hemorrhage_ml must be >= 0")
    rng = np.random.default_rng(seed)
    affine = phantom_affine(voxel_size, shape, tilt_deg)
    x, y, z = _world_grid(affine, shape)

    depth = _radial_depth(x, y, z, ICV_SEMI_AXES_MM, _shape_wobble(x, y, z))
    inside = depth <= 0.0
    fld_a = _smooth_field(rng, shape, voxel_size)
    fld_b = _smooth_field(rng, shape, voxel_size)

    hu = np.full(shape, HU_AIR, dtype=np.float32)
    hu[(depth > SKULL_MM) & (depth <= SKULL_MM + SCALP_MM)] = HU_SCALP
    _paint_neck_and_face(hu, x, y, z, depth, affine)
    bone = (depth > 0.0) & (depth <= SKULL_MM)
    # Dense inner and outer tables, softer diploe in between.
    mid = np.abs(depth - SKULL_MM / 2) / (SKULL_MM / 2)
    hu[bone] = (HU_DIPLOE + (HU_TABLE - HU_DIPLOE) * mid**2)[bone]

    # Brain: white matter core, cortical ribbon of varying thickness, sulcal CSF near the
    # surface, deep grey nuclei, lateral ventricles.
    ribbon = depth > -(3.0 + 1.5 * fld_a)
    brain = np.where(ribbon, HU_GREY, HU_WHITE) + 2.0 * fld_b
    for sx in (-1.0, 1.0):
        # Lentiform nucleus, thalamus, lateral ventricle (centre, semi-axes in mm).
        _paint(brain, HU_DEEP_GREY, x, y, z, affine, (22.0 * sx, 16.0, -4.0), (9.0, 18.0, 12.0))
        _paint(brain, HU_DEEP_GREY, x, y, z, affine, (10.0 * sx, -4.0, -2.0), (8.0, 12.0, 10.0))
        _paint(brain, HU_CSF, x, y, z, affine, (9.0 * sx, 6.0, 14.0), (5.0, 28.0, 9.0))
    sulci = (depth > -10.0) & (fld_b > 1.3)
    brain = np.where(sulci | (depth > -CSF_RIM_MM), HU_CSF, brain)
    hu[inside] = brain[inside]

    _paint_foramen_and_canal(hu, x, y, z, depth)

    # Physical voxel volume: on a tilted (sheared) grid it is |det|, not the product of zooms.
    voxel_ml = voxel_volume_ml(affine)
    hem = _hematoma_mask(x, y, z, inside & (depth < -4.0), hemorrhage_ml, voxel_ml, fld_a)
    hu[hem] = HU_BLOOD + 3.0 * fld_b[hem]

    hu += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    if not skull:
        hu[~inside] = 0.0
    data = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return HeadPhantom(
        data=data, affine=affine, brain_mask=inside, hemorrhage_mask=hem, voxel_size=voxel_size
    )


def _paint_neck_and_face(hu, x, y, z, depth, affine):
    """Neck muscle below the head and two orbits (fat around a vitreous globe) in front of it."""
    outside = depth > SKULL_MM + SCALP_MM
    neck = outside & (z < -35.0) & (((x / 55.0) ** 2 + ((y + 10.0) / 60.0) ** 2) <= 1.0)
    hu[neck] = HU_MUSCLE
    outside = depth > SKULL_MM
    for sx in (-1.0, 1.0):
        centre = (32.0 * sx, 90.0, -32.0)
        _paint(hu, HU_FAT, x, y, z, affine, centre, (15.0, 15.0, 13.0), where=outside)
        _paint(hu, HU_VITREOUS, x, y, z, affine, centre, (11.5, 11.5, 11.5), where=outside)


def _paint_foramen_and_canal(hu, x, y, z, depth):
    """Spinal canal (cord in CSF, in a bony ring) that runs up through a hole in the skull base."""
    r = np.sqrt(x * x + (y + 12.0) ** 2)
    below = (z < 0.0) & (depth > 0.0)
    hu[below & (r > 9.0) & (r <= 14.0) & (depth > SKULL_MM)] = HU_VERTEBRA
    hu[below & (r <= 9.0)] = HU_CSF
    hu[below & (r <= 5.0)] = HU_WHITE
