"""Nipype interfaces of the pipeline, run on small phantoms and hand-made maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ichseg.pipeline import __version__
from ichseg.pipeline.geometry import shear_degrees
from ichseg.pipeline.interfaces.ct import BrainExtraction, ConformCT, ToSourceGrid
from ichseg.pipeline.interfaces.segmentation import ProbabilitiesToScan
from ichseg.pipeline.interfaces.volumes import TabulateVolumes
from ichseg.pipeline.labels import VOLUME_COLUMNS
from ichseg.pipeline.phantom import make_head_phantom


def _save(data, affine, path):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return str(path)


def _run(interface, cwd: Path):
    """Run a nipype interface in its own working folder (created)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return interface.run(cwd=str(cwd))


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _world(affine, shape):
    ijk = np.indices(shape).reshape(3, -1).T
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


# --------------------------------------------------------------------------- CT interfaces


@pytest.mark.parametrize("tilt", [0.0, 18.5])
def test_conform_extract_and_back_to_source(tmp_path, tilt):
    phantom = make_head_phantom(
        voxel_size=(2.0, 2.0, 6.0), shape=(90, 110, 26), tilt_deg=tilt, hemorrhage_ml=10.0
    )
    source = _save(phantom.data, phantom.affine, tmp_path / "sub-01_ct.nii.gz")

    conform = _run(ConformCT(in_file=source), tmp_path / "conform")
    conformed_file = conform.outputs.out_file
    assert Path(conformed_file).is_file()
    assert Path(conformed_file).parent == tmp_path / "conform"
    conformed = nib.load(conformed_file)
    assert nib.aff2axcodes(conformed.affine) == ("R", "A", "S")
    assert shear_degrees(conformed.affine) == pytest.approx(tilt, abs=1e-3)
    # the phantom is stored LAS: conforming flips the first axis, nothing else
    np.testing.assert_array_equal(np.asanyarray(conformed.dataobj), phantom.data[::-1].astype(np.float32))

    bet = _run(BrainExtraction(in_file=conformed_file), tmp_path / "bet")
    mask_img = nib.load(bet.outputs.out_mask)
    mask = np.asanyarray(mask_img.dataobj)
    assert mask.dtype == np.uint8 and mask.any() and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_allclose(mask_img.affine, conformed.affine, atol=1e-5)
    assert _dice(mask > 0, phantom.brain_mask[::-1]) > 0.95

    back_mask = _run(ToSourceGrid(in_file=bet.outputs.out_mask, source_file=source), tmp_path / "back")
    assert Path(back_mask.outputs.out_file).name == "brain_mask_source.nii.gz"
    on_source = nib.load(back_mask.outputs.out_file)
    source_img = nib.load(source)
    assert on_source.shape == source_img.shape
    np.testing.assert_allclose(on_source.affine, source_img.affine, atol=1e-5)
    assert shear_degrees(on_source.affine) == pytest.approx(tilt, abs=1e-3)
    assert int(on_source.header["sform_code"]) == 1
    assert _dice(np.asanyarray(on_source.dataobj) > 0, phantom.brain_mask) > 0.95

    # the conformed CT itself goes back to the source voxels exactly
    back_ct = _run(ToSourceGrid(in_file=conformed_file, source_file=source), tmp_path / "back_ct")
    np.testing.assert_array_equal(
        np.asanyarray(nib.load(back_ct.outputs.out_file).dataobj), phantom.data.astype(np.float32)
    )


def test_brain_extraction_fails_clearly_without_tissue(tmp_path):
    air = np.full((30, 30, 12), -1000.0, dtype=np.float32)
    air[10:20, 10:20, 3:9] = 1500.0  # bone only: nothing intracranial
    path = _save(air, np.diag([2.0, 2.0, 5.0, 1.0]), tmp_path / "air.nii.gz")
    with pytest.raises(RuntimeError, match="no intracranial tissue"):
        _run(BrainExtraction(in_file=path), tmp_path)


# --------------------------------------------------------------------------- probabilities to scan

