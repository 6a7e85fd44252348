"""Where the hemorrhage is: IPH volume per region of the BLAST-CT atlas, and the trial summary.

The atlas (``models/blastct-v1/atlas_template_space.nii.gz``, 31 regions, see docs/models.md)
lies in the same MNI world space as ichseg's CT template (their brain masks overlap with Dice
0.95), so it is mapped onto the scan's grid through the inverse of the scan's template
registration, by nearest neighbour. Sides are the template's hemispheres (x < 0 is the
patient's left), so midline regions (brainstem, vermis, ventricles) are split too.

Summaries count intraparenchymal hemorrhage (IPH), the class that location classifications
describe: ``lobar_ml`` (cortex and white matter of the lobes, insula, hippocampus),
``deep_ml`` (basal ganglia, lentiform nucleus, caudate, thalamus, basal forebrain; the
internal capsule lies within the atlas' basal-ganglia regions), ``infratentorial_ml``
(brainstem, cerebellum), ``intraventricular_iph_ml`` (IPH labelled inside the ventricle
region), ``left_ml`` and ``right_ml``; ``location`` names the group holding most IPH.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ichseg.pipeline.labels import HEMORRHAGE_INDICES, IPH_INDEX

#: Location groups by the atlas' region names (checked against the label table in the tests).
GROUP_OF_REGION = {
    "BrainStem": "infratentorial", "Cerebellum": "infratentorial",
    "LeftCerebellum": "infratentorial", "RightCerebellum": "infratentorial",
    "Ventricle": "intraventricular",
}
for _side in ("Left", "Right"):
    for _name in ("BasalForebrain", "BasalGanglia", "BasalGanglia-lentiform-nucleus",
                  "Basalganglia-lentiform-nucleus", "Caudate", "ThalamusProper"):
        GROUP_OF_REGION[_side + _name] = "deep"
    for _name in ("FrontalLobe-inferior-orbital", "FrontalLobe-lateral", "FrontalLobe-medial",
                  "Hippocampus", "Insula", "OccipitalLobe", "ParietalLobe", "TemporalLobe"):
        GROUP_OF_REGION[_side + _name] = "lobar"

GROUPS = ("lobar", "deep", "infratentorial")
#: Below this much IPH (mL) there is no hematoma to place: ``location`` and ``side`` are n/a (the
#: normal GE head has 0.009 mL of IPH, scattered voxels).
MIN_LOCATED_ML = 0.1
LOCATION_COLUMNS: dict[str, dict[str, str]] = {
    "lobar_ml": {"Description": "IPH in the lobes (cortex and white matter, insula, hippocampus) of the BLAST-CT atlas.", "Units": "mL"},
    "deep_ml": {"Description": "IPH in the deep grey matter (basal ganglia, lentiform nucleus, caudate, thalamus, basal forebrain).", "Units": "mL"},
    "infratentorial_ml": {"Description": "IPH in the brainstem and cerebellum.", "Units": "mL"},
    "intraventricular_iph_ml": {"Description": "IPH labelled inside the atlas' ventricle region.", "Units": "mL"},
    "unlocated_iph_ml": {"Description": "IPH outside every atlas region (e.g. beyond the template's brain).", "Units": "mL"},
    "left_ml": {"Description": "IPH in the patient's left hemisphere (template x < 0).", "Units": "mL"},
    "right_ml": {"Description": "IPH in the patient's right hemisphere (template x >= 0).", "Units": "mL"},
    "location": {"Description": "Group with the most IPH (lobar, deep, infratentorial, intraventricular); n/a below 0.1 mL of IPH."},
    "side": {"Description": "Side with the most IPH (left, right); n/a below 0.1 mL of IPH."},
}


def read_region_names(labels_csv: str | Path) -> dict[int, str]:
    """Region index -> name from the atlas label table (``ROIIndex,ROIName``)."""
    with open(labels_csv, newline="") as fobj:
        return {int(row["ROIIndex"]): row["ROIName"].strip() for row in csv.DictReader(fobj)}


def side_map(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """1 where a voxel of a template-space grid lies in the left hemisphere (RAS x < 0), 2 in
    the right."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape[:3])
    x = affine[0, 0] * i[:, None, None] + affine[0, 1] * j[None, :, None] + affine[0, 2] * k[None, None, :] + affine[0, 3]
    return np.where(x < 0, 1, 2).astype(np.uint8)


