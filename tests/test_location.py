"""Hemorrhage location from the BLAST-CT atlas: every region grouped, known lesions placed."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ichseg.pipeline import assets
from ichseg.pipeline.labels import IPH_INDEX
from ichseg.pipeline.location import (
    GROUP_OF_REGION,
    locate,
    read_region_names,
    side_map,
)

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def atlas(asset):
    img = nib.load(asset(assets.ATLAS))
    return img, np.asanyarray(img.dataobj).astype(np.int64), read_region_names(asset(assets.ATLAS_LABELS))


def test_every_atlas_region_has_a_group(atlas):
    _, _, names = atlas
    assert len(names) == 31
    assert all(name in GROUP_OF_REGION for name in names.values())


@pytest.mark.parametrize(("region", "location", "side"), [
    ("RightThalamusProper", "deep", "right"),
    ("LeftBasalganglia-lentiform-nucleus", "deep", "left"),
    ("LeftCerebellum", "infratentorial", "left"),
    ("RightOccipitalLobe", "lobar", "right"),
    ("LeftFrontalLobe-lateral", "lobar", "left"),
])
def test_a_lesion_in_a_known_region(atlas, region, location, side):
    img, regions, names = atlas
    index = next(i for i, n in names.items() if n == region)
    inside = ndimage.binary_erosion(regions == index, iterations=2)
    centre = np.argwhere(inside)[len(np.argwhere(inside)) // 2]
    labels = np.zeros(regions.shape, np.uint8)
    grid = np.indices(regions.shape, sparse=True)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 4 ** 2
    labels[ball & (regions == index)] = IPH_INDEX
    voxel_ml = 0.001  # 1 mm template grid
    rows, summary = locate(labels, regions, side_map(regions.shape, img.affine), voxel_ml, names)
    assert summary["location"] == location and summary["side"] == side
    expected = np.count_nonzero(labels) * voxel_ml
    assert summary[f"{location}_ml"] == pytest.approx(expected, abs=1e-4)
    assert next(r for r in rows if r["region"] == region)["iph_ml"] == pytest.approx(expected, abs=1e-4)
    assert summary["left_ml"] + summary["right_ml"] == pytest.approx(expected, abs=1e-4)


def test_no_iph_gives_no_location(atlas):
    img, regions, names = atlas
    _, summary = locate(np.zeros(regions.shape, np.uint8), regions, side_map(regions.shape, img.affine), 0.001, names)
    assert summary["location"] is None and summary["side"] is None and summary["deep_ml"] == 0


def test_a_few_voxels_have_no_location(atlas):
    img, regions, names = atlas
    labels = np.zeros(regions.shape, np.uint8)
    labels[tuple(np.argwhere(regions == 30)[0])] = IPH_INDEX  # one voxel of thalamus
    _, summary = locate(labels, regions, side_map(regions.shape, img.affine), 0.001, names)
    assert summary["deep_ml"] == pytest.approx(0.001)
    assert summary["location"] is None and summary["side"] is None


def test_ivh_zone_is_the_atlas_ventricles_and_the_margin(atlas):
    from ichseg.pipeline.labels import EAH_INDEX, IVH_INDEX
    from ichseg.pipeline.location import class_zones

    img, regions, names = atlas
    ventricle_ids = [i for i, n in names.items() if GROUP_OF_REGION[n] == "intraventricular"]
    ventricles = np.isin(regions, ventricle_ids)
    assert ventricles.any()

    def ivh_zone(transform, margin):
        zones = class_zones(img, names, regions.shape, img.affine, transform, ivh_margin_mm=margin)
        assert set(zones) == {IVH_INDEX}
        return zones[IVH_INDEX]

    np.testing.assert_array_equal(ivh_zone(np.eye(4), 0.0), ventricles)
    grown = ivh_zone(np.eye(4), 3.0)
    assert (grown & ventricles).sum() == ventricles.sum() and grown.sum() > 1.5 * ventricles.sum()
    np.testing.assert_array_equal(grown, ndimage.distance_transform_edt(~ventricles) <= 3.0)
    # a scan shifted 10 mm to the right of the template: the zone is found 10 mm further left
    # in the scan's voxels (template -> scan points: x + 10)
    shift = np.eye(4)
    shift[0, 3] = 10.0
    step = int(round(10.0 / abs(img.affine[0, 0])))
    direction = int(np.sign(img.affine[0, 0]))
    np.testing.assert_array_equal(np.roll(ventricles, direction * step, axis=0)[20:-20], ivh_zone(shift, 0.0)[20:-20])
    # no margin, no zone; the extra-axial zone needs the intracranial mask
    assert class_zones(img, names, regions.shape, img.affine, np.eye(4)) == {}
    with pytest.raises(ValueError, match="intracranial mask"):
        class_zones(img, names, regions.shape, img.affine, np.eye(4), eah_margin_mm=3.0)
    both = class_zones(img, names, regions.shape, img.affine, np.eye(4), 3.0, 3.0, brain=regions > 0)
    assert list(both) == [IVH_INDEX, EAH_INDEX] and not (both[EAH_INDEX] & ~(regions > 0)).any()


def test_extra_axial_zone_is_the_surface_the_falx_and_the_tentorium():
    from ichseg.pipeline.location import extra_axial_zone

    names = {1: "LeftCerebellum", 2: "LeftParietalLobe"}
    shape, affine = (61, 61, 61), np.eye(4)
    grid = np.indices(shape) - 30
    brain = (grid ** 2).sum(axis=0) <= 28 ** 2
    sides = np.where(grid[0] < 0, 1, 2)
    regions = np.where(grid[2] < -12, 1, 2) * brain
    zone = extra_axial_zone(brain, regions, sides, names, affine, 3.0)
    assert not zone[~brain].any()
    for point, expected in {(30 + 26, 30, 30): True,      # 2 mm under the surface
                            (30 + 12, 30, 30): False,     # deep, off the midline
                            (30, 30 + 10, 30 + 5): True,  # on the midline plane: falx
                            (30 + 15, 30, 30 - 11): True,  # just above the infratentorial block
                            (30 + 15, 30, 30 - 5): False}.items():
        assert zone[point] == expected, point
    assert extra_axial_zone(brain, regions, sides, names, affine, 0.0).sum() < zone.sum()


def test_class_zones_near_a_mask_equal_the_whole_scans_there(atlas):
    """Zones computed in a box around the labelled voxels are exact on them (and empty where
    nothing is labelled), on a 0.5 x 0.5 x 5 mm grid like a real CT's."""
    from ichseg.pipeline.labels import EAH_INDEX, IVH_INDEX
    from ichseg.pipeline.location import class_zones

    img, regions, names = atlas
    shape = (300, 360, 30)
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    affine[:3, 3] = (-75.0, -100.0, -50.0)
    grid = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    brain = (((grid - (0.0, -10.0, 20.0)) / (65.0, 85.0, 70.0)) ** 2).sum(axis=1).reshape(shape) <= 1
    full = class_zones(img, names, shape, affine, np.eye(4), 1.0, 6.0, brain)
    near = np.zeros(shape, dtype=bool)
    near[140:160, 150:175, 12:14] = True   # deep, by the ventricles
    near[10:20, 170:180, 15] = True        # at the brain's edge
    cropped = class_zones(img, names, shape, affine, np.eye(4), 1.0, 6.0, brain, near=near)
    for index in (IVH_INDEX, EAH_INDEX):
        assert full[index][near].any() and not full[index][near].all()  # the test reaches both sides
        np.testing.assert_array_equal(cropped[index][near], full[index][near])
    assert class_zones(img, names, shape, affine, np.eye(4), 1.0, 6.0, brain, near=np.zeros(shape, bool)) == {}