#: Template-like probability grid: 1 mm, RAS, x -20..19, y -30..19, z -10..19 mm.
BOX_AFFINE = np.array([[1.0, 0, 0, -20.0], [0, 1.0, 0, -30.0], [0, 0, 1.0, -10.0], [0, 0, 0, 1]])
BOX_SHAPE = (40, 50, 30)
#: (class, probabilities, world box [low, high] in mm); IVH touches the box's x and z faces.
CUBES = [
    (1, [0.05, 0.7, 0.1, 0.1, 0.05], ((-10.0, -20.0, 0.0), (0.0, -5.0, 10.0))),
    (4, [0.0, 0.1, 0.0, 0.2, 0.7], ((10.0, 0.0, -10.0), (19.0, 10.0, 0.0))),
    (3, [0.1, 0.0, 0.1, 0.8, 0.0], ((-18.0, 5.0, 5.0), (-8.0, 15.0, 15.0))),
]


def _probability_map(path):
    probs = np.zeros((*BOX_SHAPE, 5), dtype=np.float32)
    probs[..., 0] = 1.0
    world = _world(BOX_AFFINE, BOX_SHAPE)
    for _, values, (low, high) in CUBES:
        inside = np.all((world >= low) & (world <= high), axis=-1)
        probs[inside] = values
    return _save(probs, BOX_AFFINE, path)


def _ants_transform(path, translation_lps=(0.0, 0.0, 0.0)):
    ants = pytest.importorskip("ants")
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, translation=translation_lps
    )
    ants.write_transform(transform, str(path))
    return str(path)


def _scan_affine(tilt_deg, shape, voxel=(0.9, 0.9, 3.0), centre=(0.0, -5.0, 5.0)):
    t = np.deg2rad(tilt_deg)
    vx, vy, vz = voxel
    affine = np.eye(4)
    affine[:3, :3] = [[-vx, 0, 0], [0, vy * np.cos(t), 0], [0, vy * np.sin(t), vz]]
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _distance_to_box(points, low, high):
    """> 0 inside (distance to the nearest face), < 0 outside (minus the largest distance
    along one axis: trilinear interpolation reaches one voxel along each axis at once)."""
    low, high = np.asarray(low), np.asarray(high)
    inside_depth = np.minimum(points - low, high - points).min(axis=-1)
    outside = np.maximum(0, np.maximum(low - points, points - high)).max(axis=-1)
    return np.where(inside_depth >= 0, inside_depth, -outside)


@pytest.mark.parametrize(
    ("tilt", "shift_ras"),
    [(0.0, (0.0, 0.0, 0.0)), (20.0, (0.0, 0.0, 0.0)), (20.0, (-5.0, 3.0, 2.0))],
    ids=["orthogonal", "sheared", "sheared-shifted"],
)
def test_probabilities_to_scan(tmp_path, tilt, shift_ras):
    shape = (70, 80, 24)
    scan_affine = _scan_affine(tilt, shape)
    source = _save(np.zeros(shape, dtype=np.int16), scan_affine, tmp_path / "sub-01_ct.nii.gz")
    probabilities = _probability_map(tmp_path / "probs.nii")
    # template -> scan shift in RAS = LPS translation with x and y negated
    lps = (-shift_ras[0], -shift_ras[1], shift_ras[2])
    transform = _ants_transform(tmp_path / "template_to_scan.mat", lps)

    interface = ProbabilitiesToScan(probabilities=probabilities, transform=transform, source_file=source)
    result = _run(interface, tmp_path / "work")
    dseg_img = nib.load(result.outputs.dseg)
    prob_img = nib.load(result.outputs.hemorrhage_probseg)
    for img in (dseg_img, prob_img):
        assert img.shape == shape
        np.testing.assert_allclose(img.affine, scan_affine, atol=1e-5)
    assert dseg_img.get_data_dtype() == np.uint8
    labels = np.asanyarray(dseg_img.dataobj)
    hemorrhage = np.asanyarray(prob_img.dataobj)

    # where each scan voxel is in template space
    template_points = _world(scan_affine, shape) - np.asarray(shift_ras)
    box_depth = _distance_to_box(template_points, (-20.0, -30.0, -10.0), (19.0, 19.0, 19.0))
    far_outside_box = box_depth < -1.0
    assert far_outside_box.sum() > 1000
    # background fills everything outside the probability box
    assert (labels[far_outside_box] == 0).all()
    assert (hemorrhage[far_outside_box] == 0).all()

    in_any_cube = np.zeros(shape, dtype=bool)
    for label, values, (low, high) in CUBES:
        depth = _distance_to_box(template_points, low, high)
        inside = depth >= 1.0
        assert inside.sum() > 100, label
        assert (labels[inside] == label).all(), label
        expected_hemorrhage = values[1] + values[2] + values[4]
        np.testing.assert_allclose(hemorrhage[inside], expected_hemorrhage, atol=1e-5)
        in_any_cube |= depth > -1.0
        # the label's extent matches the cube (volume within one template voxel of the faces)
        n_label = np.count_nonzero(labels == label)
        assert np.count_nonzero(depth >= 1.0) <= n_label <= np.count_nonzero(depth > -1.0)
    # inside the box but away from the cubes: background, no hemorrhage
    quiet = (box_depth > -1.0) & ~in_any_cube
    assert (labels[quiet] == 0).all()
    np.testing.assert_allclose(hemorrhage[quiet], 0.0, atol=1e-6)
    # IVH touches the box's +x face (x = 19 mm, the last voxel centre): its label runs up to
    # that face, and background takes over right beyond it
    ivh_low, ivh_high = CUBES[1][2]
    x = template_points[..., 0]
    core_yz = (
        (template_points[..., 1] > ivh_low[1] + 1) & (template_points[..., 1] < ivh_high[1] - 1)
        & (template_points[..., 2] > ivh_low[2] + 1) & (template_points[..., 2] < ivh_high[2] - 1)
    )
    at_face = core_yz & (x > 18.0) & (x < 18.95)
    beyond = core_yz & (x > 19.05) & (x < 21.0)
    assert at_face.sum() > 5 and beyond.sum() > 5
    assert (labels[at_face] == 4).all()
    assert (labels[beyond] == 0).all() and (hemorrhage[beyond] == 0).all()


