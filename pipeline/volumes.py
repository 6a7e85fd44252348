"""Volume computation: the one place that turns label maps and masks into millilitres."""

from __future__ import annotations

import numpy as np

from ichseg.pipeline.geometry import voxel_volume_ml
from ichseg.pipeline.labels import (
    BRAIN_VOLUME_COLUMN,
    FOREGROUND_LABELS,
    HEMORRHAGE_INDICES,
    IPH_INDEX,
    TOTAL_HEMORRHAGE_COLUMN,
    VOLUME_COLUMNS,
)

#: The ``status`` of a scan in the volume tables: volumes computed, the scan failed, or no
#: result yet (group table only).
STATUS_OK, STATUS_FAILED, STATUS_MISSING = "ok", "failed", "missing"


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


#: Columns of the automated ABC/2 (Kothari et al., Stroke 1996), with their descriptions.
ABC2_COLUMNS: dict[str, dict[str, str]] = {
    "iph_abc2_ml": {
        "Description": "ABC/2 of the largest connected IPH clot (Kothari et al., Stroke 1996): A, the largest "
        "diameter on the axial slice with the largest IPH area; B, the largest width "
        "perpendicular to A on that slice; C, the slices with IPH times the slice spacing, each "
        "slice weighted 1 (area >= 75 % of the largest), 0.5 (25-75 %) or 0 (< 25 %). "
        "Physical mm on tilted or oblique grids.",
        "Units": "mL",
    },
    "iph_abc2_unweighted_ml": {
        "Description": "ABC/2 of the largest connected IPH clot with every slice that holds it counted in C "
        "(the ellipsoid approximation pi/6 ABC, as many sites measure it).",
        "Units": "mL",
    },
}


def _caliper(points: np.ndarray) -> tuple[float, float]:
    """Largest diameter of 2D points and their width perpendicular to it (mm)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # collinear or too few points: a line of voxels
        hull = points
    gaps = hull[:, None, :] - hull[None, :, :]
    distances = np.einsum("ijk,ijk->ij", gaps, gaps)
    i, j = np.unravel_index(np.argmax(distances), distances.shape)
    diameter = float(np.sqrt(distances[i, j]))
    if diameter == 0:
        return 0.0, 0.0
    across = np.array([-gaps[i, j, 1], gaps[i, j, 0]]) / diameter
    projected = hull @ across
    return diameter, float(projected.max() - projected.min())


def abc2_ml(mask: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Automated ABC/2 of a binary mask on its own grid: :data:`ABC2_COLUMNS` without the class
    prefix (``abc2_ml``, ``abc2_unweighted_ml``), and A, B, C in mm.

    As a rater measures one hematoma, it is computed on the largest connected component
    (26-connectivity) of the mask. Diameters are measured on the voxels' outlines (each voxel a
    parallelogram of its in-plane edges), so one voxel has A and B of its own size.
    """
    from scipy import ndimage

    from ichseg.pipeline.geometry import slice_geometry

    mask = np.asarray(mask, dtype=bool)
    empty = {"abc2_ml": 0.0, "abc2_unweighted_ml": 0.0, "a_mm": 0.0, "b_mm": 0.0, "c_mm": 0.0}
    if not mask.any():
        return empty
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n > 1:
        mask = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    axis, edges, spacing = slice_geometry(affine)
    slices = np.moveaxis(mask, axis, 0)
    counts = slices.reshape(slices.shape[0], -1).sum(axis=1)
    largest = int(np.argmax(counts))
    ij = np.argwhere(slices[largest]).astype(float)
    # in-plane coordinates (mm) on an orthonormal basis of the slice plane
    basis = np.linalg.qr(edges.T)[0].T  # 2 x 3
    edges_2d = edges @ basis.T  # the two voxel edges, 2D
    corners = np.array([[a, b] for a in (-0.5, 0.5) for b in (-0.5, 0.5)]) @ edges_2d
    points = (ij @ edges_2d)[:, None, :] + corners[None, :, :]
    a_mm, b_mm = _caliper(points.reshape(-1, 2))
    fraction = counts[counts > 0] / counts[largest]
    weights = np.where(fraction >= 0.75, 1.0, np.where(fraction >= 0.25, 0.5, 0.0))
    c_weighted, c_all = float(weights.sum() * spacing), float(len(fraction) * spacing)
    return {
        "abc2_ml": a_mm * b_mm * c_weighted / 2 / 1000,
        "abc2_unweighted_ml": a_mm * b_mm * c_all / 2 / 1000,
        "a_mm": a_mm, "b_mm": b_mm, "c_mm": c_weighted,
    }


def volume_row(labels: np.ndarray, affine: np.ndarray, brain_mask: np.ndarray, qc: dict | None = None,
               warnings: list[str] | None = None, location: dict | None = None) -> tuple[dict, dict]:
    """The one row of a scan's volume table (volumes, ABC/2, location, QC measures, flags and
    rating) and the unrounded volumes."""
    from ichseg.pipeline.qc import qc_columns

    volumes = label_volumes_ml(labels, affine, brain_mask)
    row = {column: round(volumes[column], 4) for column in VOLUME_COLUMNS}
    row["status"] = STATUS_OK
    abc2 = abc2_ml(labels == IPH_INDEX, affine)
    row["iph_abc2_ml"] = round(abc2["abc2_ml"], 4)
    row["iph_abc2_unweighted_ml"] = round(abc2["abc2_unweighted_ml"], 4)
    qc = dict(qc or {})
    row.update(location or {})
    row.update({key: round(float(value), 4) for key, value in sorted(qc.items())})
    row.update(qc_columns(volumes[BRAIN_VOLUME_COLUMN], qc, list(warnings or [])))
    return row, volumes


def volume_sidecar(source_file: str, model_info: dict, warnings: list[str] | None = None,
                   extra: dict | None = None) -> dict:
    """The JSON sidecar of a volume table: every column described, sources, warnings, model
    and software versions."""
    from ichseg.pipeline.labels import volume_column_descriptions
    from ichseg.pipeline.location import LOCATION_COLUMNS
    from ichseg.pipeline.provenance import software_versions
    from ichseg.pipeline.qc import qc_column_descriptions

    sidecar = volume_column_descriptions()
    sidecar["status"] = {"Description": "Processing status of the scan", "Levels": {STATUS_OK: "processed"}}
    sidecar.update(ABC2_COLUMNS)
    sidecar.update(LOCATION_COLUMNS)
    sidecar.update(qc_column_descriptions())
    sidecar["Sources"] = [str(source_file)]
    sidecar["Warnings"] = list(warnings or [])
    sidecar["Model"] = model_info
    sidecar["SoftwareVersions"] = software_versions()
    sidecar.update(extra or {})
    return sidecar
