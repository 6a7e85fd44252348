"""Accuracy measures against reference segmentations: per scan and over a dataset.

Per scan (:func:`compare_labels`): Dice, the volumes and their difference, and the 95th
percentile Hausdorff distance in mm, for each class and for all hemorrhage together. Over a
dataset (:func:`agreement`): mean and median Dice, Pearson r and ICC of the volumes, the mean
difference, RMSE and Bland-Altman limits of agreement: the figures DeepBleed reported
(Sharrock et al., Neuroinformatics 2021), so that results can be put beside theirs.

Undefined values are NaN: Dice when neither map has the class, the surface distance when
either has none.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.geometry import bounding_box, voxel_sizes, voxel_volume_ml
from ichseg.pipeline.labels import FOREGROUND_LABELS, HEMORRHAGE_INDICES

#: Name of the measure for all hemorrhage classes together.
HEMORRHAGE = "hemorrhage"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric Hausdorff distance (mm) between the surfaces of two masks.

    The larger of the two directed 95th percentiles (as MONAI computes it); NaN when either
    mask is empty. ``spacing``: voxel sizes in mm.
    """
    if not a.any() or not b.any():
        return float("nan")
    sa, sb = _surface(a), _surface(b)
    # distances only matter near the masks: work on the box that holds both, plus a voxel
    box = bounding_box(a | b, 1)
    sa, sb = sa[box], sb[box]
    to_b = ndi.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndi.distance_transform_edt(~sa, sampling=spacing)
    return float(max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95)))


def class_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask of every foreground class (by abbreviation, lower case) and of all hemorrhage."""
    out = {lab.abbreviation.lower(): labels == lab.index for lab in FOREGROUND_LABELS}
    out[HEMORRHAGE] = np.isin(labels, HEMORRHAGE_INDICES)
    return out


def compare_labels(
    predicted: np.ndarray,
    reference: np.ndarray,
    affine: np.ndarray,
    ignore: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, float]:
    """Measures of a predicted label map against a reference on the same grid.

    ``reference`` is a label map with the indices of :data:`~ichseg.pipeline.labels.LABELS`.
    Voxels of ``ignore`` count in neither map. ``classes`` limits the measures (default: every
    class and ``hemorrhage``). Keys: ``<class>_dice``, ``<class>_ml`` (predicted),
    ``<class>_ref_ml``, ``<class>_diff_ml`` (predicted minus reference), ``<class>_hd95_mm``.
    """
    if predicted.shape != reference.shape:
        raise ValueError(f"the maps differ in shape: {predicted.shape} vs {reference.shape}")
    keep = np.ones(predicted.shape, dtype=bool) if ignore is None else ~ignore.astype(bool)
    pred_masks = class_masks(np.where(keep, predicted, 0))
    ref_masks = class_masks(np.where(keep, reference, 0))
    names = list(classes) if classes is not None else list(pred_masks)
    voxel_ml = voxel_volume_ml(affine)
    spacing = voxel_sizes(affine)
    out: dict[str, float] = {}
    for name in names:
        p, r = pred_masks[name], ref_masks[name]
        out[f"{name}_dice"] = dice(p, r)
        out[f"{name}_ml"] = float(p.sum()) * voxel_ml
        out[f"{name}_ref_ml"] = float(r.sum()) * voxel_ml
        out[f"{name}_diff_ml"] = out[f"{name}_ml"] - out[f"{name}_ref_ml"]
        out[f"{name}_hd95_mm"] = hausdorff95(p, r, spacing)
    return out


def icc_agreement(*ratings: Sequence[float]) -> float:
    """ICC(A,1): two-way random effects, absolute agreement, single measure (McGraw & Wong
    1996; Shrout & Fleiss ICC(2,1)) of two or more raters' measurements of the same targets;
    NaN for fewer than two targets."""
    data = np.column_stack([np.asarray(r, float) for r in ratings])
    n, k = data.shape
    if n < 2:
        return float("nan")
    grand = data.mean()
    ss_rows = k * ((data.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((data - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float("nan") if denominator == 0 else float((ms_rows - ms_error) / denominator)


def agreement(predicted_ml: Sequence[float], reference_ml: Sequence[float], dices: Sequence[float]) -> dict:
    """Dataset figures for one class: Dice (mean, median, over scans where it is defined),
    Pearson r and ICC(A,1) of the volumes, mean difference (predicted minus reference), its SD,
    RMSE and the Bland-Altman 95 % limits of agreement (mean ± 1.96 SD), in mL."""
    p = np.asarray(predicted_ml, dtype=float)
    r = np.asarray(reference_ml, dtype=float)
    d = np.asarray([v for v in dices if not math.isnan(v)], dtype=float)
    diff = p - r
    n = len(p)
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    pearson = float(np.corrcoef(p, r)[0, 1]) if n > 1 and p.std() > 0 and r.std() > 0 else float("nan")
    return {
        "n_scans": n,
        "n_dice": int(d.size),
        "dice_mean": float(d.mean()) if d.size else float("nan"),
        "dice_median": float(np.median(d)) if d.size else float("nan"),
        "volume_pearson_r": pearson,
        "volume_icc": icc_agreement(p, r),
        "mean_difference_ml": float(diff.mean()) if n else float("nan"),
        "sd_difference_ml": sd,
        "rmse_ml": float(np.sqrt((diff ** 2).mean())) if n else float("nan"),
        "limits_of_agreement_ml": [float(diff.mean() - 1.96 * sd), float(diff.mean() + 1.96 * sd)] if n > 1
        else [float("nan"), float("nan")],
        "largest_error_ml": float(diff[np.argmax(np.abs(diff))]) if n else float("nan"),
    }


#: Reference volumes (mL) that bound the size strata: small bleeds, the 15 mL that trials use as a
#: surgical goal and the 30 mL they use for inclusion.
VOLUME_STRATA_ML: tuple[float, ...] = (5.0, 15.0, 30.0)


def agreement_by_volume(predicted_ml: Sequence[float], reference_ml: Sequence[float], dices: Sequence[float],
                        edges: Sequence[float] = VOLUME_STRATA_ML) -> list[dict]:
    """Dice and volume error per stratum of reference volume (scans with a reference volume of 0
    are left out: they have no relative error). Relative differences are (predicted − reference) /
    reference; ``largest_relative_error`` is the largest of their absolute values."""
    p = np.asarray(predicted_ml, dtype=float)
    r = np.asarray(reference_ml, dtype=float)
    d = np.asarray(dices, dtype=float)
    bounds = [0.0, *edges, math.inf]
    strata = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        inside = (r > low) & (r <= high)
        if low == 0.0:
            label = f"≤ {high:g} mL"
        else:
            label = f"> {low:g} mL" if math.isinf(high) else f"{low:g}–{high:g} mL"
        stratum = {"range": label, "low_ml": low, "high_ml": None if math.isinf(high) else high,
                   "n_scans": int(inside.sum())}
        strata.append(stratum)
        if not inside.any():
            continue
        rel = (p[inside] - r[inside]) / r[inside]
        dice_in = d[inside][~np.isnan(d[inside])]
        stratum.update({
            "dice_mean": float(dice_in.mean()) if dice_in.size else float("nan"),
            "dice_median": float(np.median(dice_in)) if dice_in.size else float("nan"),
            "mean_difference_ml": float((p[inside] - r[inside]).mean()),
            "mean_relative_difference": float(rel.mean()),
            "largest_relative_error": float(np.abs(rel).max()),
        })
    return strata
