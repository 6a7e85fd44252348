"""The synthetic head-CT phantom and the demo BIDS dataset built from it."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ichseg.bids_app.demo import DemoDatasetError, main, write_demo_dataset
from ichseg.pipeline.phantom import HEAD_CENTRE_RAS, make_head_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_head_phantom()


@pytest.fixture(scope="module")
def no_bleed():
    return make_head_phantom(hemorrhage_ml=0.0, seed=1)


def _world(affine, ijk):
    return affine[:3, :3] @ np.asarray(ijk, dtype=float) + affine[:3, 3]


def test_shapes_types_and_orientation(phantom):
    assert phantom.data.shape == (256, 256, 32)
    assert phantom.data.dtype == np.int16
    for mask in (phantom.brain_mask, phantom.hemorrhage_mask):
        assert mask.shape == phantom.data.shape and mask.dtype == bool
    assert phantom.affine.shape == (4, 4)
    # Scanner-like LAS storage, as real head CTs come from dcm2niix.
    assert nib.aff2axcodes(phantom.affine) == ("L", "A", "S")
    assert np.allclose(np.linalg.norm(phantom.affine[:3, :3], axis=0), phantom.voxel_size)
    assert phantom.voxel_size == (0.9, 0.9, 5.0)
    assert phantom.voxel_ml == pytest.approx(0.9 * 0.9 * 5.0 / 1000)


def test_head_is_adult_sized_and_centred_for_mni(phantom):
    icv_ml = phantom.brain_mask.sum() * phantom.voxel_ml
    assert 1300 < icv_ml < 1700
    centre = _world(phantom.affine, ndi.center_of_mass(phantom.brain_mask))
    assert np.allclose(centre, HEAD_CENTRE_RAS, atol=5.0)
    # The whole intracranial space is inside the field of view (nothing cut at the edges).
    b = phantom.brain_mask
    assert not (b[0].any() or b[-1].any() or b[:, 0].any() or b[:, -1].any() or b[:, :, -1].any())


def test_hounsfield_ranges(phantom):
    d, brain, hem = phantom.data, phantom.brain_mask, phantom.hemorrhage_mask
    parenchyma = brain & ~hem
    assert 25 <= np.median(d[parenchyma]) <= 40
    assert 60 <= d[hem].mean() <= 80
    assert np.percentile(d[hem], 1) > 45  # clearly hyperdense, even with noise
    # Noise about 5 HU: the spread of a flat region (air far from the head).
    assert 3 < d[:20, :20, :].std() < 7
    assert abs(np.median(d[:20, :20, :]) + 1000) < 5
    # Ventricles / CSF near water, skull 800-1500 HU.
    assert (d[brain] < 15).mean() > 0.02
    bone = d > 600
    assert bone.sum() * phantom.voxel_ml > 200  # a whole skull: several hundred mL
    assert 1300 <= np.percentile(d[bone], 95) <= 1600
    assert 700 <= np.percentile(d[bone], 5) <= 1000
    assert d.min() >= -1024


def test_scalp_skull_layers_around_the_brain(phantom):
    d, b = phantom.data, phantom.brain_mask
    vs = phantom.voxel_size
    # Every other voxel in-plane keeps the EDT fast; 1.8 mm is fine for 4 mm wide shells.
    d, b = d[::2, ::2], b[::2, ::2]
    dist_out = ndi.distance_transform_edt(~b, sampling=(2 * vs[0], 2 * vs[1], vs[2]))
    skull_shell = (dist_out > 1.5) & (dist_out < 5.5)
    scalp_shell = (dist_out > 8.0) & (dist_out < 10.0) & (d > -300)
    # Away from the foramen magnum and the orbits the skull is continuous bone.
    assert np.median(d[skull_shell]) > 700
    assert 20 <= np.median(d[scalp_shell]) <= 50


def test_default_hematoma_is_20_ml(phantom):
    assert phantom.hemorrhage_mask.sum() * phantom.voxel_ml == pytest.approx(20.0, rel=0.02)


@pytest.mark.parametrize("ml", [5.0, 60.0])
def test_hematoma_volume_location(ml):
    # A coarser grid than the default keeps this fast; the volume must be exact on any grid.
    ph = make_head_phantom(voxel_size=(1.2, 1.2, 5.0), shape=(192, 192, 32), hemorrhage_ml=ml, seed=3)
    got = ph.hemorrhage_mask.sum() * ph.voxel_ml
    assert got == pytest.approx(ml, rel=0.02)
    assert not (ph.hemorrhage_mask & ~ph.brain_mask).any()
    # Left (RAS x < 0) deep grey matter: well inside the brain, not at the surface.
    centre = _world(ph.affine, ndi.center_of_mass(ph.hemorrhage_mask)) - np.asarray(HEAD_CENTRE_RAS)
    assert -40 < centre[0] < -10
    sub = (slice(None, None, 2), slice(None, None, 2))  # every other voxel in-plane: fast
    vs = (2 * ph.voxel_size[0], 2 * ph.voxel_size[1], ph.voxel_size[2])
    depth = ndi.distance_transform_edt(ph.brain_mask[sub], sampling=vs)[ph.hemorrhage_mask[sub]]
    assert depth.min() > 3.0
    assert depth.max() > 15.0


def test_no_hematoma(no_bleed):
    assert not no_bleed.hemorrhage_mask.any()
    assert no_bleed.data[no_bleed.brain_mask].max() < 100


def test_hematoma_too_large_is_an_error():
    with pytest.raises(ValueError):
        make_head_phantom(hemorrhage_ml=5000.0)


def test_deterministic_for_a_seed(phantom, no_bleed):
    again = make_head_phantom()
    assert np.array_equal(again.data, phantom.data)
    assert np.array_equal(again.hemorrhage_mask, phantom.hemorrhage_mask)
    outside = ~phantom.brain_mask
    # Another seed: other noise and texture, even where the hematoma plays no part.
    assert not np.array_equal(no_bleed.data[outside], phantom.data[outside])


def test_tilt_shears_the_affine_not_the_anatomy(phantom):
    tilted = make_head_phantom(tilt_deg=18.5)
    a = tilted.affine
    t = np.deg2rad(18.5)
    # dcm2niix's form for an uncorrected tilted series (compare ge-head_ct): the in-plane
    # A-P column picks up an I-S component; slices still step along the table axis.
    assert a[2, 1] == pytest.approx(0.9 * np.sin(t))
    assert a[1, 1] == pytest.approx(0.9 * np.cos(t))
    assert np.allclose(a[:3, 2], [0, 0, 5.0])
    assert not np.allclose(a[:3, :3] @ a[:3, :3].T, np.diag(np.diag(a[:3, :3] @ a[:3, :3].T)))
    assert np.allclose(phantom.affine[:3, :3], np.diag([-0.9, 0.9, 5.0]))
    # Same head in world space: physical volumes agree, the voxel grid is what changed.
    icv0 = phantom.brain_mask.sum() * phantom.voxel_ml
    icv1 = tilted.brain_mask.sum() * tilted.voxel_ml
    assert icv1 == pytest.approx(icv0, rel=0.01)
    assert tilted.hemorrhage_mask.sum() * tilted.voxel_ml == pytest.approx(20.0, rel=0.02)
    assert not np.array_equal(tilted.brain_mask, phantom.brain_mask)


def test_skull_stripped_variant():
    ph = make_head_phantom(skull=False, seed=2)
    assert (ph.data[~ph.brain_mask] == 0).all()
    assert ph.data.max() < 200
    assert np.median(ph.data[ph.brain_mask]) > 20


def test_other_grids():
    ph = make_head_phantom(voxel_size=(0.6, 0.55, 6.0), shape=(301, 350, 24), hemorrhage_ml=10.0)
    assert ph.data.shape == (301, 350, 24)
    assert ph.hemorrhage_mask.sum() * ph.voxel_ml == pytest.approx(10.0, rel=0.02)
    with pytest.raises(ValueError):
        make_head_phantom(shape=(10, 10))


# --- demo BIDS dataset -----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "bids")


def test_demo_dataset_layout(demo_dir):
    desc = json.loads((demo_dir / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0"
    assert desc["DatasetType"] == "raw"
    assert desc["Name"]
    assert (demo_dir / "README").read_text().strip()
    rows = (demo_dir / "participants.tsv").read_text().splitlines()
    assert rows[0].split("\t")[0] == "participant_id"
    assert [r.split("\t")[0] for r in rows[1:]] == ["sub-01", "sub-02"]
    for label, ml in (("01", 20.0), ("02", 0.0)):
        img = nib.load(demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_ct.nii.gz")
        assert img.shape == (256, 256, 32)
        assert img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
        data = np.asarray(img.dataobj)
        # The hematoma is the one large hyperdense blob (opening drops isolated noisy voxels).
        hyper = ndi.binary_opening((data > 55) & (data < 200), np.ones((3, 3, 1), bool))
        lab, n = ndi.label(hyper)
        blob = np.bincount(lab.ravel())[1:].max(initial=0)
        blob_ml = blob * abs(np.linalg.det(img.affine[:3, :3])) / 1000
        assert blob_ml == pytest.approx(ml, abs=3.0)
        side = json.loads((demo_dir / f"sub-{label}" / "anat" / f"sub-{label}_ct.json").read_text())
        assert side["Modality"] == "CT"
    # Different seeds: the two heads are not the same image apart from the hematoma.
    d1 = np.asarray(nib.load(demo_dir / "sub-01/anat/sub-01_ct.nii.gz").dataobj)
    d2 = np.asarray(nib.load(demo_dir / "sub-02/anat/sub-02_ct.nii.gz").dataobj)
    assert not np.array_equal(d1[:20, :20], d2[:20, :20])


def test_demo_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DemoDatasetError, match="not empty"):
        write_demo_dataset(tmp_path, n_subjects=1)
    assert (tmp_path / "mine.txt").read_text() == "user data"
    assert main([str(tmp_path), "--n-subjects", "1"]) == 2


def test_demo_rewrites_its_own_folder(demo_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(demo_dir, out)  # an earlier demo with two subjects
    assert main([str(out), "--n-subjects", "1"]) == 0
    printed = capsys.readouterr().out
    assert "sub-01/anat/sub-01_ct.nii.gz" in printed
    assert not (out / "sub-02").exists()