def locate(labels: np.ndarray, regions: np.ndarray, sides: np.ndarray, voxel_ml: float,
           names: dict[int, str]) -> tuple[list[dict], dict]:
    """Per-region rows (region, index, group, IPH and total hemorrhage mL) and the summary columns.

    ``regions`` and ``sides`` are the atlas and :func:`side_map` on the label map's grid.
    """
    iph = labels == IPH_INDEX
    blood = np.isin(labels, HEMORRHAGE_INDICES)
    n = max(names) + 1
    regions = np.clip(np.asarray(regions, dtype=np.int64), 0, n - 1)
    iph_per = np.bincount(regions[iph], minlength=n) * voxel_ml
    blood_per = np.bincount(regions[blood], minlength=n) * voxel_ml
    rows = [{"region": names[i], "index": i, "group": GROUP_OF_REGION.get(names[i], "other"),
             "iph_ml": round(float(iph_per[i]), 4), "hemorrhage_ml": round(float(blood_per[i]), 4)}
            for i in sorted(names)]
    rows.append({"region": "outside the atlas", "index": 0, "group": "none",
                 "iph_ml": round(float(iph_per[0]), 4), "hemorrhage_ml": round(float(blood_per[0]), 4)})
    groups = {g: sum(r["iph_ml"] for r in rows if r["group"] == g) for g in (*GROUPS, "intraventricular")}
    summary = {f"{g}_ml": round(v, 4) for g, v in groups.items() if g in GROUPS}
    summary["intraventricular_iph_ml"] = round(groups["intraventricular"], 4)
    summary["unlocated_iph_ml"] = round(float(iph_per[0]), 4)
    summary["left_ml"] = round(float(np.count_nonzero(iph & (sides == 1)) * voxel_ml), 4)
    summary["right_ml"] = round(float(np.count_nonzero(iph & (sides == 2)) * voxel_ml), 4)
    total = sum(groups.values())
    located = total >= MIN_LOCATED_ML
    summary["location"] = max(groups, key=groups.get) if located else None
    summary["side"] = (None if not located
                       else "left" if summary["left_ml"] > summary["right_ml"] else "right")
    return rows, summary


