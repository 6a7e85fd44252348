"""Hemorrhage edges decided by partial volume (pipeline/refine.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.pipeline.labels import LABELS
from ichseg.pipeline.refine import refine_partial_volume

IPH = next(lab.index for lab in LABELS if lab.abbreviation == "IPH")
OED = next(lab.index for lab in LABELS if lab.abbreviation == "OED")
TISSUE_HU, CLOT_HU = 35.0, 65.0
#: 0.5 x 0.5 mm pixels, 5 mm slices: the slices a lesion's top and bottom faces cross hold
#: part clot and part tissue.
AFFINE = np.diag([0.5, 0.5, 5.0, 1.0])


def _scan(top_share: float, bottom_share: float, seed: int = 0):
    """A box of clot over slices 3-6 of tissue, its top face covering ``top_share`` of slice 7
    and its bottom face ``bottom_share`` of slice 2; the network's labels hold slices 2-6."""
    rng = np.random.default_rng(seed)
    shape = (80, 80, 10)
    share = np.zeros(shape, np.float32)
    box = (slice(25, 55), slice(25, 55))
    share[box + (slice(3, 7),)] = 1.0
    share[box + (7,)] = top_share
    share[box + (2,)] = bottom_share
    hu = (share * CLOT_HU + (1 - share) * TISSUE_HU + rng.normal(0, 3, shape)).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[box + (slice(2, 7),)] = IPH
    probs = np.zeros((5,) + shape, np.float32)
    probs[IPH] = np.where(labels == IPH, 0.9, 0.0)
    probs[IPH][box + (7,)] = 0.3  # the network's doubt on the slice it left out
    probs[0] = 1.0 - probs[IPH]
    brain = np.ones(shape, bool)
    return labels, probs, hu, brain


def _slices(labels):
    return sorted({int(z) for z in np.nonzero(labels == IPH)[2]})


def test_a_mostly_covered_slice_joins_and_a_mostly_uncovered_one_leaves():
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.2)
    refined = refine_partial_volume(labels, probs, hu, brain, AFFINE)
    assert _slices(refined) == [3, 4, 5, 6, 7]
    # a voxel that leaves takes its best non-blood class
    assert (refined[30:50, 30:50, 2] == 0).all()


@pytest.mark.parametrize("top, bottom, margin, expected", [
    (0.6, 0.4, 0.2, [2, 3, 4, 5, 6]),  # near one half the network's labels stand
    (0.6, 0.4, 0.0, [3, 4, 5, 6, 7]),  # without a margin the density decides
    (0.4, 0.6, 0.0, [2, 3, 4, 5, 6]),
])
def test_the_density_overrules_the_network_only_beyond_the_margin(top, bottom, margin, expected):
    labels, probs, hu, brain = _scan(top_share=top, bottom_share=bottom, seed=1)
    refined = refine_partial_volume(labels, probs, hu, brain, AFFINE, margin=margin)
    inner = refined[30:50, 30:50]  # away from the in-plane edge
    assert sorted({int(z) for z in np.nonzero(inner == IPH)[2]}) == expected


def test_no_voxel_joins_where_the_network_sees_no_blood():
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.8)
    refined = refine_partial_volume(labels, probs, hu, brain, AFFINE, grow_floor=0.5)
    assert _slices(refined) == [2, 3, 4, 5, 6]


def test_bone_and_the_outside_of_the_brain_never_join():
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.8)
    hu[:, :, 7] = np.where(hu[:, :, 7] > 50, 400.0, hu[:, :, 7])  # the slice above is bone
    assert _slices(refine_partial_volume(labels, probs, hu, brain, AFFINE)) == [2, 3, 4, 5, 6]
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.8)
    brain[:, :, 7] = False
    assert _slices(refine_partial_volume(labels, probs, hu, brain, AFFINE)) == [2, 3, 4, 5, 6]


def test_a_lesion_too_close_to_its_tissue_in_density_is_left_alone():
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.2)
    faint = np.where(hu > 0, TISSUE_HU + (hu - TISSUE_HU) * 0.3, hu)  # 9 HU of contrast
    assert np.array_equal(refine_partial_volume(labels, probs, faint, brain, AFFINE), labels)


def test_a_leaving_voxel_takes_oedema_where_that_is_its_next_class():
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.2)
    probs[OED][:, :, 2] = 0.6
    probs[0][:, :, 2] = 0.05
    refined = refine_partial_volume(labels, probs, hu, brain, AFFINE)
    assert (refined[30:50, 30:50, 2] == OED).all()


def test_no_hemorrhage_is_no_change():
    labels, probs, hu, brain = _scan(top_share=0.8, bottom_share=0.2)
    labels[:] = 0
    assert refine_partial_volume(labels, probs, hu, brain, AFFINE) is labels
