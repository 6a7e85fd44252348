"""Real hemorrhage shapes painted into real head CTs: scans whose hematoma volume is known.

A *host* is a real head CT; a *shape* is a real hematoma mask from another scan, on its own
grid (HemSeg-500: RSNA head CT grids, 512 x 512 x N). :func:`insert_lesion` places a shape,
turned and possibly mirrored, in the host's normal brain tissue, at least a margin away from
anything already dense in the host, and paints it with the fraction of each host voxel that it
covers (partial volume), so that the true volume is known to a fraction of a voxel.

The shape is made continuous before it is placed: its mask, linearly interpolated on its own
grid, is the occupancy field, and the lesion is where that field is at least 1/2. That
smooths the staircase of 5 mm slices the way a radiologist's outline would. Each host voxel
is then sampled at sub-voxel points no further apart than :data:`SUBSAMPLE_MM`.

The clot's appearance follows real acute hematomas: a mean density of 55-78 HU (mistie-0034's
clot measures about 65 ± 5 HU in its core), a smooth texture of a few HU, and on some a
hypodense rim of perihematomal oedema. The host's own noise is kept: the clot replaces the
host's local mean, not its noise. Everything is deterministic for a given random generator.

Two kinds of blood need no shape: :func:`insert_ventricular_blood` layers blood in the host's
lateral ventricles up to a level, and :func:`insert_extra_axial_blood` lays a subdural
crescent along the inner table of one hemisphere's convexity.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.stats import median_abs_deviation

from ichseg.pipeline.brain import extract_brain
from ichseg.pipeline.geometry import (
    bounding_box,
    box_affine,
    voxel_sizes,
    voxel_volume_ml,
)
from ichseg.pipeline.labels import EAH_INDEX as EAH
from ichseg.pipeline.labels import IPH_INDEX as IPH
from ichseg.pipeline.labels import IVH_INDEX as IVH
from ichseg.pipeline.labels import OEDEMA_INDEX as OEDEMA


def fraction_entities(abbreviation: str) -> str:
    """How a truth set names a reference's map of the share of each voxel its lesion covers,
    after ``sub-<label>_`` (beside its ``_dseg``; ``ichseg evaluate`` reads only the ``_dseg``)."""
    return f"label-{abbreviation}_desc-fraction_probseg"


#: The fraction map of an intraparenchymal lesion.
FRACTION_ENTITIES = fraction_entities("IPH")
#: Sub-voxel sampling step (mm) of the occupancy of host voxels.
SUBSAMPLE_MM = 0.5
#: Densities (HU) that count as normal brain tissue where a lesion may be placed.
PARENCHYMA_HU = (15.0, 45.0)
#: Density above which host voxels count as already dense (blood, calcification): kept away.
DENSE_HU = 55.0
#: Distance (mm) a lesion keeps from the edge of the intracranial mask and from dense voxels.
EDGE_MARGIN_MM = 4.0
DENSE_MARGIN_MM = 15.0
#: Shares of a lesion's volume that must lie in the allowed region, and on brain tissue
#: (the rest may be CSF).
MIN_ALLOWED = 0.9
MIN_PARENCHYMA = 0.6
#: Densities (HU) of cerebrospinal fluid, and the depth (mm) inside the brain beyond which CSF
#: counts as ventricular rather than sulcal.
CSF_HU = (-5.0, 18.0)
VENTRICLE_DEPTH_MM = 15.0
#: Radius (mm) of the in-plane opening that separates the ventricles from other CSF.
VENTRICLE_OPENING_MM = 2.0
#: Smallest ventricle (mL of the largest connected part of deep CSF) that receives blood.
MIN_VENTRICLE_ML = 1.0


@dataclass(frozen=True)
class Shape:
    """A hematoma mask on its own grid, cropped to its box."""

    name: str
    mask: np.ndarray  # bool
    affine: np.ndarray  # voxel -> RAS mm

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * voxel_volume_ml(self.affine)


def read_shapes(archive: str | Path, split: str) -> list[Shape]:
    """The shapes of one split (``train``, ``val`` or ``test``) of a HemSeg-500 zip archive,
    sorted by name; empty masks are left out."""
    shapes = []
    with zipfile.ZipFile(archive) as zf:
        members = sorted(n for n in zf.namelist() if f"/{split}/label/" in n and n.endswith(".nii.gz"))
        for member in members:
            img = nib.Nifti1Image.from_bytes(_gunzip(zf.read(member)))
            mask = np.asanyarray(img.dataobj) > 0
            if not mask.any():
                continue
            box = bounding_box(mask)
            shapes.append(Shape(Path(member).name.split(".")[0], mask[box], box_affine(img.affine, box)))
    return shapes


def _gunzip(data: bytes) -> bytes:
    import gzip

    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        return f.read()


@dataclass
class Host:
    """A real head CT prepared to receive lesions (canonical RAS orientation)."""

    name: str
    hu: np.ndarray  # float32
    affine: np.ndarray
    brain: np.ndarray  # intracranial mask
    allowed: np.ndarray  # where a lesion may lie: inside the brain, away from its edge and dense voxels
    parenchyma: np.ndarray  # brain tissue by density (not CSF), within ``allowed``
    dense: np.ndarray  # dense regions already in the host (a clot, calcifications) and 5 mm around
    ignore: np.ndarray  # not scored: ``dense`` on a patient's head, nothing on a normal one
    depth: np.ndarray = field(repr=False, default=None)  # mm from the edge of ``allowed``
    header: nib.Nifti1Header = field(repr=False, default=None)
    ventricles: np.ndarray = field(repr=False, default=None)  # :func:`find_ventricles`


def prepare_host(name: str, image: nib.Nifti1Image, normal: bool = False) -> Host:
    """Brain mask, normal tissue and dense regions of a real head CT.

    ``dense`` holds what is already dense inside the brain (HU above :data:`DENSE_HU` in
    blobs of at least 0.05 mL, grown by 5 mm); lesions are kept :data:`DENSE_MARGIN_MM` away
    from it. On a patient's head it is also ``ignore``: a real hematoma has no reference
    outline, so it is left out of every measure. A ``normal`` head is known to hold no blood,
    so its dense regions (calcifications and the like) are scored: what ichseg labels there is a
    false positive.
    """
    canonical = nib.as_closest_canonical(image)
    hu = np.asanyarray(canonical.dataobj, dtype=np.float32)
    spacing = voxel_sizes(canonical.affine)
    brain = extract_brain(hu, spacing)
    inside = ndi.distance_transform_edt(brain, sampling=spacing)
    inner = inside > EDGE_MARGIN_MM
    smooth = ndi.gaussian_filter(hu, sigma=[1.0 / s for s in spacing])
    dense = inner & (smooth > DENSE_HU)
    labels, n = ndi.label(dense)
    if n:
        sizes = ndi.sum(dense, labels, index=np.arange(1, n + 1)) * voxel_volume_ml(canonical.affine)
        dense = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.05))
    far = ndi.distance_transform_edt(~dense, sampling=spacing)
    near_dense = brain & (far <= 5.0)
    ignore = np.zeros_like(near_dense) if normal else near_dense
    allowed = inner & (far > DENSE_MARGIN_MM)
    parenchyma = allowed & (smooth > PARENCHYMA_HU[0]) & (smooth < PARENCHYMA_HU[1])
    depth = ndi.distance_transform_edt(allowed, sampling=spacing).astype(np.float32)
    ventricles = find_ventricles(smooth, inside > VENTRICLE_DEPTH_MM, near_dense, canonical.affine)
    return Host(name, hu, canonical.affine, brain, allowed, parenchyma, near_dense, ignore, depth, canonical.header,
                ventricles)


#: Density of blood layered in a ventricle (HU): from blood diluted by CSF to a settled clot.
VENTRICULAR_CLOT_HU = (45.0, 75.0)


@dataclass(frozen=True)
class Appearance:
    """How a lesion looks: clot density and texture, and an optional oedema rim."""

    clot_hu: float
    texture_hu: float
    texture_mm: float
    rim_mm: float  # 0: no oedema rim
    rim_drop_hu: float  # how much darker than the host tissue the rim is

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Appearance":
        rim = rng.random() < 0.5
        return cls(
            clot_hu=float(rng.uniform(55.0, 78.0)),
            texture_hu=float(rng.uniform(2.0, 6.0)),
            texture_mm=float(rng.uniform(1.5, 4.0)),
            rim_mm=float(rng.uniform(2.0, 6.0)) if rim else 0.0,
            rim_drop_hu=float(rng.uniform(6.0, 14.0)) if rim else 0.0,
        )

    @classmethod
    def draw_ventricular(cls, rng: np.random.Generator,
                         clot_hu: tuple[float, float] = VENTRICULAR_CLOT_HU) -> "Appearance":
        """Blood in a ventricle: mixed with CSF, often less dense than a parenchymal clot, and
        without oedema; its density drawn uniformly from ``clot_hu``."""
        return cls(clot_hu=float(rng.uniform(*clot_hu)), texture_hu=float(rng.uniform(2.0, 5.0)),
                   texture_mm=float(rng.uniform(1.5, 4.0)), rim_mm=0.0, rim_drop_hu=0.0)


@dataclass(frozen=True)
class Inserted:
    """A host with one lesion painted in, and what is true about it."""

    hu: np.ndarray  # float32, host grid
    labels: np.ndarray  # uint8: the lesion's class where it covers at least half a voxel, oedema rim
    fraction: np.ndarray  # float32, share of each voxel the lesion covers
    volume_ml: float  # sum of the fractions: the lesion's true volume
    centre_ras: tuple[float, float, float]
    rotation_deg: float
    mirrored: bool
    appearance: Appearance
    placement: dict = field(default_factory=dict)  # how a lesion without a shape was placed

    def record(self) -> dict:
        out = {"true_volume_ml": round(self.volume_ml, 4),
               "centre_ras": [round(c, 1) for c in self.centre_ras],
               "rotation_deg": round(self.rotation_deg, 1), "mirrored": self.mirrored, **self.placement}
        out.update({k: round(v, 2) for k, v in asdict(self.appearance).items()})
        return out


class NoRoom(ValueError):
    """The shape does not fit in the host's allowed region."""


