"""Automated ABC/2 (Kothari et al., Stroke 1996) against shapes of known size."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.pipeline.volumes import abc2_ml


def ellipsoid(a, b, c, voxel, shear=0.0, angle_deg=0.0):
    """Binary ellipsoid with semi-axes a, b, c (mm), rotated in plane by angle_deg, on a grid
    of ``voxel`` mm whose slices may be sheared (gantry tilt, mm of y per mm of z)."""
    reach = max(a, b, c) + 3 * max(voxel)
    shape = [int(2 * reach / v) + 1 for v in voxel]
    affine = np.diag([*voxel, 1.0])
    affine[1, 2] = shear * voxel[2]
    affine[:3, 3] = -np.asarray(affine[:3, :3]) @ (np.asarray(shape) - 1) / 2
    ijk = np.indices(shape).reshape(3, -1).T
    x, y, z = (ijk @ affine[:3, :3].T + affine[:3, 3]).T
    t = np.deg2rad(angle_deg)
    u, v = np.cos(t) * x + np.sin(t) * y, -np.sin(t) * x + np.cos(t) * y
    mask = ((u / a) ** 2 + (v / b) ** 2 + (z / c) ** 2 <= 1).reshape(shape)
    return mask, affine


@pytest.mark.parametrize(("axes", "voxel", "shear", "angle"), [
    ((30, 20, 25.5), (0.5, 0.5, 1.0), 0.0, 0.0),
    ((25, 15, 21), (0.45, 0.45, 6.0), 0.0, 30.0),
    ((28, 18, 22.5), (0.5, 0.5, 2.0), 0.3, 60.0),  # tilted grid, oblique in plane
])
def test_unweighted_abc2_equals_the_ellipsoid_volume(axes, voxel, shear, angle):
    # (c is not a multiple of the slice spacing: a cap of one voxel on a slice would count as
    # a whole slice of C, a discretisation effect of up to one spacing)
    a, b, c = axes
    mask, affine = ellipsoid(a, b, c, voxel, shear, angle)
    result = abc2_ml(mask, affine)
    true_ml = 4 / 3 * np.pi * a * b * c / 1000
    assert result["abc2_unweighted_ml"] == pytest.approx(true_ml, rel=0.05)
    # A and B are the in-plane axes in mm, whatever the orientation in the slice
    assert result["a_mm"] == pytest.approx(2 * a, rel=0.04)
    assert result["b_mm"] == pytest.approx(2 * b, rel=0.06)


def test_kothari_weights_slices_by_area():
    # a stack of 8 slices: 4 full (weight 1), 2 at half the area (0.5), 2 at a tenth (0)
    voxel = (1.0, 1.0, 5.0)
    mask = np.zeros((60, 60, 12), dtype=bool)
    mask[10:50, 10:50, 2:6] = True  # 40 x 40 mm
    mask[10:50, 10:30, 6:8] = True  # half
    mask[10:22, 10:23, 8:10] = True  # under a quarter
    result = abc2_ml(mask, np.diag([*voxel, 1.0]))
    assert result["c_mm"] == pytest.approx((4 + 2 * 0.5) * 5.0)
    assert result["a_mm"] == pytest.approx(40 * np.sqrt(2))  # the diagonal of the square
    assert result["b_mm"] == pytest.approx(40 * np.sqrt(2))  # width across the diagonal
    expected = result["a_mm"] * result["b_mm"] * 25.0 / 2 / 1000
    assert result["abc2_ml"] == pytest.approx(expected)
    assert result["abc2_unweighted_ml"] == pytest.approx(expected * 40 / 25)


def test_abc2_overestimates_irregular_shapes():
    # an L-shaped clot: ABC/2 takes the bounding extent of its largest slice
    voxel = (1.0, 1.0, 2.0)
    mask = np.zeros((80, 80, 20), dtype=bool)
    mask[10:70, 10:20, 5:15] = True
    mask[10:20, 10:70, 5:15] = True
    true_ml = mask.sum() * 2.0 / 1000
    result = abc2_ml(mask, np.diag([*voxel, 1.0]))
    assert result["abc2_ml"] > 1.5 * true_ml
    assert result["abc2_unweighted_ml"] > 1.5 * true_ml


def test_empty_and_single_voxel():
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    assert abc2_ml(np.zeros((5, 5, 5), bool), affine)["abc2_ml"] == 0.0
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True
    result = abc2_ml(one, affine)
    assert result["a_mm"] == pytest.approx(np.hypot(0.5, 0.5))
    assert result["abc2_unweighted_ml"] == pytest.approx(np.hypot(0.5, 0.5) ** 2 * 5 / 2 / 1000)


def test_measures_the_largest_clot_only():
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    clot, _ = ellipsoid(20, 12, 15, (1.0, 1.0, 2.0))
    alone = abc2_ml(clot, affine)
    speck = clot.copy()
    speck[0, 0, clot.shape[2] // 2] = True  # a far false positive on the largest slice
    assert abc2_ml(speck, affine) == alone