def atlas_on_scan(atlas_img, shape: tuple[int, int, int], affine: np.ndarray,
                  template_to_scan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The atlas's regions and :func:`side_map` on a scan's grid, through the inverse
    registration (nearest neighbour)."""
    from ichseg.pipeline.registration import warp_to_scan

    channels = np.stack([np.asanyarray(atlas_img.dataobj, dtype=np.float32),
                         side_map(atlas_img.shape[:3], atlas_img.affine).astype(np.float32)])
    regions, sides = warp_to_scan(channels, atlas_img.affine, shape[:3], affine, template_to_scan, order=0)
    return regions, sides


def ventricle_region(regions: np.ndarray, region_names: dict[int, str]) -> np.ndarray:
    """Where the atlas's regions (:func:`atlas_on_scan`) are ventricles (the
    ``intraventricular`` group)."""
    ids = [index for index, name in region_names.items() if GROUP_OF_REGION.get(name) == "intraventricular"]
    return np.isin(np.rint(regions).astype(np.int64), ids)


def extra_axial_zone(brain: np.ndarray, regions: np.ndarray, sides: np.ndarray, region_names: dict[int, str],
                     affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """Where extra-axial blood may lie on a scan's grid: within ``margin_mm`` of the
    intracranial surface (the edge of ``brain``, the intracranial mask), of the midline (the
    falx: where the atlas's sides meet) or of the infratentorial regions' outline (the
    tentorium), inside ``brain``. ``regions`` and ``sides`` from :func:`atlas_on_scan`."""
    from scipy import ndimage

    from ichseg.pipeline.geometry import within_mm

    brain = np.asarray(brain, dtype=bool)
    edge = brain & ~ndimage.binary_erosion(brain)
    left = np.rint(sides) == 1
    midline = brain & (left ^ ndimage.binary_erosion(left))
    below = np.isin(np.rint(regions).astype(np.int64),
                    [i for i, n in region_names.items() if GROUP_OF_REGION.get(n) == "infratentorial"])
    tentorium = brain & (below ^ ndimage.binary_erosion(below))
    return brain & within_mm(edge | midline | tentorium, affine, margin_mm)


def class_zones(atlas_img, region_names: dict[int, str], shape: tuple[int, int, int], affine: np.ndarray,
                template_to_scan: np.ndarray, ivh_margin_mm: float | None = None,
                eah_margin_mm: float | None = None, brain: np.ndarray | None = None,
                near: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Where the confined bleeding classes may lie on a scan's grid: intraventricular blood
    within ``ivh_margin_mm`` of the atlas's ventricles, extra-axial blood in the
    :func:`extra_axial_zone` of ``eah_margin_mm`` (which needs ``brain``, the intracranial
    mask); a class whose margin is None is not confined
    (:func:`~ichseg.pipeline.segmentation.confine_bleeding_classes`).

    With ``near`` (a mask on the same grid), the zones are computed only in a box around it,
    wide enough to be exact on its voxels (the atlas warp and the distance maps of a whole
    scan take seconds); elsewhere they are False. An empty ``near`` needs no zones at all."""
    from ichseg.pipeline.geometry import (
        bounding_box,
        box_affine,
        voxel_sizes,
        within_mm,
    )
    from ichseg.pipeline.labels import EAH_INDEX, IVH_INDEX

    if ivh_margin_mm is None and eah_margin_mm is None:
        return {}
    if eah_margin_mm is not None and brain is None:
        raise ValueError("confining extra-axial blood needs the intracranial mask (brain)")
    box = tuple(slice(0, n) for n in shape[:3])
    if near is not None:
        # structures up to the margin beyond the box's voxels count, and a false edge at the
        # box's faces must lie farther than the margin from them
        reach = max(m for m in (ivh_margin_mm, eah_margin_mm) if m is not None)
        box = bounding_box(near, [2 * int(np.ceil(reach / size)) + 2 for size in voxel_sizes(affine)])
        if box is None:
            return {}
    box_shape = tuple(b.stop - b.start for b in box)
    inner = box_affine(affine, box)
    regions, sides = atlas_on_scan(atlas_img, box_shape, inner, template_to_scan)
    zones = {}
    if ivh_margin_mm is not None:
        zones[IVH_INDEX] = within_mm(ventricle_region(regions, region_names), inner, ivh_margin_mm)
    if eah_margin_mm is not None:
        zones[EAH_INDEX] = extra_axial_zone(np.asarray(brain)[box], regions, sides, region_names, inner,
                                            eah_margin_mm)
    for index, zone in zones.items():
        full = np.zeros(shape[:3], dtype=bool)
        full[box] = zone
        zones[index] = full
    return zones


def locate_on_scan(labels: np.ndarray, affine: np.ndarray, template_to_scan: np.ndarray,
                   atlas_img, region_names: dict[int, str]) -> tuple[list[dict], dict]:
    """Map the atlas onto a scan's label map through the inverse registration; return the
    rows of the regions table and the summary columns (:func:`locate`)."""
    from ichseg.pipeline.geometry import voxel_volume_ml

    regions, sides = atlas_on_scan(atlas_img, labels.shape, affine, template_to_scan)
    return locate(labels, regions, sides, voxel_volume_ml(affine), region_names)
