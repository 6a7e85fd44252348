"""Lesions of known volume painted into a head CT (ichseg.pipeline.lesion_insertion)."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ichseg.pipeline.assets import LESION_SHAPES
from ichseg.pipeline.geometry import voxel_volume_ml
from ichseg.pipeline.lesion_insertion import (
    CONVEXITY_FLOOR_MM,
    EAH,
    EXTRA_AXIAL_THICKNESS_MM,
    FALX_MARGIN_MM,
    IPH,
    IVH,
    OEDEMA,
    Appearance,
    NoRoom,
    Shape,
    host_like_noise,
    insert_extra_axial_blood,
    insert_lesion,
    insert_ventricular_blood,
    prepare_host,
    read_shapes,
)
from ichseg.pipeline.phantom import make_head_phantom


@pytest.fixture(scope="module")
def host():
    head = make_head_phantom(voxel_size=(0.9, 0.9, 5.0), shape=(200, 220, 28), hemorrhage_ml=0.0, seed=3)
    return prepare_host("phantom", nib.Nifti1Image(head.data, head.affine))


def _ellipsoid_shape(semi_axes_mm, voxel=(0.45, 0.45, 5.0), name="ellipsoid"):
    n = [int(2 * a / v) + 6 for a, v in zip(semi_axes_mm, voxel)]
    grid = np.indices(n).astype(float)
    centre = [(k - 1) / 2 for k in n]
    q = sum(((g - c) * v / a) ** 2 for g, c, v, a in zip(grid, centre, voxel, semi_axes_mm))
    return Shape(name, q <= 1.0, np.diag([*voxel, 1.0]))


def test_true_volume_equals_the_shape_volume(host):
    shape = _ellipsoid_shape((14.0, 11.0, 12.0))
    analytic = 4 / 3 * np.pi * 14 * 11 * 12 / 1000
    assert shape.volume_ml == pytest.approx(analytic, rel=0.08)  # 5 mm slices: a coarse staircase
    inserted = insert_lesion(host, shape, np.random.default_rng(0))
    # partial-volume fractions sum to the volume of the continuous shape
    assert inserted.volume_ml == pytest.approx(analytic, rel=0.05)
    voxel_ml = voxel_volume_ml(host.affine)
    # the label map (voxels at least half covered) is the truth a tracing would give
    assert (inserted.labels == IPH).sum() * voxel_ml == pytest.approx(inserted.volume_ml, rel=0.1)
    touched = inserted.fraction > 0
    assert host.brain[touched].all() and not host.ignore[touched].any()
    assert (inserted.fraction * host.allowed).sum() >= 0.9 * inserted.fraction.sum()
    # the clot is dense where it covers whole voxels, the rest of the head is untouched
    core = inserted.fraction == 1.0
    assert abs(np.median(inserted.hu[core]) - inserted.appearance.clot_hu) < 6.0
    far = ~np.isin(inserted.labels, (IPH, OEDEMA)) & (inserted.fraction == 0)
    changed = np.abs(inserted.hu - host.hu) > 1e-3
    assert changed[far].mean() < 0.01  # only the oedema rim and its fade change outside


def test_same_seed_same_phantom_other_seed_other_place(host):
    shape = _ellipsoid_shape((8.0, 6.0, 7.0))
    a = insert_lesion(host, shape, np.random.default_rng(5))
    b = insert_lesion(host, shape, np.random.default_rng(5))
    c = insert_lesion(host, shape, np.random.default_rng(6))
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.centre_ras != c.centre_ras


def test_oedema_rim_is_darker_and_labelled(host):
    shape = _ellipsoid_shape((10.0, 9.0, 10.0))
    look = Appearance(clot_hu=65.0, texture_hu=3.0, texture_mm=2.0, rim_mm=4.0, rim_drop_hu=10.0)
    inserted = insert_lesion(host, shape, np.random.default_rng(1), look)
    rim = inserted.labels == OEDEMA
    assert rim.sum() > 0.2 * (inserted.labels == IPH).sum()
    assert np.median((host.hu - inserted.hu)[rim]) > 5.0


def test_a_shape_too_large_finds_no_room(host):
    with pytest.raises(NoRoom, match="no room"):
        insert_lesion(host, _ellipsoid_shape((90.0, 100.0, 70.0)), np.random.default_rng(0), tries=5)


@pytest.mark.realdata
def test_real_shapes_split_as_published(asset):
    archive = asset(LESION_SHAPES)
    test = read_shapes(archive, "test")
    assert 90 <= len(test) <= 110
    assert all(s.mask.any() and s.volume_ml > 0 for s in test)
    names = {s.name for s in test}
    assert not names & {s.name for s in read_shapes(archive, "val")}


def test_a_normal_heads_dense_regions_are_scored_but_still_kept_away():
    head = make_head_phantom(voxel_size=(0.9, 0.9, 5.0), shape=(200, 220, 28), hemorrhage_ml=0.0, seed=3)
    hu = head.data.astype(np.float32).copy()
    hu[95:105, 105:115, 12:15] = 80.0  # a calcification in the brain
    image = nib.Nifti1Image(hu, head.affine)
    patient, normal = prepare_host("patient", image), prepare_host("normal", image, normal=True)
    assert patient.dense[100, 110, 13] and normal.dense[100, 110, 13]
    assert patient.ignore[100, 110, 13] and not normal.ignore.any()
    assert (patient.allowed == normal.allowed).all()
    # the same seed places the lesion at the same place, away from the calcification
    shape = _ellipsoid_shape((8.0, 6.0, 7.0))
    a = insert_lesion(patient, shape, np.random.default_rng(5))
    b = insert_lesion(normal, shape, np.random.default_rng(5))
    assert a.centre_ras == b.centre_ras
    assert not normal.dense[b.fraction > 0].any()


def _ventricular(host, seed):
    return insert_ventricular_blood(host, np.random.default_rng(seed))


def test_ventricles_are_the_phantoms_two_lateral_ventricles(host):
    space = host.ventricles
    world = np.argwhere(space) @ host.affine[:3, :3].T + host.affine[:3, 3]
    # the phantom paints two ellipsoids of semi-axes 5, 28 and 9 mm, 18 mm apart, and no other
    # deep CSF: nothing else may come in
    for side in (world[:, 0] < world[:, 0].mean(), world[:, 0] > world[:, 0].mean()):
        extent = np.ptp(world[side], axis=0)
        assert extent[0] < 10.0 + 0.9 and extent[1] < 56.0 + 0.9 and extent[2] < 18.0 + 5.0
    assert np.ptp(world[:, 0]) < 28.0 + 0.9
    assert 2 * 4.5 < space.sum() * voxel_volume_ml(host.affine) < 2 * 5.5  # two of 4/3 pi 5 28 9 mm3


def test_ventricular_blood_settles_behind_a_level_within_the_ventricles(host):
    space = host.ventricles
    voxel_ml = voxel_volume_ml(host.affine)
    for seed in range(6):
        blood = _ventricular(host, seed)
        record = blood.record()
        touched = blood.fraction > 0
        assert space[touched].all()
        assert blood.volume_ml == pytest.approx(blood.fraction.sum() * voxel_ml)
        assert ((blood.labels == IVH) == (blood.fraction >= 0.5)).all()
        # the share it fills of its side's ventricle, from the back (lowest y in RAS)
        world = np.argwhere(space) @ host.affine[:3, :3].T + host.affine[:3, 3]
        midline = np.median(world[:, 0])
        sides = {"left": world[:, 0] < midline, "right": world[:, 0] >= midline}
        side = sides.get(record["side"], np.ones(len(world), bool))
        assert blood.volume_ml == pytest.approx(record["fill_share"] * side.sum() * voxel_ml, rel=0.15, abs=0.1)
        filled = np.argwhere(blood.fraction == 1.0) @ host.affine[:3, :3].T + host.affine[:3, 3]
        assert (sides["left"].any() and sides["right"].any())
        if record["side"] != "both":
            other = sides["right" if record["side"] == "left" else "left"]
            assert not (blood.fraction[tuple(np.argwhere(space)[other].T)] > 0).any()
        untouched = ~(blood.fraction[tuple(np.argwhere(space).T)] > 0)
        assert filled[:, 1].max() < world[side & untouched, 1].min()
        core = blood.fraction == 1.0
        assert abs(np.median(blood.hu[core]) - blood.appearance.clot_hu) < 6.0
        assert (blood.hu[~touched] == host.hu[~touched]).mean() > 0.99
        assert not (blood.labels == OEDEMA).any()


def test_ventricular_blood_is_seeded_and_both_sides_come_up(host):
    a, b = _ventricular(host, 3), _ventricular(host, 3)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.record() == b.record()
    assert {_ventricular(host, s).record()["side"] for s in range(12)} == {"left", "right", "both"}


def test_a_denser_ventricular_range_changes_the_density_only(host):
    """``--ivh-hu``: the same seed places the same blood; only its density is drawn elsewhere."""
    dense = Appearance.draw_ventricular(np.random.default_rng(5), clot_hu=(55.0, 75.0))
    assert 55.0 <= dense.clot_hu <= 75.0
    draws = [Appearance.draw_ventricular(np.random.default_rng(s), clot_hu=(60.0, 60.0)).clot_hu for s in range(5)]
    assert draws == [60.0] * 5
    rng = np.random.default_rng(7)
    denser = insert_ventricular_blood(host, rng, Appearance.draw_ventricular(rng, clot_hu=(55.0, 75.0)))
    usual = _ventricular(host, 7)
    np.testing.assert_array_equal(denser.fraction, usual.fraction)
    assert {k: v for k, v in denser.record().items() if k != "clot_hu"} == \
        {k: v for k, v in usual.record().items() if k != "clot_hu"}
    assert denser.appearance.clot_hu >= 55.0


def test_a_head_without_ventricles_has_no_room_for_ventricular_blood():
    head = make_head_phantom(voxel_size=(0.9, 0.9, 5.0), shape=(200, 220, 28), hemorrhage_ml=0.0, seed=3)
    hu = head.data.astype(np.float32).copy()
    hu[(hu > -10) & (hu < 18)] = 30.0  # every CSF voxel turned to tissue
    flat = prepare_host("no-csf", nib.Nifti1Image(hu, head.affine))
    with pytest.raises(NoRoom, match="no ventricle"):
        insert_ventricular_blood(flat, np.random.default_rng(0))


def test_extra_axial_blood_is_a_crescent_along_the_inner_table_on_one_side(host):
    spacing = np.sqrt((host.affine[:3, :3] ** 2).sum(0))
    voxel_ml = voxel_volume_ml(host.affine)
    depth = ndi.distance_transform_edt(host.brain, sampling=spacing)
    midline, _, level = (np.argwhere(host.brain) @ host.affine[:3, :3].T + host.affine[:3, 3]).mean(0)
    sides = set()
    for seed in range(6):
        blood = insert_extra_axial_blood(host, np.random.default_rng(seed))
        record = blood.record()
        sides.add(record["side"])
        touched = blood.fraction > 0
        assert touched.any() and host.brain[touched].all()
        assert not (host.dense & touched).any()
        assert blood.volume_ml == pytest.approx(blood.fraction.sum() * voxel_ml)
        assert ((blood.labels == EAH) == (blood.fraction >= 0.5)).all()
        assert not (blood.labels == OEDEMA).any()
        # against the edge of the intracranial mask, no deeper than its thickness
        assert depth[touched].min() <= spacing.max()
        assert depth[touched].max() <= record["thickness_mm"] + spacing.max()
        assert EXTRA_AXIAL_THICKNESS_MM[0] <= record["thickness_mm"] <= EXTRA_AXIAL_THICKNESS_MM[1]
        # on one side of the falx
        x = (np.argwhere(touched) @ host.affine[:3, :3].T + host.affine[:3, 3])[:, 0] - midline
        sign = 1 if record["side"] == "right" else -1
        assert (sign * x > FALX_MARGIN_MM - spacing[0]).all()
        # over the convexity, not the skull base
        z = (np.argwhere(touched) @ host.affine[:3, :3].T + host.affine[:3, 3])[:, 2]
        assert z.min() > level - CONVEXITY_FLOOR_MM - spacing[2] / 2
        # the clot replaces what it covers, sulci included, at its own density: each voxel
        # mixes host and clot by its fraction (thin crescents cut by 5 mm slices are all partial)
        share = blood.fraction[touched]
        mixed = host.hu[touched] + share * (blood.appearance.clot_hu - host.hu[touched])
        assert abs(np.median(blood.hu[touched] - mixed)) < 1.5
        core = blood.fraction >= 0.9
        if core.sum() > 50:
            assert abs(np.median(blood.hu[core]) - blood.appearance.clot_hu) < blood.appearance.texture_hu + 1.0
        assert (blood.hu[~touched] == host.hu[~touched]).all()
    assert sides == {"left", "right"}
    again = insert_extra_axial_blood(host, np.random.default_rng(4))
    np.testing.assert_array_equal(again.hu, insert_extra_axial_blood(host, np.random.default_rng(4)).hu)


def test_extra_axial_blood_finds_no_room_where_the_convexity_is_dense(host):
    dense_everywhere = dataclasses.replace(host, dense=host.brain.copy())
    with pytest.raises(NoRoom, match="clear of dense tissue"):
        insert_extra_axial_blood(dense_everywhere, np.random.default_rng(0), tries=3)


def test_noise_drawn_for_a_clot_has_the_hosts_fine_detail():
    spacing = (0.5, 0.5, 5.0)
    rng = np.random.default_rng(0)
    grain = ndi.gaussian_filter(rng.standard_normal((160, 160, 4)).astype(np.float32), sigma=(1.6, 0.8, 0))
    hu = 30.0 + 9.0 * grain  # tissue whose noise is anisotropic and coarser than the drawn grain
    sigma = [1.5 / s for s in spacing]

    def fine_spread(x):
        fine = x - ndi.gaussian_filter(x, sigma=sigma)
        return 1.4826 * np.median(np.abs(fine - np.median(fine)))

    local_mean = ndi.gaussian_filter(hu, sigma=sigma)
    noise = host_like_noise(hu, local_mean, np.ones(hu.shape, bool), spacing, np.random.default_rng(1))
    assert fine_spread(noise) == pytest.approx(fine_spread(hu), rel=0.1)
    noisier = 30.0 + 18.0 * grain
    louder = host_like_noise(noisier, ndi.gaussian_filter(noisier, sigma=sigma), np.ones(hu.shape, bool), spacing,
                             np.random.default_rng(1))
    assert fine_spread(louder) == pytest.approx(2 * fine_spread(noise), rel=0.05)
    np.testing.assert_array_equal(noise, host_like_noise(hu, local_mean, np.ones(hu.shape, bool), spacing,
                                                         np.random.default_rng(1)))
    # no brain tissue to learn the level from: no noise rather than a guess
    empty = host_like_noise(hu, local_mean + 100.0, np.ones(hu.shape, bool), spacing, np.random.default_rng(1))
    assert not empty.any()