def test_probabilities_to_scan_keeps_ivh_near_the_atlas_ventricles(tmp_path):
    """With ``ivh_margin_mm``, the IVH cube stays IVH where the atlas's ventricles lie within
    the margin of it, and becomes IPH (its next bleeding class) where they do not."""
    shape = (70, 80, 24)
    source = _save(np.zeros(shape, dtype=np.int16), _scan_affine(0.0, shape), tmp_path / "sub-01_ct.nii.gz")
    probabilities = _probability_map(tmp_path / "probs.nii")
    transform = _ants_transform(tmp_path / "template_to_scan.mat")
    labels_csv = tmp_path / "atlas_labels.csv"
    labels_csv.write_text("ROIIndex,ROIName\n1,Ventricle\n2,LeftInsula\n")
    world = _world(BOX_AFFINE, BOX_SHAPE)
    outcomes = {}
    for where, x in {"beside": 4.0, "far": -20.0}.items():
        atlas = np.full(BOX_SHAPE, 2, dtype=np.int16)
        atlas[(world[..., 0] >= x - 2) & (world[..., 0] <= x) & (np.abs(world[..., 1]) < 5)] = 1  # a "ventricle" slab
        atlas_file = _save(atlas, BOX_AFFINE, tmp_path / f"atlas-{where}.nii.gz")
        interface = ProbabilitiesToScan(probabilities=probabilities, transform=transform, source_file=source,
                                        ivh_margin_mm=8.0, atlas=atlas_file, atlas_labels=str(labels_csv),
                                        atlas_transform=transform)
        result = _run(interface, tmp_path / f"work-{where}")
        outcomes[where] = np.asanyarray(nib.load(result.outputs.dseg).dataobj)
    plain = _run(ProbabilitiesToScan(probabilities=probabilities, transform=transform, source_file=source),
                 tmp_path / "work-plain")
    plain_labels = np.asanyarray(nib.load(plain.outputs.dseg).dataobj)
    assert (plain_labels == 4).sum() > 100
    np.testing.assert_array_equal(outcomes["beside"], plain_labels)  # 6 mm from the cube: kept
    far = outcomes["far"]  # 30 mm away: the IVH cube is IPH, everything else as before
    np.testing.assert_array_equal(far == 1, (plain_labels == 1) | (plain_labels == 4))
    assert not (far == 4).any()
    np.testing.assert_array_equal(far[(plain_labels != 4)], plain_labels[(plain_labels != 4)])


# --------------------------------------------------------------------------- volumes table


