"""Hemorrhage boundaries from CT density: where clot and tissue meet halfway.

A voxel on the edge of a clot holds part clot and part tissue, and its density is their mix:
``HU = f * clot + (1 - f) * tissue`` for a share ``f`` of clot. The voxel is more clot than
tissue exactly when its density is above the midpoint of the two. :func:`refine_hemorrhage`
takes each hemorrhage the network found, measures the density of its core and of the tissue
around it, and redraws its edge at that midpoint: it adds the dense voxels next to the
lesion that the network left out, and drops the voxels below the midpoint that it included.
It only moves the edge within ``reach_mm`` of the network's outline, keeps to the
intracranial mask, and leaves a lesion alone when clot and tissue are too close in density
to tell apart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.geometry import voxel_sizes
from ichseg.pipeline.labels import HEMORRHAGE_INDICES

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
