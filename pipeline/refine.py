"""Hemorrhage boundaries from CT density: where clot and tissue meet halfway.

A voxel on the edge of a clot holds part clot and part tissue, and its density is their mix:
``HU = f * clot + (1 - f) * tissue`` for a share ``f`` of clot. The voxel is more clot than
tissue exactly when its density is above the midpoint of the two. :func:`refine_hemorrhage`
takes each hemorrhage the network found, measures the density of its core and of the tissue
around it, and redraws its edge at that midpoint: it adds the dense voxels next to the
lesion that the network left out, and drops the voxels below the midpoint that it included.
It only moves the edge within ``reach_mm`` of the network's outline, keeps to the
intracranial mask, and leaves a lesion alone when clot and tissue are too close in density
to tell apart. :func:`refine_partial_volume` decides only the voxels next to the edge, by the
share of clot their density implies, and only where that share is clearly above or below
one half.

Neither is used by the pipeline: both were measured on the truth set and did not beat the
network's own edges (docs/method.md, section 7); ``bench/accuracy.py`` keeps them as levers,
and ``bench/edge_decisions.py`` measures what any decision of the :func:`edge_bands` could give.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.geometry import voxel_sizes
from ichseg.pipeline.labels import HEMORRHAGE_INDICES, total_hemorrhage_probability

#: Millimetres the edge may move, in or out, from the network's outline.
REACH_MM = 4.0
#: Clot and tissue must differ by this much (HU) for the midpoint to be trusted.
MIN_CONTRAST_HU = 15.0
#: Densities above this (bone, calcium, metal) are never clot.
MAX_CLOT_HU = 100.0
#: Thickness (mm) of the shell around a lesion whose density counts as its tissue.
SHELL_MM = (3.0, 7.0)


def refine_hemorrhage(
    labels: np.ndarray, hu: np.ndarray, brain: np.ndarray, affine: np.ndarray, reach_mm: float = REACH_MM,
) -> np.ndarray:
    """Label map with the edges of its hemorrhages redrawn at the clot-tissue midpoint.

    ``labels``, ``hu`` and ``brain`` share the CT's grid (``affine``). Voxels that join a
    lesion take its class; voxels that leave it become background (or keep a non-hemorrhage
    label they had).
    """
    spacing = voxel_sizes(affine)
    hemorrhage = np.isin(labels, HEMORRHAGE_INDICES)
    if not hemorrhage.any():
        return labels
    # a light in-plane smoothing: the midpoint is compared with the mean of a voxel and its
    # neighbours, not with one noisy voxel
    smooth = ndi.gaussian_filter(hu.astype(np.float32), sigma=[0.6 / s if s < 2 else 0 for s in spacing])
    out = labels.copy()
    components, n = ndi.label(hemorrhage)
    reach = [max(1, int(np.ceil(reach_mm / s))) for s in spacing]
    pad = [r + int(np.ceil(SHELL_MM[1] / s)) + 1 for r, s in zip(reach, spacing)]
    for index, box in enumerate(ndi.find_objects(components), start=1):
        region = tuple(slice(max(0, b.start - p), min(n_, b.stop + p)) for b, p, n_ in zip(box, pad, labels.shape))
        lesion = components[region] == index
        inside = ndi.distance_transform_edt(lesion, sampling=spacing)
        outside = ndi.distance_transform_edt(~lesion, sampling=spacing)
        core = inside > 1.5 * max(spacing[:2])
        if core.sum() < 10:
            core = lesion
        shell = (outside > SHELL_MM[0]) & (outside <= SHELL_MM[1]) & brain[region] & ~np.isin(
            labels[region], HEMORRHAGE_INDICES)
        if shell.sum() < 10:
            continue
        clot = float(np.median(smooth[region][core]))
        tissue = float(np.median(smooth[region][shell]))
        if clot - tissue < MIN_CONTRAST_HU:
            continue
        midpoint = (clot + tissue) / 2
        band = (inside <= reach_mm) & (outside <= reach_mm) & brain[region]
        dense = (smooth[region] >= midpoint) & (smooth[region] <= MAX_CLOT_HU)
        # inside the band the density decides; the lesion's deep core stays, whatever it holds
        candidate = (lesion & ~band) | (band & dense)
        grown, _ = ndi.label(candidate)
        keep = np.isin(grown, np.unique(grown[lesion & candidate]))
        keep &= grown > 0
        kind = np.bincount(labels[region][lesion]).argmax()
        target = out[region]
        # voxels that leave the lesion: background, unless another class was there
        leaving = lesion & ~keep
        target[leaving & np.isin(target, HEMORRHAGE_INDICES)] = 0
        joining = keep & ~lesion & ~np.isin(target, HEMORRHAGE_INDICES)
        target[joining] = kind
    return out


#: Reach (mm) of the band of voxels whose label the density decides, on fine axes; on a
#: thick axis (slices of 2 mm or more) the band is one voxel: the slice the lesion's face
#: crosses.
PARTIAL_BAND_MM = 1.0
#: In-plane smoothing (sigma, mm) of the density before the comparison; thick axes are not
#: smoothed.
PARTIAL_SMOOTH_MM = 1.0
#: Ring (mm, within the slice) around a lesion whose density counts as the tissue next to it.
PARTIAL_TISSUE_MM = (1.0, 3.0)
#: A voxel joins a lesion only where the network gives it at least this hemorrhage probability.
PARTIAL_GROW_FLOOR = 0.05
#: The density overrules the network only where the clot share it implies is this far from
#: one half: clot texture and noise make it uncertain by about a tenth near the midpoint.
PARTIAL_MARGIN = 0.2


def _band_structure(spacing) -> np.ndarray:
    """Ellipsoidal neighbourhood reaching :data:`PARTIAL_BAND_MM` on fine axes, one voxel on thick ones."""
    reach = [1 if s >= 2.0 else max(1, int(round(PARTIAL_BAND_MM / s))) for s in spacing]
    grid = np.meshgrid(*[np.arange(-r, r + 1) / r for r in reach], indexing="ij")
    return sum(g ** 2 for g in grid) <= 1.0 + 1e-6


@dataclass
class EdgeBand:
    """One connected lesion's edge, within ``region`` (a box of the scan's grid): where its
    label is open to doubt, and the clot share that each voxel's density implies there."""

    region: tuple[slice, ...]
    #: the lesion; ``inner``: its voxels beyond the band; ``outer``: the band outside it
    lesion: np.ndarray
    inner: np.ndarray
    outer: np.ndarray
    #: voxels of other lesions
    others: np.ndarray
    #: density, smoothed within the slices; ``share``: (density - tissue) / (clot - tissue)
    smooth: np.ndarray
    share: np.ndarray

    def joinable(self, brain: np.ndarray) -> np.ndarray:
        """Voxels of the outer band that could be clot: in the brain, not bone, no other lesion."""
        return self.outer & (self.smooth <= MAX_CLOT_HU) & brain[self.region] & ~self.others


