"""Quality flags computed on every run; each becomes a ``flag_*`` column of the volume tables.

The thresholds are module constants, calibrated on the real CTs of the test data and the
synthetic phantoms (figures in docs/method.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ichseg.pipeline.checks import MIN_HEAD_COVERAGE_MM
from ichseg.pipeline.labels import HEMORRHAGE_INDICES, total_hemorrhage_probability

#: Plausible intracranial volume inside the field of view (mL). Adult intracranial volume is
#: about 1200-1800 mL; scans whose field of view cuts the vertex or skull base hold less.
BRAIN_ML_RANGE = (700.0, 2100.0)
#: Lowest acceptable Dice between the registered brain mask and the template's brain mask,
#: inside the scan's field of view. A rigid fit keeps the head's own size, so good
#: registrations of the real CTs gave 0.77 (ge-head), 0.80 (deepbleed-brain), 0.84
#: (mistie-0034) and 0.89 (six slices of mistie-0034); a head rotated or shifted by a failed
#: fit overlaps far less.
MIN_REGISTRATION_DICE = 0.60
#: Hemorrhage volume (mL, template space) touching the edge of the inference region above
#: which the region may have cut a bleed.
MAX_EDGE_HEMORRHAGE_ML = 0.5
#: Fraction of hemorrhage probability mass outside the brain mask above which the
#: segmentation is suspicious (blood outside the skull is not intracranial hemorrhage).
MAX_OUTSIDE_BRAIN_FRACTION = 0.25


def segmentation_qc(
    probabilities: np.ndarray, labels: np.ndarray, brain: np.ndarray, roi: np.ndarray, voxel_ml: float
) -> dict:
    """Template-space measures of a segmentation: hemorrhage at the ROI edge and outside the brain.

    ``labels`` is the label map of ``probabilities`` (``segmentation.label_map``, computed once by
    the caller).
    """
    hemorrhage = np.isin(labels, HEMORRHAGE_INDICES)
    edge = roi & ~ndimage.binary_erosion(roi)
    mass = total_hemorrhage_probability(probabilities)
    total = float(mass.sum())
    return {
        "hemorrhage_at_roi_edge_ml": float(np.count_nonzero(hemorrhage & edge) * voxel_ml),
        "hemorrhage_outside_brain_fraction": float(mass[~brain].sum() / total) if total > 1.0 else 0.0,
    }


#: Flags that make the volumes unusable rather than doubtful: a scan misregistered to the
#: template was segmented on the wrong anatomy.
FAIL_FLAGS = ("flag_registration",)
#: The ``qc`` column: what a statistician filters on.
QC_PASS, QC_REVIEW, QC_FAIL = "pass", "review", "fail"
QC_RULE = (
    f"'{QC_FAIL}' when any of {', '.join(FAIL_FLAGS)} is true; otherwise '{QC_REVIEW}' when any "
    f"other flag_* is true or the scan has input warnings (n_warnings > 0: thick slices, gantry "
    f"tilt, incomplete head coverage, header conflicts); otherwise '{QC_PASS}'."
)


def quality_flags(brain_ml: float, qc: dict) -> dict[str, bool]:
    """Boolean flags from the volumes and QC measures (True = a rater should look)."""
    low, high = BRAIN_ML_RANGE
    return {
        "flag_brain_volume": not (low <= brain_ml <= high),
        "flag_registration": qc.get("registration_dice", 1.0) < MIN_REGISTRATION_DICE,
        "flag_roi_edge": qc.get("hemorrhage_at_roi_edge_ml", 0.0) > MAX_EDGE_HEMORRHAGE_ML,
        "flag_outside_brain": qc.get("hemorrhage_outside_brain_fraction", 0.0) > MAX_OUTSIDE_BRAIN_FRACTION,
        "flag_head_coverage": qc.get("head_coverage_mm", MIN_HEAD_COVERAGE_MM) < MIN_HEAD_COVERAGE_MM,
    }


def qc_rating(flags: dict[str, bool], n_warnings: int) -> str:
    """``pass``, ``review`` or ``fail`` by :data:`QC_RULE`."""
    if any(flags.get(name) for name in FAIL_FLAGS):
        return QC_FAIL
    if any(flags.values()) or n_warnings > 0:
        return QC_REVIEW
    return QC_PASS


def qc_columns(brain_ml: float, qc: dict, warnings: list[str]) -> dict:
    """The QC columns of a scan's volume table: flags, lower-bound marker, warnings, rating."""
    flags = quality_flags(brain_ml, qc)
    return {
        **flags,
        "volumes_lower_bound": flags["flag_head_coverage"],
        "n_warnings": len(warnings),
        "qc": qc_rating(flags, len(warnings)),
    }


def qc_column_descriptions() -> dict[str, dict]:
    """BIDS-style descriptions of the QC and flag columns of the volume tables."""
    low, high = BRAIN_ML_RANGE
    return {
        "registration_similarity": {"Description": "Correlation of template and registered CT intensities inside both brain masks, inside the scan's field of view."},
        "registration_dice": {"Description": "Dice overlap of the registered brain mask and the template brain mask, inside the scan's field of view."},
        "hemorrhage_at_roi_edge_ml": {"Description": "Hemorrhage touching the edge of the inference region (template space).", "Units": "mL"},
        "hemorrhage_outside_brain_fraction": {"Description": "Fraction of hemorrhage probability mass outside the brain mask."},
        "hemorrhage_below_seed_ml": {"Description": "Blood left out by the hysteresis seed (--hemorrhage-seed): regions whose total hemorrhage probability reaches the threshold but nowhere the seed (template space; 0 without a seed). Rerun with --hemorrhage-seed none to keep them.", "Units": "mL"},
        "flag_brain_volume": {"Description": f"Brain volume outside {low:g}-{high:g} mL."},
        "flag_registration": {"Description": f"Registration Dice below {MIN_REGISTRATION_DICE}."},
        "flag_roi_edge": {"Description": f"More than {MAX_EDGE_HEMORRHAGE_ML} mL of hemorrhage at the inference-region edge."},
        "flag_outside_brain": {"Description": f"More than {MAX_OUTSIDE_BRAIN_FRACTION:.0%} of hemorrhage probability outside the brain."},
        "head_coverage_mm": {"Description": "Extent from inferior to superior of the slices that hold head tissue.", "Units": "mm"},
        "flag_head_coverage": {"Description": f"Head coverage below {MIN_HEAD_COVERAGE_MM:g} mm: the field of view cuts the brain."},
        "volumes_lower_bound": {"Description": "True when the field of view cuts the brain (flag_head_coverage): hemorrhage_ml and the class volumes count only what was scanned and are lower bounds."},
        "n_warnings": {"Description": "Number of input warnings (listed in the JSON sidecar and the report)."},
        "qc": {"Description": f"Quality rating to filter on. Rule: {QC_RULE}",
               "Levels": {QC_PASS: "no flag, no input warning", QC_REVIEW: "look at the report before use",
                          QC_FAIL: "volumes not usable as they stand"}},
    }
