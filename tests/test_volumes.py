"""Label volumes in millilitres (ichseg.pipeline.volumes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ichseg.pipeline.labels import (
    BRAIN_VOLUME_COLUMN,
    FOREGROUND_LABELS,
    TOTAL_HEMORRHAGE_COLUMN,
    VOLUME_COLUMNS,
)
from ichseg.pipeline.phantom import make_head_phantom, phantom_affine
from ichseg.pipeline.volumes import label_volumes_ml

IPH, EAH, OED, IVH = 1, 2, 3, 4


def _column(index: int) -> str:
    return next(lab.volume_column for lab in FOREGROUND_LABELS if lab.index == index)


def test_columns_follow_the_label_table():
    volumes = label_volumes_ml(np.zeros((3, 3, 3), dtype=np.uint8), np.eye(4))
    assert list(volumes) == list(VOLUME_COLUMNS)
    assert [_column(i) for i in (IPH, EAH, OED, IVH)] == ["iph_ml", "eah_ml", "oed_ml", "ivh_ml"]
    assert all(volumes[c] == 0.0 for c in VOLUME_COLUMNS if c != BRAIN_VOLUME_COLUMN)


def test_ten_voxel_cube_at_1mm_is_one_ml():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:12, 5:15, 8:18] = IPH
    volumes = label_volumes_ml(labels, np.eye(4))
    assert volumes["iph_ml"] == pytest.approx(1.0)
    assert volumes[TOTAL_HEMORRHAGE_COLUMN] == pytest.approx(1.0)
    for index in (EAH, OED, IVH):
        assert volumes[_column(index)] == 0.0


def test_anisotropic_voxels():
    affine = np.diag([0.5, 0.5, 6.0, 1.0])  # 1.5 uL per voxel
    labels = np.zeros((40, 40, 10), dtype=np.int16)
    labels[:20, :20, :4] = EAH  # 1600 voxels = 2.4 mL
    labels[30:, 30:, 9] = IVH  # 100 voxels = 0.15 mL
    volumes = label_volumes_ml(labels, affine)
    assert volumes["eah_ml"] == pytest.approx(2.4)
    assert volumes["ivh_ml"] == pytest.approx(0.15)
    assert volumes[TOTAL_HEMORRHAGE_COLUMN] == pytest.approx(2.55)
    # a flipped axis (LAS storage) gives the same volumes
    flipped = affine.copy()
    flipped[0, 0] = -0.5
    assert label_volumes_ml(labels, flipped) == pytest.approx(volumes, nan_ok=True)


def test_sheared_affine_uses_the_determinant():
    tilt = 30.0
    affine = phantom_affine((1.0, 1.0, 5.0), (20, 20, 10), tilt_deg=tilt)
    labels = np.zeros((20, 20, 10), dtype=np.uint8)
    labels[:10, :10, :2] = IPH  # 200 voxels
    expected = 200 * 1.0 * 1.0 * 5.0 * math.cos(math.radians(tilt)) / 1000.0
    volumes = label_volumes_ml(labels, affine)
    assert volumes["iph_ml"] == pytest.approx(expected)
    assert volumes["iph_ml"] < 200 * 5.0 / 1000.0  # not the product of the zooms


def test_total_hemorrhage_excludes_oedema():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[0:10, 0:10, 0:10] = IPH  # 1000
    labels[10:20, 0:10, 0:5] = EAH  # 500
    labels[20:30, 0:10, 0:2] = IVH  # 200
    labels[0:30, 20:30, 0:10] = OED  # 3000
    volumes = label_volumes_ml(labels, np.eye(4))
    assert volumes["iph_ml"] == pytest.approx(1.0)
    assert volumes["eah_ml"] == pytest.approx(0.5)
    assert volumes["ivh_ml"] == pytest.approx(0.2)
    assert volumes["oed_ml"] == pytest.approx(3.0)
    assert volumes[TOTAL_HEMORRHAGE_COLUMN] == pytest.approx(1.7)


def test_brain_volume_with_and_without_mask():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 uL per voxel
    assert math.isnan(label_volumes_ml(labels, affine)[BRAIN_VOLUME_COLUMN])
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[:5, :5, :5] = True  # 125 voxels = 1 mL
    assert label_volumes_ml(labels, affine, mask)[BRAIN_VOLUME_COLUMN] == pytest.approx(1.0)
    # a uint8 mask of 0/1 (as read from NIfTI) counts the same
    assert label_volumes_ml(labels, affine, mask.astype(np.uint8))[
        BRAIN_VOLUME_COLUMN
    ] == pytest.approx(1.0)


def test_labels_may_come_as_floats_from_nifti():
    labels = np.zeros((10, 10, 10), dtype=np.float32)
    labels[:5, :2, :1] = float(IVH)
    assert label_volumes_ml(labels, np.eye(4))["ivh_ml"] == pytest.approx(0.01)


@pytest.mark.parametrize("tilt", [0.0, 18.5])
def test_phantom_hemorrhage_volume(tilt):
    phantom = make_head_phantom(
        voxel_size=(1.5, 1.5, 5.0), shape=(120, 140, 32), hemorrhage_ml=12.0, tilt_deg=tilt
    )
    labels = phantom.hemorrhage_mask.astype(np.uint8) * IPH
    volumes = label_volumes_ml(labels, phantom.affine, phantom.brain_mask)
    count = int(phantom.hemorrhage_mask.sum())
    assert volumes["iph_ml"] == pytest.approx(count * phantom.voxel_ml)
    # the phantom's blob is built with exactly round(12 mL / voxel volume) voxels
    assert volumes[TOTAL_HEMORRHAGE_COLUMN] == pytest.approx(12.0, abs=phantom.voxel_ml)
    assert volumes[BRAIN_VOLUME_COLUMN] == pytest.approx(phantom.brain_mask.sum() * phantom.voxel_ml)
    assert 1300 < volumes[BRAIN_VOLUME_COLUMN] < 1700
