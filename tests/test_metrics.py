"""Accuracy measures (ichseg.pipeline.metrics) on maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ichseg.pipeline.metrics import (
    agreement,
    compare_labels,
    dice,
    hausdorff95,
    icc_agreement,
)


def _ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius ** 2


def test_dice_known_overlaps():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:4] = True
    b[2:6] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_hausdorff95_of_shifted_and_concentric_shapes():
    shape = (40, 40, 40)
    a = _ball(shape, (20, 20, 20), 10)
    shifted = np.roll(a, 3, axis=0)
    # every surface point of a ball shifted by 3 voxels is at most 3 from the other surface
    assert 2.0 <= hausdorff95(a, shifted, (1, 1, 1)) <= 3.0
    assert hausdorff95(a, a, (1, 1, 1)) == 0.0
    smaller = _ball(shape, (20, 20, 20), 7)
    assert hausdorff95(a, smaller, (1, 1, 1)) == pytest.approx(3.0, abs=1.0)
    # a cube shifted by 3 voxels along x: the x faces are 3 voxels apart, in mm at the x spacing
    cube = np.zeros(shape, bool)
    cube[10:30, 10:30, 10:30] = True
    moved = np.roll(cube, 3, axis=0)
    assert hausdorff95(cube, moved, (1, 1, 1)) == pytest.approx(3.0)
    assert hausdorff95(cube, moved, (2, 1, 1)) == pytest.approx(6.0)
    assert math.isnan(hausdorff95(a, np.zeros(shape, bool), (1, 1, 1)))


def test_compare_labels_per_class_and_total():
    shape = (30, 30, 10)
    affine = np.diag([0.5, 0.5, 5.0, 1.0])  # 1.25 uL voxels
    reference = np.zeros(shape, np.uint8)
    reference[5:15, 5:15, 2:6] = 1  # IPH, 400 voxels
    reference[20:25, 20:25, 2:4] = 4  # IVH, 50 voxels
    predicted = reference.copy()
    predicted[5:15, 5:10, 2:6] = 3  # half the IPH called oedema
    out = compare_labels(predicted, reference, affine)
    voxel_ml = 0.5 * 0.5 * 5.0 / 1000
    assert out["iph_ref_ml"] == pytest.approx(400 * voxel_ml)
    assert out["iph_ml"] == pytest.approx(200 * voxel_ml)
    assert out["iph_dice"] == pytest.approx(2 * 200 / 600)
    assert out["ivh_dice"] == 1.0
    assert out["hemorrhage_diff_ml"] == pytest.approx(-200 * voxel_ml)
    assert math.isnan(out["eah_dice"])
    # ignored voxels count in neither map
    ignore = np.zeros(shape, bool)
    ignore[5:15, 5:10] = True
    assert compare_labels(predicted, reference, affine, ignore)["iph_dice"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        compare_labels(predicted[:-1], reference, affine)


def test_icc_agreement_known_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert icc_agreement(x, x) == pytest.approx(1.0)
    # a constant offset lowers absolute agreement but not correlation
    offset = icc_agreement(x, x + 2.0)
    assert 0.0 < offset < 0.8
    # the worked example of Shrout & Fleiss (Psychol Bull 1979, table 2): six targets, four
    # judges, ICC(2,1) = 0.29
    judges = ([9, 6, 8, 7, 10, 6], [2, 1, 4, 1, 5, 2], [5, 3, 6, 2, 6, 4], [8, 2, 8, 6, 9, 7])
    assert icc_agreement(*judges) == pytest.approx(0.29, abs=0.005)


def test_agreement_figures():
    reference = [10.0, 20.0, 30.0, 40.0]
    predicted = [11.0, 19.0, 33.0, 41.0]
    out = agreement(predicted, reference, [0.9, 0.8, float("nan"), 0.7])
    assert out["n_scans"] == 4 and out["n_dice"] == 3
    assert out["dice_mean"] == pytest.approx(0.8)
    assert out["mean_difference_ml"] == pytest.approx(1.0)
    assert out["rmse_ml"] == pytest.approx(np.sqrt((1 + 1 + 9 + 1) / 4))
    sd = np.std([1, -1, 3, 1], ddof=1)
    assert out["limits_of_agreement_ml"] == pytest.approx([1 - 1.96 * sd, 1 + 1.96 * sd])
    assert out["largest_error_ml"] == pytest.approx(3.0)
    assert 0.98 < out["volume_pearson_r"] <= 1.0


def test_agreement_by_volume_strata():
    from ichseg.pipeline.metrics import agreement_by_volume

    reference = [0.0, 2.0, 10.0, 20.0, 40.0, 50.0]
    predicted = [0.3, 3.0, 9.0, 20.0, 36.0, 52.0]
    dices = [float("nan"), 0.5, 0.8, 0.9, 0.85, 0.95]
    strata = agreement_by_volume(predicted, reference, dices)
    assert [s["range"] for s in strata] == ["≤ 5 mL", "5–15 mL", "15–30 mL", "> 30 mL"]
    assert [s["n_scans"] for s in strata] == [1, 1, 1, 2]  # the reference of 0 mL is left out
    assert strata[0]["mean_relative_difference"] == pytest.approx(0.5)
    assert strata[3]["dice_mean"] == pytest.approx(0.9)
    assert strata[3]["mean_difference_ml"] == pytest.approx(-1.0)
    assert strata[3]["largest_relative_error"] == pytest.approx(0.1)
    assert strata[3]["high_ml"] is None
    empty = agreement_by_volume([1.0], [1.0], [1.0], edges=(5.0,))
    assert empty[1] == {"range": "> 5 mL", "low_ml": 5.0, "high_ml": None, "n_scans": 0}
