"""Volume computation: the one place that turns label maps and masks into millilitres."""

from __future__ import annotations

import numpy as np

from .geometry import voxel_volume_ml
from .labels import BRAIN_VOLUME_COLUMN, FOREGROUND_LABELS, HEMORRHAGE_INDICES, TOTAL_HEMORRHAGE_COLUMN


def label_volumes_ml(labels: np.ndarray, affine: np.ndarray, brain_mask: np.ndarray | None = None) -> dict[str, float]:
    """Volumes (mL) of every foreground class, of total hemorrhage and of the brain mask.

    Volumes are voxel counts times the voxel volume of the grid ``affine`` describes, so
    they are computed in the scan's own space. Total hemorrhage is IPH + EAH + IVH
    (perilesional oedema is not blood). Without ``brain_mask`` the brain volume is NaN.
    """
    voxel_ml = voxel_volume_ml(affine)
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=len(FOREGROUND_LABELS) + 1)
    volumes = {lab.volume_column: float(counts[lab.index] * voxel_ml) for lab in FOREGROUND_LABELS}
    volumes[TOTAL_HEMORRHAGE_COLUMN] = float(sum(counts[i] for i in HEMORRHAGE_INDICES) * voxel_ml)
    volumes[BRAIN_VOLUME_COLUMN] = (
        float(np.count_nonzero(brain_mask) * voxel_ml) if brain_mask is not None else float("nan")
    )
    return volumes