def _placement(shape: Shape, rotation_deg: float, mirrored: bool, centre: np.ndarray) -> np.ndarray:
    """4x4 map from host world points to the shape's voxel indices."""
    ijk = np.argwhere(shape.mask)
    centroid = shape.affine[:3, :3] @ ijk.mean(0) + shape.affine[:3, 3]
    a = np.deg2rad(rotation_deg)
    turn = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    if mirrored:
        turn = turn @ np.diag([-1.0, 1.0, 1.0])
    # world = turn (p - centroid) + centre  =>  p = turn^T (world - centre) + centroid
    to_shape_world = np.eye(4)
    to_shape_world[:3, :3] = turn.T
    to_shape_world[:3, 3] = centroid - turn.T @ centre
    return np.linalg.inv(shape.affine) @ to_shape_world


def _subvoxel_offsets(affine: np.ndarray) -> np.ndarray:
    """(3, K) offsets, in voxels, of the sub-samples of a voxel: a regular grid no coarser than
    :data:`SUBSAMPLE_MM` along each axis."""
    steps = [max(1, int(np.ceil(s / SUBSAMPLE_MM))) for s in voxel_sizes(affine)]
    return np.array(np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in steps], indexing="ij")).reshape(3, -1)


def _occupancy(shape: Shape, world_to_shape: np.ndarray, host_affine: np.ndarray, host_shape) -> tuple:
    """Fraction of each host voxel inside the lesion, on the host voxels the lesion can reach:
    ``(fraction, box)`` with ``box`` the slices of the host grid it covers."""
    field_ = np.pad(shape.mask.astype(np.float32), 1)  # 0 outside, for the interpolation
    shift = np.eye(4)
    shift[:3, 3] = 1.0
    host_to_field = shift @ world_to_shape @ host_affine
    # host voxels whose centre can fall near the shape: map the field's corners back
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in field_.shape], indexing="ij")).reshape(3, -1)
    back = np.linalg.inv(host_to_field)
    points = back[:3, :3] @ corners + back[:3, 3:4]
    low = np.maximum(np.floor(points.min(1)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(points.max(1)).astype(int) + 2, host_shape)
    if np.any(high <= low):
        return None, None
    box = tuple(slice(a, b) for a, b in zip(low, high))
    sub = _subvoxel_offsets(host_affine)
    ijk = np.array(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij")).reshape(3, -1)
    inside = np.zeros(ijk.shape[1], dtype=np.float32)
    for d in sub.T:
        coords = host_to_field[:3, :3] @ (ijk + d[:, None]) + host_to_field[:3, 3:4]
        inside += ndi.map_coordinates(field_, coords, order=1, mode="constant", cval=0.0) >= 0.5
    fraction = (inside / sub.shape[1]).reshape(high - low)
    return fraction, box


def _roughly_fits(host: Host, shape: Shape, world_to_shape: np.ndarray, slack: float = 0.05) -> bool:
    """The fit of :func:`insert_lesion`, tested on the shape's own voxel centres (at most a few
    thousand): cheap, and it turns away most places before the partial volumes are computed."""
    ijk = np.argwhere(shape.mask)
    if len(ijk) > 5000:
        ijk = ijk[:: len(ijk) // 5000 + 1]
    to_host = np.linalg.inv(host.affine) @ np.linalg.inv(world_to_shape)
    points = np.rint(to_host[:3, :3] @ ijk.T + to_host[:3, 3:4]).astype(int)
    inside = np.all((points >= 0) & (points < np.array(host.hu.shape)[:, None]), axis=0)
    if not inside.all():
        return False
    at = tuple(points)
    if not host.brain[at].all() or host.dense[at].any():
        return False
    return host.allowed[at].mean() >= MIN_ALLOWED - slack and host.parenchyma[at].mean() >= MIN_PARENCHYMA - slack


def insert_lesion(
    host: Host, shape: Shape, rng: np.random.Generator, appearance: Appearance | None = None, tries: int = 200,
) -> Inserted:
    """Paint ``shape`` into ``host`` at a random place where it fits; raises :class:`NoRoom`.

    The lesion fits when every voxel it touches lies in the brain and none in ``host.dense``,
    at least :data:`MIN_ALLOWED` of its volume lies in ``host.allowed`` (away from the brain's
    edge and from dense tissue), and at least :data:`MIN_PARENCHYMA` on brain tissue rather
    than CSF: a hematoma grows in the parenchyma and may cross into sulci and ventricles.
    """
    appearance = appearance or Appearance.draw(rng)
    # centres deep enough in the allowed region for a ball of the lesion's volume to half fit
    radius = (3 * shape.volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    deep = host.depth >= min(0.5 * radius, 0.8 * float(host.depth.max()))
    candidates = np.argwhere(host.allowed & deep)
    if candidates.size == 0:
        raise NoRoom(f"{host.name}: no normal tissue to place a lesion in")
    spacing = voxel_sizes(host.affine)
    for _ in range(tries):
        rotation, mirrored = float(rng.uniform(-30.0, 30.0)), bool(rng.random() < 0.5)
        # anywhere within a voxel: a fixed phase against the slices would bias the label map
        ijk = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
        centre = host.affine[:3, :3] @ ijk + host.affine[:3, 3]
        placement = _placement(shape, rotation, mirrored, centre)
        if not _roughly_fits(host, shape, placement):
            continue
        fraction, box = _occupancy(shape, placement, host.affine, host.hu.shape)
        if fraction is None or fraction.sum() == 0:
            continue
        touched = fraction > 0
        if not host.brain[box][touched].all() or host.dense[box][touched].any():
            continue
        total = fraction.sum()
        if (fraction * host.allowed[box]).sum() < MIN_ALLOWED * total:
            continue
        if (fraction * host.parenchyma[box]).sum() < MIN_PARENCHYMA * total:
            continue
        return _paint(host, fraction, box, spacing, centre, rotation, mirrored, appearance, rng)
    raise NoRoom(f"{shape.name} ({shape.volume_ml:.1f} mL) found no room in {host.name} in {tries} tries")


#: Correlation length (mm) of CT noise in plane, for noise drawn to match a host's.
NOISE_CORRELATION_MM = 0.6


def host_like_noise(hu: np.ndarray, local_mean: np.ndarray, within: np.ndarray, spacing, rng) -> np.ndarray:
    """Noise for ``hu``'s grid with the in-plane grain of CT noise (:data:`NOISE_CORRELATION_MM`)
    and the host's level: its detail finer than 1.5 mm (``hu - local_mean``) has the robust
    spread of the host's own on brain tissue within ``within``, where little but noise is that
    fine."""
    sigma = [1.5 / s for s in spacing]
    tissue = within & (local_mean > PARENCHYMA_HU[0]) & (local_mean < PARENCHYMA_HU[1])
    detail = (hu - local_mean)[tissue]
    if detail.size < 100:
        return np.zeros(hu.shape, dtype=np.float32)
    level = float(median_abs_deviation(detail))
    grain = ndi.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32),
                                sigma=[NOISE_CORRELATION_MM / s for s in spacing])
    fine = grain - ndi.gaussian_filter(grain, sigma=sigma)
    return grain * (level / max(float(median_abs_deviation(fine, axis=None)), 1e-6))


def _paint(host, fraction, box, spacing, centre, rotation, mirrored, appearance, rng, label=IPH,
           placement=None, within=None) -> Inserted:
    """The host with the lesion's clot in place of its local mean (its noise kept), and its
    labels. With ``within`` (a mask), the clot replaces the host's voxels outright, with noise
    like the host's (:func:`host_like_noise`): blood that fills sulci and meets the skull must
    not keep their structure."""
    full = np.zeros(host.hu.shape, dtype=np.float32)
    full[box] = fraction
    # region to work on: the lesion's box grown by the rim and the texture's reach
    grow = [int(np.ceil((appearance.rim_mm + 3 * appearance.texture_mm + 2) / s)) for s in spacing]
    region = tuple(slice(max(0, b.start - g), min(n, b.stop + g)) for b, g, n in zip(box, grow, host.hu.shape))
    hu = host.hu[region]
    frac = full[region]
    local_mean = ndi.gaussian_filter(hu, sigma=[1.5 / s for s in spacing])
    noise = ndi.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32),
                                sigma=[appearance.texture_mm / s for s in spacing])
    noise *= appearance.texture_hu / max(float(noise.std()), 1e-6)
    clot = appearance.clot_hu + noise
    if within is None:
        painted = hu + frac * (clot - local_mean)
    else:
        # what the clot replaces holds structure (sulci, the inner table's partial volume), not
        # only noise: replace it, and give the clot noise like the host's own
        clot = clot + host_like_noise(hu, local_mean, within[region], spacing, rng)
        painted = hu + frac * (clot - hu)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    core = frac >= 0.5
    labels[core] = label
    if appearance.rim_mm > 0:
        distance = ndi.distance_transform_edt(~core, sampling=spacing)
        rim = (distance <= appearance.rim_mm) & ~core & host.brain[region]
        # the rim fades over its outer millimetre; the lesion's own partial voxels keep theirs
        weight = np.clip(appearance.rim_mm + 1.0 - distance, 0.0, 1.0) * (1.0 - frac)
        painted -= np.where(rim, weight * appearance.rim_drop_hu, 0.0)
        labels[rim & (weight >= 0.5)] = OEDEMA
    out_hu = host.hu.copy()
    out_hu[region] = painted
    out_labels = np.zeros(host.hu.shape, dtype=np.uint8)
    out_labels[region] = labels
    volume = float(fraction.sum()) * voxel_volume_ml(host.affine)
    return Inserted(out_hu, out_labels, full, volume, tuple(float(c) for c in centre), rotation, mirrored,
                    appearance, placement or {})


