"""Region of interest and cropping around the brain (ichseg.pipeline.segmentation)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ichseg.pipeline.segmentation import crop_to_roi, region_of_interest


def _reference_roi(mask, spacing, margin_mm):
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.8, 2.5)])
def test_roi_is_the_mask_grown_by_the_margin(spacing):
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 50, 30), dtype=bool)
    mask[12:25, 20:31, 10:18] = rng.random((13, 11, 8)) > 0.3
    mask[0, 0, 0] = mask[39, 49, 29] = True  # at the grid's corners: the box is clipped
    affine = np.diag([*spacing, 1.0])
    for margin in (0.0, 2.0, 5.0):
        roi = region_of_interest(mask, affine, margin)
        np.testing.assert_array_equal(roi, _reference_roi(mask, spacing, margin) if margin else mask)


def test_roi_of_an_empty_mask_is_empty():
    empty = np.zeros((10, 10, 10), dtype=bool)
    assert not region_of_interest(empty, np.eye(4), 5.0).any()


def test_crop_to_roi_moves_the_affine_with_the_box():
    volume = np.arange(2 * 6 * 7 * 8, dtype=np.float32).reshape(2, 6, 7, 8)
    roi = np.zeros((6, 7, 8), dtype=bool)
    roi[2:4, 1:5, 3] = True
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-10, 5, 1)
    box, box_affine = crop_to_roi(volume, roi, affine)
    np.testing.assert_array_equal(box, volume[:, 2:4, 1:5, 3:4])
    np.testing.assert_allclose(box_affine[:3, 3], affine[:3, :3] @ [2, 1, 3] + affine[:3, 3])


def test_label_map_threshold_on_total_hemorrhage():
    from ichseg.pipeline.segmentation import label_map

    # classes: background, IPH, EAH, oedema, IVH
    probs = np.array([
        [0.54, 0.20, 0.06, 0.00, 0.20],  # blood 0.46 in total, no single class beats background
        [0.60, 0.10, 0.10, 0.15, 0.05],  # blood 0.25: the better of background and oedema
        [0.20, 0.05, 0.05, 0.65, 0.05],  # oedema
        [0.30, 0.30, 0.00, 0.00, 0.40],  # blood, IVH the most likely bleeding class
    ], dtype=np.float32).T[:, :, None, None]
    assert label_map(probs, None).ravel().tolist() == [0, 0, 3, 4]
    assert label_map(probs, 0.45).ravel().tolist() == [1, 0, 3, 4]
    assert label_map(probs, 0.5).ravel().tolist() == [0, 0, 3, 4]
    assert label_map(probs, 0.2).ravel().tolist() == [1, 1, 3, 4]


def test_label_map_hemorrhage_seed_keeps_only_regions_that_reach_it():
    from ichseg.pipeline.segmentation import label_map

    # classes: background, IPH, EAH, oedema, IVH; three blood regions along a line
    probs = np.zeros((5, 1, 1, 9), dtype=np.float32)
    probs[0] = 1.0
    weak_eah = [0.3, 0.0, 0.7, 0.0, 0.0]         # blood 0.7
    strong_iph = [0.05, 0.95, 0.0, 0.0, 0.0]     # blood 0.95
    faint_eah = [0.2, 0.0, 0.5, 0.3, 0.0]        # blood 0.5, oedema next
    for x, column in {1: weak_eah, 2: strong_iph, 3: weak_eah, 5: faint_eah, 7: weak_eah}.items():
        probs[:, 0, 0, x] = column
    plain = label_map(probs, 0.45)
    assert plain.ravel().tolist() == [0, 2, 1, 2, 0, 2, 0, 2, 0]
    # the region 1-3 holds a voxel of 0.95 and stays whole; the lone weak voxels go
    seeded = label_map(probs, 0.45, hemorrhage_seed=0.9)
    assert seeded.ravel().tolist() == [0, 2, 1, 2, 0, 3, 0, 0, 0]
    # a region touching a seed only diagonally is one region (26-neighbourhood)
    diagonal = np.zeros((5, 2, 2, 2), dtype=np.float32)
    diagonal[0] = 1.0
    diagonal[:, 0, 0, 0] = strong_iph
    diagonal[:, 1, 1, 1] = weak_eah
    assert label_map(diagonal, 0.45, hemorrhage_seed=0.9)[1, 1, 1] == 2
    assert label_map(probs, 0.45, hemorrhage_seed=0.45).tolist() == plain.tolist()
    assert label_map(probs, None, hemorrhage_seed=0.9).ravel().tolist() == [0, 2, 1, 2, 0, 3, 0, 0, 0]

    # the two steps compose to label_map and leave their input alone
    from ichseg.pipeline.segmentation import (
        blood_left_out_ml,
        keep_seeded_blood,
        threshold_labels,
    )

    before_seed = threshold_labels(probs, 0.45)
    assert before_seed.tolist() == plain.tolist()
    assert keep_seeded_blood(before_seed, probs, 0.9).tolist() == seeded.tolist()
    assert before_seed.tolist() == plain.tolist()
    # the QC column counts what the seed left out: the lone voxels 5 and 7 (0.5 mL each here)
    assert blood_left_out_ml(before_seed, seeded, 0.5) == pytest.approx(1.0)
    assert blood_left_out_ml(before_seed, keep_seeded_blood(before_seed, probs, None), 0.5) == 0.0
    argmax = threshold_labels(probs, None)
    assert blood_left_out_ml(argmax, keep_seeded_blood(argmax, probs, 0.9), 0.5) == pytest.approx(1.0)


def test_confine_bleeding_classes_moves_regions_that_never_reach_the_zone():
    from ichseg.pipeline.segmentation import confine_bleeding_classes

    # classes: background, IPH, EAH, oedema, IVH; along a line: IVH 1-3 touching the zone at 3,
    # IVH 6-7 far from it (IPH the next bleeding class at 6, EAH at 7), IPH at 9
    labels = np.array([0, 4, 4, 4, 0, 0, 4, 4, 0, 1], dtype=np.uint8)[None, None, :]
    probs = np.zeros((5, *labels.shape), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 0, 0, 6] = [0.1, 0.3, 0.1, 0.0, 0.5]
    probs[:, 0, 0, 7] = [0.1, 0.1, 0.3, 0.0, 0.5]
    zone = np.zeros(labels.shape, dtype=bool)
    zone[0, 0, 3:5] = True
    whole = confine_bleeding_classes(labels, probs, {4: zone})
    assert whole.ravel().tolist() == [0, 4, 4, 4, 0, 0, 1, 2, 0, 1]
    by_voxel = confine_bleeding_classes(labels, probs, {4: zone}, whole_regions=False)
    assert by_voxel.ravel().tolist() == [0, 1, 1, 4, 0, 0, 1, 2, 0, 1]
    # only the bleeding class changes, never what is blood; the input stays as it was
    for moved in (whole, by_voxel):
        assert np.array_equal(np.isin(moved, (1, 2, 4)), np.isin(labels, (1, 2, 4)))
    assert labels.ravel().tolist() == [0, 4, 4, 4, 0, 0, 4, 4, 0, 1]
    # nothing to move: the same array back; every voxel allowed: nothing changes
    assert confine_bleeding_classes(whole, probs, {4: np.ones(labels.shape, bool)}) is whole
    assert confine_bleeding_classes(labels, probs, {4: np.ones(labels.shape, bool)}).tolist() == labels.tolist()


def test_probabilities_to_scan_keeps_ivh_to_the_zone_it_is_given():
    from ichseg.pipeline.segmentation import probabilities_to_scan

    probs = np.zeros((5, 6, 6, 6), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 1:3, 1:3, 1:3] = np.array([0.05, 0.35, 0.0, 0.0, 0.6])[:, None, None, None]
    zone = np.zeros((6, 6, 6), dtype=bool)
    plain, hemorrhage = probabilities_to_scan(probs, np.eye(4), (6, 6, 6), np.eye(4), np.eye(4))
    assert (plain == 4).sum() == 8
    kept, same = probabilities_to_scan(probs, np.eye(4), (6, 6, 6), np.eye(4), np.eye(4), class_zones=lambda near: {4: zone})
    assert (kept == 1).sum() == 8 and not (kept == 4).any()
    np.testing.assert_array_equal(same, hemorrhage)
    zone[2, 2, 2] = True
    near, _ = probabilities_to_scan(probs, np.eye(4), (6, 6, 6), np.eye(4), np.eye(4), class_zones=lambda near: {4: zone})
    np.testing.assert_array_equal(near, plain)


def test_confine_bleeding_classes_works_for_any_bleeding_class_and_for_two_at_once():
    from ichseg.pipeline.segmentation import confine_bleeding_classes

    # classes: background, IPH, EAH, oedema, IVH; EAH at 1-2 away from the zone, IVH next
    labels = np.array([0, 2, 2, 0, 2], dtype=np.uint8)[None, None, :]
    probs = np.zeros((5, *labels.shape), dtype=np.float32)
    probs[:, 0, 0, 1:3] = np.array([0.1, 0.2, 0.4, 0.0, 0.3])[:, None]
    zone = np.zeros(labels.shape, dtype=bool)
    zone[0, 0, 4] = True
    assert confine_bleeding_classes(labels, probs, {2: zone}).ravel().tolist() == [0, 4, 4, 0, 2]
    # IVH at 1-2 outside its zone, EAH its next class but outside EAH's zone too: IPH, whichever
    # order the zones come in
    labels = np.array([0, 4, 4, 0, 2], dtype=np.uint8)[None, None, :]
    ivh_zone = np.zeros(labels.shape, dtype=bool)
    eah_zone = zone
    for zones in ({4: ivh_zone, 2: eah_zone}, {2: eah_zone, 4: ivh_zone}):
        assert confine_bleeding_classes(labels, probs, zones).ravel().tolist() == [0, 1, 1, 0, 2]
    eah_zone = np.ones(labels.shape, dtype=bool)  # where EAH may lie, it takes the voxels
    assert confine_bleeding_classes(labels, probs, {4: ivh_zone, 2: eah_zone}).ravel().tolist() == [0, 2, 2, 0, 2]
