"""Voxel grids, ANTs transforms and resampling (ichseg.pipeline.geometry)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ichseg.pipeline.geometry import (
    LPS_TO_RAS,
    ants_affine_to_ras,
    resample,
    resample_voxel_mean,
    shear_degrees,
    voxel_sizes,
    voxel_volume_ml,
    world_aligned_grid,
)
from ichseg.pipeline.phantom import phantom_affine


def _affine(linear, offset) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = offset
    return affine


def _tilted(voxel=(0.8, 0.9, 3.0), tilt_deg=20.0, offset=(40.0, -60.0, -30.0)) -> np.ndarray:
    """LAS grid whose in-plane A-P column leans into I-S, as dcm2niix writes a gantry tilt."""
    t = np.deg2rad(tilt_deg)
    vx, vy, vz = voxel
    return _affine([[-vx, 0, 0], [0, vy * np.cos(t), 0], [0, vy * np.sin(t), vz]], offset)


def _world(affine, ijk) -> np.ndarray:
    """World coordinates (N, 3) of voxel indices (N, 3)."""
    ijk = np.asarray(ijk, dtype=float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _voxel(affine, xyz) -> np.ndarray:
    """Continuous voxel indices (N, 3) of world points (N, 3)."""
    inv = np.linalg.inv(affine)
    return np.asarray(xyz, dtype=float) @ inv[:3, :3].T + inv[:3, 3]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- resample


def _oblique(voxel=(0.45, 0.45, 5.0), angle_deg=7.0, offset=(-100.0, -90.0, -40.0)) -> np.ndarray:
    """Orthogonal grid rotated about L-R (an oblique acquisition without tilt)."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return _affine(rotation @ np.diag(voxel), offset)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize(
    "grid",
    ["axis-aligned", "oblique", "sheared"],
)
def test_resample_same_grid_is_identity(rng, order, grid):
    data = rng.normal(size=(13, 11, 7)).astype(np.float32)
    affine = {
        "axis-aligned": _affine(np.diag([1.2, 0.7, 2.5]), (-10.0, 5.0, 3.0)),
        "oblique": _oblique(),
        "sheared": _tilted(),
    }[grid]
    out = resample(data, affine, data.shape, affine, order=order, cval=np.nan)
    assert out.shape == data.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, data, atol=1e-5)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("grid", ["oblique", "sheared"])
def test_resample_same_grid_is_identity_inside(rng, order, grid):
    """Away from the outermost voxels the identity holds on any grid."""
    data = rng.normal(size=(13, 11, 7)).astype(np.float32)
    affine = _oblique() if grid == "oblique" else _tilted()
    out = resample(data, affine, data.shape, affine, order=order)
    np.testing.assert_allclose(out[1:-1, 1:-1, 1:-1], data[1:-1, 1:-1, 1:-1], atol=1e-5)


def test_resample_known_translation_order0(rng):
    data = rng.integers(1, 100, size=(12, 10, 8)).astype(np.float32)
    source = _affine(np.diag([2.0, 1.5, 3.0]), (-7.0, 4.0, 11.0))
    shift = np.array([3, -2, 1])  # target voxel (i, j, k) sits on source voxel (i+3, j-2, k+1)
    target = source @ _affine(np.eye(3), shift)
    out = resample(data, source, data.shape, target, order=0, cval=-5.0)
    expected = np.full(data.shape, -5.0, dtype=np.float32)
    expected[: 12 - 3, 2:, : 8 - 1] = data[3:, : 10 - 2, 1:]
    np.testing.assert_array_equal(out, expected)


def test_resample_target_to_source_translation(rng):
    """A world translation passed as target_to_source shifts the sampled data by whole voxels."""
    data = rng.integers(1, 100, size=(10, 9, 8)).astype(np.float32)
    affine = _affine(np.diag([2.0, 2.0, 4.0]), (0.0, 0.0, 0.0))
    # target point p samples the source at p + (4, -2, 4) mm = 2, -1, 1 voxels
    moved = _affine(np.eye(3), (4.0, -2.0, 4.0))
    out = resample(data, affine, data.shape, affine, target_to_source=moved, order=0)
    expected = np.zeros_like(data)
    expected[:-2, 1:, :-1] = data[2:, :-1, 1:]
    np.testing.assert_array_equal(out, expected)