def find_ventricles(smooth: np.ndarray, deep: np.ndarray, dense: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A head's lateral ventricles, by density (``smooth``: its CT after 1 mm smoothing; ``deep``:
    more than :data:`VENTRICLE_DEPTH_MM` inside the brain): the largest connected part of CSF
    (:data:`CSF_HU`) there, and any other at least half its size (both at least
    :data:`MIN_VENTRICLE_ML`), less ``dense`` (the host's dense regions, choroid plexus
    calcification or a patient's own blood, and the 5 mm around them). Smaller parts (the
    fourth ventricle, deep sulci, cisterns) are left out: blood there is not always
    intraventricular. :func:`prepare_host` keeps them as ``Host.ventricles``."""
    spacing = voxel_sizes(affine)
    csf = deep & (smooth > CSF_HU[0]) & (smooth < CSF_HU[1]) & ~dense
    # an in-plane opening cuts the thin channels (aqueduct, sulci touching the ventricles'
    # wall) that would join other CSF to the lateral ventricles
    reach = np.array([int(VENTRICLE_OPENING_MM // s) for s in spacing])  # 0 across thick slices
    offsets = np.indices(2 * reach + 1) - reach[:, None, None, None]
    ball = sum((o * s) ** 2 for o, s in zip(offsets, spacing)) <= VENTRICLE_OPENING_MM ** 2
    csf = ndi.binary_opening(csf, structure=ball)
    labels, n = ndi.label(csf)
    if not n:
        return csf
    sizes = ndi.sum(csf, labels, index=np.arange(1, n + 1)) * voxel_volume_ml(affine)
    # the lateral ventricles: the largest part, and the other one where a septum parts them
    kept = sizes >= max(MIN_VENTRICLE_ML, 0.5 * float(sizes.max()))
    return np.isin(labels, 1 + np.flatnonzero(kept))


#: Which lateral ventricle receives blood, and how often.
VENTRICLE_SIDES = {"left": 0.35, "right": 0.35, "both": 0.3}
#: Share of the chosen ventricle's volume that the blood fills, from its most dependent part.
FILL_SHARE = (0.08, 0.6)


def insert_ventricular_blood(host: Host, rng: np.random.Generator,
                             appearance: Appearance | None = None) -> Inserted:
    """Blood layered in the host's ventricles, as it settles in a patient lying supine: it
    fills the most posterior (dependent) part of the left, right or both lateral ventricles
    up to a level plane, a share of :data:`FILL_SHARE` of their volume. Each voxel's fraction
    is the share of it (sampled at :data:`SUBSAMPLE_MM`) below the level, within the
    ventricle; the label is IVH where it is at least half. Raises :class:`NoRoom` when the
    host has no ventricle to fill."""
    appearance = appearance or Appearance.draw_ventricular(rng)
    space = host.ventricles
    if not space.any():
        raise NoRoom(f"{host.name}: no ventricle of {MIN_VENTRICLE_ML:g} mL or more away from dense tissue")
    ijk = np.argwhere(space)
    world = ijk @ host.affine[:3, :3].T + host.affine[:3, 3]
    side = str(rng.choice(list(VENTRICLE_SIDES), p=list(VENTRICLE_SIDES.values())))
    midline = float(np.median(world[:, 0]))
    chosen = {"left": world[:, 0] < midline, "right": world[:, 0] >= midline}.get(side, np.ones(len(ijk), bool))
    ijk, world = ijk[chosen], world[chosen]
    share = float(rng.uniform(*FILL_SHARE))
    level = float(np.quantile(world[:, 1], share))  # RAS: the lowest y is the most posterior
    # partial voxels: the share of each ventricle voxel's sub-samples behind the level
    spacing = voxel_sizes(host.affine)
    offsets = _subvoxel_offsets(host.affine)
    near = world[:, 1] <= level + float(np.abs(host.affine[1, :3]).sum())  # voxels the level can reach
    ijk = ijk[near]
    y = (ijk @ host.affine[1, :3])[:, None] + (host.affine[1, :3] @ offsets)[None, :] + host.affine[1, 3]
    share_behind = (y < level).mean(axis=1).astype(np.float32)
    keep = share_behind > 0
    ijk, share_behind = ijk[keep], share_behind[keep]
    if len(ijk) == 0:
        raise NoRoom(f"{host.name}: the {side} ventricle holds no voxel behind its fill level")
    low, high = ijk.min(0), ijk.max(0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    fraction = np.zeros(high - low, dtype=np.float32)
    fraction[tuple((ijk - low).T)] = share_behind
    centre = host.affine[:3, :3] @ np.average(ijk, axis=0, weights=share_behind) + host.affine[:3, 3]
    placement = {"side": side, "fill_share": round(share, 3)}
    return _paint(host, fraction, box, spacing, centre, 0.0, False, appearance, rng, label=IVH,
                  placement=placement)


#: Extra-axial (subdural) blood: density (HU), greatest thickness (mm) and the radius (mm) over
#: which it spreads along the inner table before it tapers to nothing.
EXTRA_AXIAL_CLOT_HU = (50.0, 75.0)
EXTRA_AXIAL_THICKNESS_MM = (3.0, 15.0)
EXTRA_AXIAL_RADIUS_MM = (25.0, 60.0)
#: Subdural blood keeps this far (mm) from the midline: the falx parts the hemispheres.
FALX_MARGIN_MM = 5.0
#: How far (mm) below the brain's centre of mass a crescent ends, thinning to nothing over the
#: :data:`FLOOR_TAPER_MM` above: below lie the skull base, the orbits and the sinuses.
CONVEXITY_FLOOR_MM = 20.0
FLOOR_TAPER_MM = 10.0
#: Largest share of a crescent that may fall on the host's dense regions (cut away there).
MAX_DENSE_SHARE = 0.25


def crescent_thickness(points: np.ndarray, centre, thickness: float, radius: float, floor: float) -> np.ndarray:
    """Thickness (mm) of a subdural crescent at world points ``(3, N)`` (RAS): ``thickness``
    at ``centre``, ``(1 - (r / radius)^2)`` of it at a distance ``r``, thinning to nothing over
    :data:`FLOOR_TAPER_MM` above the height ``floor`` (the skull base is no convexity)."""
    r2 = np.sum((points - np.asarray(centre, dtype=float).reshape(3, 1)) ** 2, axis=0) / radius ** 2
    taper = np.clip((points[2] - floor) / FLOOR_TAPER_MM, 0.0, 1.0)
    return np.maximum(thickness * (1.0 - r2) * taper, 0.0)


def insert_extra_axial_blood(host: Host, rng: np.random.Generator, appearance: Appearance | None = None,
                             tries: int = 50) -> Inserted:
    """A subdural hematoma over one hemisphere's convexity: a crescent along the edge of the
    intracranial mask, ``T (1 - (r / R)^2)`` thick at a distance ``r`` from its centre (``T``
    and ``R`` drawn from :data:`EXTRA_AXIAL_THICKNESS_MM` and :data:`EXTRA_AXIAL_RADIUS_MM`), on
    its centre's side of the midline and :data:`FALX_MARGIN_MM` from it, and thinning to nothing
    towards :data:`CONVEXITY_FLOOR_MM` below the brain's centre of mass. It displaces the
    outermost brain and CSF (no mass effect is modelled). Each voxel's fraction is the share of
    its sub-samples less deep than the crescent's thickness there; the label is EAH where it is
    at least half. Centres lie on the convexity, above the brain's centre of mass. The crescent
    is cut away where it meets the host's dense regions; one that would lose more than
    :data:`MAX_DENSE_SHARE` of itself there is drawn again, up to ``tries`` times, then
    :class:`NoRoom`."""
    appearance = appearance or Appearance(
        clot_hu=float(rng.uniform(*EXTRA_AXIAL_CLOT_HU)), texture_hu=float(rng.uniform(2.0, 5.0)),
        texture_mm=float(rng.uniform(1.5, 4.0)), rim_mm=0.0, rim_drop_hu=0.0)
    spacing = voxel_sizes(host.affine)
    step = float(max(spacing))
    surface = host.brain & ~ndi.binary_erosion(host.brain)
    ijk = np.argwhere(surface)
    world = ijk @ host.affine[:3, :3].T + host.affine[:3, 3]
    brain_ijk = np.argwhere(host.brain)
    centre_of_mass = brain_ijk.mean(0) @ host.affine[:3, :3].T + host.affine[:3, 3]
    midline = float(centre_of_mass[0])
    floor = float(centre_of_mass[2]) - CONVEXITY_FLOOR_MM
    convexity = (world[:, 2] > centre_of_mass[2]) & (np.abs(world[:, 0] - midline) > 4 * FALX_MARGIN_MM)
    candidates = world[convexity]
    if not len(candidates):
        raise NoRoom(f"{host.name}: no convexity to place extra-axial blood on")
    to_voxel = np.linalg.inv(host.affine)
    offsets = _subvoxel_offsets(host.affine)
    for _ in range(tries):
        centre = candidates[rng.integers(len(candidates))]
        thickness, radius = float(rng.uniform(*EXTRA_AXIAL_THICKNESS_MM)), float(rng.uniform(*EXTRA_AXIAL_RADIUS_MM))
        side = 1.0 if centre[0] > midline else -1.0
        # the host voxels it can reach, with room around them for the distances to the edge
        reach = radius + thickness + 2 * step
        corners = np.array([centre - reach, centre + reach]) @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        low = np.maximum(np.floor(corners.min(0)).astype(int), 0)
        high = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, host.hu.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        brain = host.brain[box]
        # signed distance to the edge of the intracranial mask: positive inside
        signed = (ndi.distance_transform_edt(brain, sampling=spacing)
                  - ndi.distance_transform_edt(~brain, sampling=spacing)).astype(np.float32)
        grid = np.argwhere(brain & (signed <= thickness + step)).T  # box voxels
        points = host.affine[:3, :3] @ (grid + low[:, None]) + host.affine[:3, 3:4]
        near = np.linalg.norm(points - centre[:, None], axis=0) <= radius + step
        grid = grid[:, near]
        covered = np.zeros(grid.shape[1], dtype=np.float32)
        for d in offsets.T:
            sample = grid + d[:, None]
            world_ = host.affine[:3, :3] @ (sample + low[:, None]) + host.affine[:3, 3:4]
            depth = ndi.map_coordinates(signed, sample, order=1, mode="nearest")
            on_side = side * (world_[0] - midline) > FALX_MARGIN_MM
            covered += (depth > 0) & (depth < crescent_thickness(world_, centre, thickness, radius, floor)) & on_side
        covered /= offsets.shape[1]
        keep = covered > 0
        if not keep.any():
            continue
        fraction = np.zeros(brain.shape, dtype=np.float32)
        fraction[tuple(grid[:, keep])] = covered[keep]
        # a head's dense regions (the bone's partial volume at the vertex, a patient's own
        # blood) are no place to paint blood into: the crescent stops at them, if they
        # would not take more than a share of it
        dense = host.dense[box]
        if (fraction * dense).sum() > MAX_DENSE_SHARE * fraction.sum():
            continue
        fraction[dense] = 0.0
        placement = {"side": "right" if side > 0 else "left", "thickness_mm": round(thickness, 2),
                     "radius_mm": round(radius, 2), "floor_z_mm": round(floor, 2)}
        return _paint(host, fraction, box, spacing, centre, 0.0, False, appearance, rng, label=EAH,
                      placement=placement, within=host.brain)
    raise NoRoom(f"{host.name}: no convexity clear of dense tissue for extra-axial blood in {tries} tries")