def test_tabulate_volumes(tmp_path):
    affine = np.diag([0.5, 0.5, 5.0, 1.0])  # 1.25 uL per voxel
    dseg = np.zeros((40, 40, 10), dtype=np.uint8)
    dseg[:20, :20, :2] = 1  # 800 voxels = 1.0 mL IPH
    dseg[20:30, :20, :2] = 2  # 400 = 0.5 mL EAH
    dseg[30:40, :20, :4] = 3  # 800 = 1.0 mL oedema
    dseg[:4, 30:40, 9] = 4  # 40 = 0.05 mL IVH
    brain = np.zeros(dseg.shape, dtype=np.uint8)
    brain[:, :, :8] = 1  # 12800 voxels = 16 mL
    model_info = {"model": "blastct-v1", "n_networks": 12, "weights_sha256": ["ab" * 32]}
    info_path = tmp_path / "model_info.json"
    info_path.write_text(json.dumps(model_info))
    source = "/bids/sub-01/anat/sub-01_ct.nii.gz"
    interface = TabulateVolumes(
        dseg=_save(dseg, affine, tmp_path / "dseg.nii.gz"),
        brain_mask=_save(brain, affine, tmp_path / "brain.nii.gz"),
        model_info=str(info_path),
        source_file=source,
        extra_metadata={"Registration": {"transform": "Affine"}},
        qc={"registration_dice": 0.93, "registration_similarity": 0.71234567},
        warnings=["thick slices (6.0 mm > 5 mm): ..."],
    )
    result = _run(interface, tmp_path / "work")

    table = pd.read_csv(result.outputs.out_tsv, sep="\t")
    assert len(table) == 1
    # the volume columns and the status come first, in the label table's order
    columns = list(table.columns)
    assert columns[: len(VOLUME_COLUMNS) + 1] == list(VOLUME_COLUMNS) + ["status"]
    assert len(columns) == len(set(columns))
    row = table.iloc[0]
    expected = {"iph_ml": 1.0, "eah_ml": 0.5, "oed_ml": 1.0, "ivh_ml": 0.05,
                "hemorrhage_ml": 1.55, "brain_ml": 16.0}
    for column, value in expected.items():
        assert row[column] == pytest.approx(value, abs=1e-4), column
    assert row["status"] == "ok"
    assert result.outputs.row["hemorrhage_ml"] == pytest.approx(1.55)
    assert result.outputs.metadata["Model"] == json.loads(Path(result.outputs.out_json).read_text())["Model"]
    # QC measures and flags: 16 mL is no adult brain, the registration is fine
    assert row["registration_dice"] == pytest.approx(0.93)
    assert row["registration_similarity"] == pytest.approx(0.7123)
    assert bool(row["flag_brain_volume"]) is True
    assert bool(row["flag_registration"]) is False
    assert row["n_warnings"] == 1
    assert bool(row["volumes_lower_bound"]) is False  # no head_coverage_mm measured: not flagged
    assert row["qc"] == "review"
    assert row["iph_abc2_ml"] >= 0 and row["iph_abc2_unweighted_ml"] >= row["iph_abc2_ml"]

    sidecar = json.loads(Path(result.outputs.out_json).read_text())
    assert sidecar["iph_abc2_ml"]["Units"] == "mL" and "Kothari" in sidecar["iph_abc2_ml"]["Description"]
    assert "Rule:" in sidecar["qc"]["Description"] and set(sidecar["qc"]["Levels"]) == {"pass", "review", "fail"}
    for column in VOLUME_COLUMNS:
        assert sidecar[column]["Units"] == "mL"
        assert sidecar[column]["Description"]
    assert "status" in sidecar
    assert sidecar["Model"] == model_info
    assert sidecar["Sources"] == [source]
    assert sidecar["Registration"] == {"transform": "Affine"}
    assert sidecar["Warnings"] == ["thick slices (6.0 mm > 5 mm): ..."]
    # every column of the table is described in the sidecar
    assert set(columns) <= set(sidecar)
    versions = sidecar["SoftwareVersions"]
    assert versions["ichseg"] == __version__
    assert versions["numpy"] == np.__version__
    assert versions["nibabel"] == nib.__version__
    for name in ("torch", "antspyx", "blast-ct", "nipype", "scipy"):
        assert versions[name] and versions[name] != "not installed", name