def test_resample_permutation_and_flip_order0(rng):
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)
    source = _affine(np.diag([1.0, 2.0, 3.0]), (10.0, -20.0, 30.0))
    # Target voxel (a, b, c) is source voxel (5 - b, c, a): axes permuted and one flipped.
    to_source = np.array(
        [[0, -1, 0, 5], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
    )
    target = source @ to_source
    target_shape = (4, 6, 5)
    out = resample(data, source, target_shape, target, order=0)
    expected = np.empty(target_shape, dtype=np.float32)
    for a in range(4):
        for b in range(6):
            for c in range(5):
                expected[a, b, c] = data[5 - b, c, a]
    np.testing.assert_array_equal(out, expected)
    # the same through numpy's axis operations
    np.testing.assert_array_equal(out, np.transpose(data[::-1], (2, 0, 1)))


def test_resample_sheared_source_exact_for_linear_field():
    """Trilinear interpolation reproduces a linear function exactly: a sheared source grid
    (gantry tilt) must be sampled at the right world points, voxel by voxel."""
    source = _tilted(voxel=(1.0, 1.1, 3.0), tilt_deg=25.0, offset=(30.0, -25.0, -20.0))
    shape = (40, 42, 14)
    coef, const = np.array([0.5, -1.25, 2.0]), 7.0
    ijk = np.indices(shape).reshape(3, -1).T
    field = (_world(source, ijk) @ coef + const).reshape(shape).astype(np.float64)

    target = _affine(np.diag([1.5, 1.5, 1.5]), (-10.0, -25.0, -20.0))
    target_shape = (30, 40, 36)
    out = resample(field, source, target_shape, target, order=1, cval=np.nan)
    tijk = np.indices(target_shape).reshape(3, -1).T
    world = _world(target, tijk)
    expected = (world @ coef + const).reshape(target_shape)
    vox = _voxel(source, world).reshape(target_shape + (3,))
    inside = np.all((vox >= 0) & (vox <= np.array(shape) - 1), axis=-1)
    assert inside.sum() > 1000 and (~inside).sum() > 1000
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3)
    # outside the source grid: cval (test the clear cases, one voxel away from the border)
    far = np.any((vox < -1) | (vox > np.array(shape)), axis=-1)
    assert np.isnan(out[far]).all()
    # the shear matters: treating the grid as unsheared would miss by several units
    unsheared = source.copy()
    unsheared[2, 1] = 0.0
    wrong = resample(field, unsheared, target_shape, target, order=1, cval=np.nan)
    both = inside & np.isfinite(wrong)
    assert np.nanmax(np.abs(wrong[both] - expected[both])) > 5


def test_resample_sheared_source_known_points():
    """Single bright voxels of a tilted grid land on the target voxels at their world points."""
    source = _tilted(voxel=(1.0, 1.0, 4.0), tilt_deg=18.0, offset=(20.0, -10.0, -10.0))
    shape = (21, 25, 9)
    data = np.zeros(shape, dtype=np.float32)
    spots = [(3, 4, 2), (17, 20, 6), (10, 12, 4)]
    for n, ijk in enumerate(spots, start=1):
        data[ijk] = n
    for n, point in enumerate(_world(source, spots), start=1):
        grid = _affine(np.eye(3), point - 3.0)  # 1 mm grid on which the spot is voxel (3, 3, 3)
        for order in (0, 1):
            out = resample(data, source, (7, 7, 7), grid, order=order)
            assert out[3, 3, 3] == pytest.approx(n, abs=1e-5)
        # order 1: 1 mm off the spot along any world axis gives less than the peak
        out = resample(data, source, (7, 7, 7), grid, order=1)
        for off in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            assert out[tuple(np.add((3, 3, 3), off))] < n - 0.2
            assert out[tuple(np.subtract((3, 3, 3), off))] < n - 0.2


@pytest.mark.parametrize("order", [0, 1])
def test_resample_multichannel_matches_per_channel(rng, order):
    channels = rng.normal(size=(3, 9, 8, 7)).astype(np.float32)
    source = _tilted(voxel=(1.0, 1.0, 2.0), tilt_deg=10.0, offset=(0.0, 0.0, 0.0))
    target = _affine(np.diag([0.7, 0.9, 1.1]), (-6.0, 1.0, 2.0))
    target_to_source = _affine(np.eye(3), (0.3, -0.4, 0.5))
    out = resample(channels, source, (12, 10, 9), target, target_to_source, order=order)
    assert out.shape == (3, 12, 10, 9)
    for c in range(3):
        single = resample(channels[c], source, (12, 10, 9), target, target_to_source, order=order)
        np.testing.assert_array_equal(out[c], single)
    assert not np.allclose(out[0], out[1])