def edge_bands(labels: np.ndarray, hu: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> Iterator[EdgeBand]:
    """The :class:`EdgeBand` of each connected hemorrhage (26-neighbourhood) of ``labels``
    whose clot and tissue densities can be told apart.

    The clot density is the median of the lesion's inner voxels (the upper quartile of all its
    voxels when fewer than 20 are inner), the tissue's the median of a ring
    :data:`PARTIAL_TISSUE_MM` around it within its slices; a lesion whose clot is less than
    :data:`MIN_CONTRAST_HU` above its tissue, or without 20 voxels of ring, has no band. The
    band reaches one slice through a thick axis and :data:`PARTIAL_BAND_MM` within a slice.
    ``labels``, ``hu`` and ``brain`` share the CT's grid (``affine``).
    """
    spacing = voxel_sizes(affine)
    blood = np.asarray(HEMORRHAGE_INDICES)
    hemorrhage = np.isin(labels, blood)
    if not hemorrhage.any():
        return
    structure = _band_structure(spacing)
    half = [s // 2 for s in structure.shape]
    fine = [s < 2.0 for s in spacing]
    sigma = [PARTIAL_SMOOTH_MM / s if f else 0.0 for s, f in zip(spacing, fine)]
    ring_vox = [int(np.ceil(PARTIAL_TISSUE_MM[1] / s)) if f else 0 for s, f in zip(spacing, fine)]
    pad = [h + r + int(np.ceil(3 * g)) + 1 for h, r, g in zip(half, ring_vox, sigma)]
    components, _ = ndi.label(hemorrhage, structure=np.ones((3, 3, 3), dtype=bool))
    for index, box in enumerate(ndi.find_objects(components), start=1):
        region = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(box, pad, labels.shape))
        lesion = components[region] == index
        smooth = ndi.gaussian_filter(hu[region].astype(np.float32), sigma=sigma)
        inner = ndi.binary_erosion(lesion, structure=structure, border_value=1)
        core = inner & (smooth <= MAX_CLOT_HU)
        clot_voxels = smooth[core] if core.sum() >= 20 else smooth[lesion & (smooth <= MAX_CLOT_HU)]
        if clot_voxels.size == 0:
            continue
        clot = float(np.median(clot_voxels)) if core.sum() >= 20 else float(np.percentile(clot_voxels, 75))
        # the tissue ring lies within the lesion's own slices: distances along fine axes only
        fine_distance = ndi.distance_transform_edt(~lesion, sampling=[s if f else 1e6 for s, f in
                                                                     zip(spacing, fine)])
        others = hemorrhage[region] & ~lesion
        ring = ((fine_distance >= PARTIAL_TISSUE_MM[0]) & (fine_distance <= PARTIAL_TISSUE_MM[1])
                & brain[region] & ~others & (smooth >= -5.0) & (smooth <= MAX_CLOT_HU))
        if ring.sum() < 20:
            continue
        tissue = float(np.median(smooth[ring]))
        if clot - tissue < MIN_CONTRAST_HU:
            continue
        outer = ndi.binary_dilation(lesion, structure=structure) & ~lesion
        yield EdgeBand(region, lesion, inner, outer, others, smooth, (smooth - tissue) / (clot - tissue))


def refine_partial_volume(labels: np.ndarray, probabilities: np.ndarray, hu: np.ndarray, brain: np.ndarray,
                          affine: np.ndarray, margin: float = PARTIAL_MARGIN,
                          grow_floor: float = PARTIAL_GROW_FLOOR) -> np.ndarray:
    """Label map whose hemorrhage edges are decided by the voxels' density: partial volume.

    A voxel on a lesion's edge, most often a thick slice that the lesion's top or bottom face
    crosses, holds a share ``f`` of clot and its density is ``f * clot + (1 - f) * tissue``.
    It is more clot than tissue when ``f`` is above one half. On each lesion's
    :func:`edge_bands` a voxel joins it where its ``f`` is at least ``0.5 + margin`` and leaves
    it where ``f`` is below ``0.5 - margin``; in between the network's label stands. A voxel
    joins only inside the brain mask, below :data:`MAX_CLOT_HU` and where the network gives it
    at least ``grow_floor`` hemorrhage probability; one that leaves takes its best non-blood
    class. ``labels``, ``probabilities`` (C, ...), ``hu`` and ``brain`` share the CT's grid
    (``affine``).
    """
    from ichseg.pipeline.segmentation import best_non_blood_class

    if not np.isin(labels, HEMORRHAGE_INDICES).any():
        return labels
    total = total_hemorrhage_probability(probabilities)
    out = labels.copy()
    # the bands come from the network's labels, the changes go to a copy
    for band in edge_bands(labels, hu, brain, affine):
        region = band.region
        leaving = band.lesion & ~band.inner & (band.share < 0.5 - margin)
        joining = band.joinable(brain) & (band.share >= 0.5 + margin) & (total[region] >= grow_floor)
        target = out[region]
        if leaving.any():
            target[leaving] = best_non_blood_class(probabilities[(slice(None),) + region][:, leaving])
        target[joining] = np.bincount(labels[region][band.lesion]).argmax()
    return out