def _reference_resample(data, source, shape, target, target_to_source, order, cval):
    """Map every target voxel and interpolate, snapping rounding errors at the grid's edges."""
    mapping = np.linalg.inv(source) @ target_to_source @ target
    ijk = np.indices(shape).reshape(3, -1)
    coords = mapping[:3, :3] @ ijk + mapping[:3, 3:4]
    for axis, size in enumerate(data.shape):
        c = coords[axis]
        c[(c < 0) & (c > -1e-4)] = 0.0
        c[(c > size - 1) & (c < size - 1 + 1e-4)] = size - 1
    out = ndimage.map_coordinates(data, coords, order=order, mode="constant", cval=cval, prefilter=False)
    return out.reshape(shape)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("order", [0, 1])
def test_resample_equals_mapping_every_voxel(seed, order):
    """Random tilted, anisotropic grids and rigid motions, and grids that share their
    edges exactly (where rounding decides inside or outside)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(11, 12, 13)).astype(np.float32)
    source = _tilted(voxel=tuple(rng.uniform(0.5, 3.0, 3)), tilt_deg=rng.uniform(-20, 20),
                     offset=tuple(rng.uniform(-5, 5, 3)))
    motion = np.eye(4)
    if seed % 2:
        angle = rng.uniform(-0.4, 0.4)
        motion[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        motion[:3, 3] = rng.uniform(-3, 3, 3)
        # a finer grid over about the same field of view, shifted by a few voxels
        target = source @ _affine(np.diag(rng.uniform(0.5, 0.7, 3)), tuple(rng.uniform(-2, 0, 3)))
        shape = (20, 18, 25)
    else:
        target, shape = source, data.shape  # the same grid: every edge voxel on an edge
    out = resample(data, source, shape, target, motion, order=order, cval=-7.0)
    expected = _reference_resample(data, source, shape, target, motion, order, -7.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert (out != -7.0).mean() > 0.05


# --------------------------------------------------------------------------- ANTs transforms


@pytest.mark.parametrize("precision", ["float", "double"])
def test_ants_affine_to_ras_matches_antspy(tmp_path, precision):
    ants = pytest.importorskip("ants")
    angle = np.deg2rad(12.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    matrix = rotation @ np.diag([1.1, 0.95, 1.05]) + np.array([[0, 0.05, 0], [0, 0, 0], [0.03, 0, 0]])
    translation = np.array([4.0, -7.5, 12.0])
    center = np.array([10.0, -30.0, 25.0])
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", precision=precision, dimension=3,
        matrix=matrix, translation=translation, center=center,
    )
    path = tmp_path / "t.mat"
    ants.write_transform(transform, str(path))
    ras = ants_affine_to_ras(path)
    assert ras.shape == (4, 4)
    np.testing.assert_allclose(ras[3], [0, 0, 0, 1])

    points_ras = np.array(
        [[0.0, 0.0, 0.0], [60.0, -20.0, 15.0], [-45.0, 70.0, -30.0], [10.0, -30.0, 25.0]]
    )
    flip = LPS_TO_RAS[:3, :3]
    for p in points_ras:
        q_lps = ants.apply_ants_transform_to_point(transform, tuple(flip @ p))
        expected_ras = flip @ np.asarray(q_lps)
        np.testing.assert_allclose(ras[:3, :3] @ p + ras[:3, 3], expected_ras, atol=1e-3)
    # LPS_TO_RAS is its own inverse
    np.testing.assert_array_equal(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))


def test_ants_affine_to_ras_identity_and_translation(tmp_path):
    ants = pytest.importorskip("ants")
    ident = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(ident, str(tmp_path / "id.mat"))
    np.testing.assert_allclose(ants_affine_to_ras(tmp_path / "id.mat"), np.eye(4), atol=1e-7)
    # an LPS translation (+5 L, +2 P, +3 S) is (-5, -2, +3) in RAS
    moved = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, translation=(5.0, 2.0, 3.0)
    )
    ants.write_transform(moved, str(tmp_path / "t.mat"))
    expected = np.eye(4)
    expected[:3, 3] = (-5.0, -2.0, 3.0)
    np.testing.assert_allclose(ants_affine_to_ras(tmp_path / "t.mat"), expected, atol=1e-6)


def test_ants_affine_to_ras_refuses_other_files(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "other.mat", {"something": np.zeros(3)}, format="4")
    with pytest.raises(ValueError, match="not an ITK affine transform"):
        ants_affine_to_ras(tmp_path / "other.mat")
    savemat(tmp_path / "2d.mat", {"AffineTransform_double_2_2": np.zeros((6, 1)), "fixed": np.zeros((2, 1))},
            format="4")
    with pytest.raises(ValueError, match="3D affine"):
        ants_affine_to_ras(tmp_path / "2d.mat")


# --------------------------------------------------------------------------- grid measures


def test_voxel_volume_and_sizes():
    assert voxel_volume_ml(np.eye(4)) == pytest.approx(0.001)
    assert voxel_volume_ml(np.diag([0.5, 0.5, 6.0, 1.0])) == pytest.approx(1.5e-3)
    # flips do not make volumes negative
    assert voxel_volume_ml(np.diag([-0.9, 0.9, 5.0, 1.0])) == pytest.approx(0.9 * 0.9 * 5 / 1000)
    tilted = _tilted(voxel=(0.5, 0.5, 5.0), tilt_deg=30.0)
    # a sheared grid: |det| = vx * vy * cos(tilt) * vz, less than the product of the zooms
    assert voxel_volume_ml(tilted) == pytest.approx(0.5 * 0.5 * np.cos(np.deg2rad(30)) * 5 / 1000)
    assert voxel_sizes(tilted) == pytest.approx((0.5, 0.5, 5.0))


def test_shear_degrees():
    assert shear_degrees(np.eye(4)) == pytest.approx(0.0, abs=1e-9)
    assert shear_degrees(np.diag([0.5, 0.5, 6.0, 1.0])) == pytest.approx(0.0, abs=1e-9)
    # an oblique but orthogonal grid (rotated, flipped, anisotropic) has no shear
    angle = np.deg2rad(23.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    oblique = _affine(rotation @ np.diag([-0.8, 0.8, 4.0]), (1, 2, 3))
    assert shear_degrees(oblique) == pytest.approx(0.0, abs=1e-6)
    # a gantry-tilted phantom grid
    tilted = phantom_affine((0.45, 0.45, 5.0), (512, 512, 32), tilt_deg=18.5)
    assert shear_degrees(tilted) == pytest.approx(18.5, abs=1e-6)
    assert shear_degrees(phantom_affine((0.9, 0.9, 5.0), (256, 256, 32))) == pytest.approx(0.0, abs=1e-9)


def test_world_aligned_grid_covers_the_mask():
    affine = _tilted(voxel=(0.9, 0.9, 5.0), tilt_deg=20.0, offset=(50.0, -80.0, -40.0))
    mask = np.zeros((60, 70, 12), dtype=bool)
    mask[10:50, 5:66, 2:11] = True
    mask[55, 3, 0] = True  # an outlier voxel must be covered too
    spacing, margin = 2.0, 10.0
    shape, grid = world_aligned_grid(mask, affine, spacing, margin_mm=margin)
    assert len(shape) == 3 and all(isinstance(n, int) for n in shape)
    np.testing.assert_array_equal(grid[:3, :3], np.eye(3) * spacing)
    np.testing.assert_array_equal(grid[3], [0, 0, 0, 1])
    world = _world(affine, np.argwhere(mask))
    ijk = _voxel(grid, world)
    # every mask voxel is inside the grid with (at least almost) the requested margin
    assert (ijk >= margin / spacing - 1e-6).all()
    assert (ijk <= np.array(shape) - 1 - margin / spacing + 1).all()
    # ...and the grid is tight: some voxel is near each face
    assert np.allclose(ijk.min(0), margin / spacing, atol=1e-6)
    assert ((np.array(shape) - 1) - ijk.max(0) < margin / spacing + 1).all()
    # resampling the mask onto the grid keeps its volume (within partial volume at 2 mm)
    on_grid = resample(mask.astype(np.float32), affine, shape, grid, order=1)
    volume = mask.sum() * voxel_volume_ml(affine)
    assert on_grid.sum() * voxel_volume_ml(grid) == pytest.approx(volume, rel=0.05)


def test_world_aligned_grid_rejects_empty_mask():
    with pytest.raises(ValueError):
        world_aligned_grid(np.zeros((4, 4, 4), dtype=bool), np.eye(4), 2.0)


def test_resample_onto_a_larger_grid_equals_sampling_every_voxel():
    # resample() samples only the target box the source can reach; the result must be that of
    # sampling every target voxel.
    rng = np.random.default_rng(0)
    source = rng.random((12, 10, 8)).astype(np.float32)
    source_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    source_affine[:3, 3] = [10.0, 14.0, 6.0]
    target_shape, target_affine = (40, 36, 20), np.diag([1.0, 1.2, 2.0, 1.0])
    a = np.deg2rad(20.0)
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    motion[:3, 3] = [3.0, -2.0, 1.0]
    out = resample(source, source_affine, target_shape, target_affine, motion, order=1, cval=-5.0)
    ijk = np.indices(target_shape).reshape(3, -1)
    mapping = np.linalg.inv(source_affine) @ motion @ target_affine
    coords = mapping[:3, :3] @ ijk + mapping[:3, 3:4]
    expected = ndimage.map_coordinates(source, coords, order=1, mode="constant", cval=-5.0, prefilter=False)
    inside = out != -5.0
    assert 0.05 < inside.mean() < 0.9  # the source covers part of the target
    np.testing.assert_allclose(out.ravel(), expected, atol=1e-4)


def test_resample_refuses_orders_above_linear():
    with pytest.raises(ValueError, match="order"):
        resample(np.zeros((4, 4, 4), np.float32), np.eye(4), (4, 4, 4), np.eye(4), order=3)


def test_bounding_box_grows_by_the_margin_inside_the_array_and_shifts_the_affine():
    from ichseg.pipeline.geometry import bounding_box, box_affine

    mask = np.zeros((10, 12, 8), bool)
    mask[2:4, 5, 6:8] = True
    assert bounding_box(mask) == (slice(2, 4), slice(5, 6), slice(6, 8))
    assert bounding_box(mask, (1, 2, 3)) == (slice(1, 5), slice(3, 8), slice(3, 8))  # kept inside
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None
    affine = np.diag([0.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-10, 5, 1)
    box = bounding_box(mask)
    cropped = box_affine(affine, box)
    # voxel (0, 0, 0) of the crop is voxel (2, 5, 6) of the whole
    np.testing.assert_allclose(cropped @ [0, 0, 0, 1], affine @ [2, 5, 6, 1])


def test_resample_voxel_mean_is_the_mean_over_each_thick_slice(rng):
    # Source: 1 mm voxels. Target: 1 x 1 x 5 mm, slice k centred on source plane 2 + 5k, so
    # the five samples of a slice fall on source voxel centres and the mean is exact.
    data = rng.normal(size=(6, 7, 15)).astype(np.float32)
    target = _affine(np.diag([1.0, 1.0, 5.0]), (0.0, 0.0, 2.0))
    mean = resample_voxel_mean(data, np.eye(4), (6, 7, 3), target)
    expected = data.reshape(6, 7, 3, 5).mean(axis=-1)
    np.testing.assert_allclose(mean, expected, atol=1e-5)
    # sampling at the centres alone gives the middle plane of each slice, not the mean
    centre = resample(data, np.eye(4), (6, 7, 3), target)
    np.testing.assert_allclose(centre, data[:, :, 2::5], atol=1e-6)
    assert not np.allclose(centre, expected, atol=1e-2)


def test_resample_voxel_mean_of_a_half_filled_slice_is_one_half():
    # A binary slab (1 mm source) that fills the upper half of a 6 mm target slice: slice 0
    # is sampled on planes 7-12 (source planes 10 and up filled), slice 1 on planes 13-18.
    # The scan is 2 mm higher in the world than the source (target_to_source shifts it back).
    data = np.zeros((5, 5, 24), dtype=np.float32)
    data[:, :, 10:] = 1.0
    target = _affine(np.diag([1.0, 1.0, 6.0]), (0.0, 0.0, 11.5))
    shift = _affine(np.eye(3), (0.0, 0.0, -2.0))
    mean = resample_voxel_mean(data, np.eye(4), (5, 5, 2), target, shift)
    np.testing.assert_allclose(mean[2, 2, 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(mean[2, 2, 1], 1.0, atol=1e-6)
    multichannel = resample_voxel_mean(np.stack([data, 1 - data]), np.eye(4), (5, 5, 2), target, shift)
    np.testing.assert_allclose(multichannel.sum(axis=0), 1.0, atol=1e-6)
