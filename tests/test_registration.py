"""ANTs registration to the CT template and warping between spaces (ichseg.pipeline.registration).

The round trip moves the real template by a known rigid transform onto a scan-like grid
(1.5 x 1.5 x 4 mm, LAS, 15 degree gantry tilt), registers it back with
:func:`register_to_template` and checks the recovered transform, the warped brain mask and a
blob sent to the template and back.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ichseg.pipeline.geometry import resample, voxel_volume_ml
from ichseg.pipeline.registration import (
    _to_ants,
    register_to_template,
    warp_to_scan,
    warp_to_template,
)

TEMPLATE = "templates/scct_unsmooth_SS_0.01.nii.gz"
TEMPLATE_MASK = "templates/scct_unsmooth_SS_0.01_Mask.nii.gz"
#: Intracranial centre of the template (RAS mm), about which the known motion rotates.
CENTRE = np.array([0.0, -17.0, 19.0])
SHIFT_MM = np.array([12.0, -8.0, 6.0])  # 15.6 mm
#: Dice of the registered brain mask with the template mask. Measured: 0.9886 with the
#: recovered transform, 0.9887 with the true one (the loss is partial volume of the 4 mm
#: slices), so the bound leaves room for ANTs' sampling only.
MIN_DICE = 0.98
#: Recovered vs true transform at points 60 mm from the centre. Measured: <= 0.13 mm.
MAX_ERROR_MM = 1.0


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = np.cos(a)
    r[i, j], r[j, i] = -np.sin(a), np.sin(a)
    return r


def _true_template_to_scan() -> np.ndarray:
    """Rotate 10 deg about L-R and 4 deg about I-S around the centre, then shift 15.6 mm."""
    rotation = _rotation(0, 10.0) @ _rotation(2, 4.0)
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = CENTRE - rotation @ CENTRE + SHIFT_MM
    return m


def _scan_grid():
    vx, vy, vz, tilt = 1.5, 1.5, 4.0, np.deg2rad(15.0)
    shape = (136, 160, 48)
    affine = np.eye(4)
    affine[:3, :3] = [[-vx, 0, 0], [0, vy * np.cos(tilt), 0], [0, vy * np.sin(tilt), vz]]
    affine[:3, 3] = CENTRE + SHIFT_MM - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine


def _apply(m, points):
    return np.asarray(points, dtype=float) @ m[:3, :3].T + m[:3, 3]


def _world_com(mask, affine):
    return _apply(affine, ndimage.center_of_mass(mask.astype(float)))


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def moved(asset, tmp_path_factory):
    """The template moved by the known transform onto a tilted scan grid, and registered back."""
    template_file = asset(TEMPLATE)
    template_img = nib.load(str(template_file))
    template = np.asanyarray(template_img.dataobj, dtype=np.float32)
    template_mask = np.asanyarray(nib.load(str(asset(TEMPLATE_MASK))).dataobj) > 0.5
    true = _true_template_to_scan()
    shape, affine = _scan_grid()
    scan_to_template = np.linalg.inv(true)
    scan = resample(template, template_img.affine, shape, affine, scan_to_template, order=1)
    scan_mask = resample(template_mask.astype(np.float32), template_img.affine, shape, affine, scan_to_template) >= 0.5
    # the scan grid holds the whole brain
    assert not any(scan_mask.take(i, axis=a).any() for a in range(3) for i in (0, -1))
    out = tmp_path_factory.mktemp("reg") / "template_to_scan.mat"
    result = register_to_template(scan, affine, scan_mask, template_file, out, "Affine", seed=1)
    return dict(
        template_img=template_img, template_mask=template_mask, true=true, shape=shape,
        affine=affine, scan=scan, scan_mask=scan_mask, result=result, out=out,
        template_file=template_file,
    )


@pytest.mark.realdata
def test_register_recovers_known_motion(moved):
    result, true = moved["result"], moved["true"]
    assert result["transform"] == moved["out"] and moved["out"].stat().st_size > 0
    recovered = result["template_to_scan"]
    assert recovered.shape == (4, 4)
    np.testing.assert_allclose(recovered[3], [0, 0, 0, 1])
    offsets = 60.0 * np.vstack([np.eye(3), -np.eye(3)])
    points = CENTRE + offsets
    errors = np.linalg.norm(_apply(recovered, points) - _apply(true, points), axis=1)
    assert errors.max() < MAX_ERROR_MM, errors
    # the motion is large compared with the error: the identity would be far off
    assert np.linalg.norm(_apply(np.eye(4), points) - _apply(true, points), axis=1).min() > 10


@pytest.mark.realdata
def test_registration_is_repeatable(moved, tmp_path):
    # ichseg promises the same table on every run: the same input gives the same transform.
    again = register_to_template(
        moved["scan"], moved["affine"], moved["scan_mask"], moved["template_file"],
        tmp_path / "again.mat", "Affine", seed=1,
    )
    np.testing.assert_array_equal(again["template_to_scan"], moved["result"]["template_to_scan"])


@pytest.mark.realdata
def test_registered_brain_mask_overlaps_template(moved):
    warped = warp_to_template(
        moved["scan_mask"].astype(np.float32), moved["affine"], moved["template_img"],
        moved["result"]["template_to_scan"],
    ) >= 0.5
    assert warped.shape == moved["template_mask"].shape
    assert _dice(warped, moved["template_mask"]) > MIN_DICE
    # without registration (identity) the masks overlap much less (checked on a 2 mm grid)
    coarse = moved["template_img"].slicer[::2, ::2, ::2]
    unregistered = warp_to_template(
        moved["scan_mask"].astype(np.float32), moved["affine"], coarse, np.eye(4)
    ) >= 0.5
    assert _dice(unregistered, moved["template_mask"][::2, ::2, ::2]) < 0.9


@pytest.mark.realdata
def test_warp_to_template_and_back_keeps_a_blob_in_place(moved):
    shape, affine, true = moved["shape"], moved["affine"], moved["true"]
    template_to_scan = moved["result"]["template_to_scan"]
    # a 60 mm cube of the template grid around the ball (cheaper than the whole template)
    low = np.rint(np.linalg.solve(moved["template_img"].affine[:3, :3], CENTRE + [-25.0, 10.0, 0.0] - 30.0
                                  - moved["template_img"].affine[:3, 3])).astype(int)
    template_img = moved["template_img"].slicer[tuple(slice(a, a + 60) for a in low)]
    assert template_img.shape == (60, 60, 60)
    # a 10 mm ball in the left basal ganglia, drawn on the tilted scan grid in world mm
    centre_scan = _apply(true, CENTRE + np.array([-25.0, 10.0, 0.0]))
    ijk = np.indices(shape).reshape(3, -1).T
    blob = (np.linalg.norm(_apply(affine, ijk) - centre_scan, axis=1) <= 10.0).reshape(shape)
    assert blob.sum() > 50

    in_template = warp_to_template(blob.astype(np.float32), affine, template_img, template_to_scan) >= 0.5
    # it lands where the known motion puts it (template voxels are 1 mm)
    np.testing.assert_allclose(
        _world_com(in_template, template_img.affine), CENTRE + np.array([-25.0, 10.0, 0.0]), atol=1.0
    )
    ml = blob.sum() * voxel_volume_ml(affine)
    assert in_template.sum() * voxel_volume_ml(template_img.affine) == pytest.approx(ml, rel=0.15)

    back = warp_to_scan(
        in_template.astype(np.float32), template_img.affine, shape, affine, template_to_scan
    ) >= 0.5
    com_before = np.array(ndimage.center_of_mass(blob))
    com_after = np.array(ndimage.center_of_mass(back))
    assert np.all(np.abs(com_after - com_before) <= 1.0), (com_before, com_after)
    assert _dice(back, blob) > 0.8

    # channels-first probabilities come back the same way as a 3D map
    probs = np.stack([1.0 - in_template, in_template]).astype(np.float32)
    back4 = warp_to_scan(probs, template_img.affine, shape, affine, template_to_scan)
    assert back4.shape == (2, *shape)
    np.testing.assert_array_equal(back4[1] >= 0.5, back)


def test_warps_follow_the_template_to_scan_direction():
    """With a pure shift, warp_to_template samples the scan at template_to_scan(p)."""
    template_img = nib.Nifti1Image(np.zeros((30, 30, 30), dtype=np.float32), np.eye(4))
    scan_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    scan = np.zeros((15, 15, 15), dtype=np.float32)
    scan[10, 5, 7] = 1.0  # world (20, 10, 14)
    template_to_scan = np.eye(4)
    template_to_scan[:3, 3] = (4.0, -2.0, 6.0)
    on_template = warp_to_template(scan, scan_affine, template_img, template_to_scan, order=0)
    # template point p with p + (4, -2, 6) = (20, 10, 14)  ->  p = (16, 12, 8)
    assert on_template[16, 12, 8] == 1.0
    assert np.argwhere(on_template == 1.0).mean(0) == pytest.approx([16.0, 12.0, 8.0], abs=0.5)
    back = warp_to_scan(on_template, np.eye(4), scan.shape, scan_affine, template_to_scan, order=0)
    assert back[10, 5, 7] == 1.0


def test_to_ants_keeps_world_coordinates():
    ants = pytest.importorskip("ants")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-80.0, -110.0, -60.0)
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    image = _to_ants(data, affine)
    assert image.shape == data.shape
    np.testing.assert_array_equal(image.numpy(), data)
    for ijk in [(0, 0, 0), (4, 5, 6), (1, 3, 2)]:
        lps = ants.transform_index_to_physical_point(image, ijk)
        ras = affine[:3, :3] @ np.asarray(ijk) + affine[:3, 3]
        np.testing.assert_allclose(lps, ras * np.array([-1.0, -1.0, 1.0]), atol=1e-5)
    with pytest.raises(ValueError):
        _to_ants(data, np.diag([-2.0, 2.0, 2.0, 1.0]))
    tilted = affine.copy()
    tilted[2, 1] = 0.5
    with pytest.raises(ValueError):
        _to_ants(data, tilted)


@pytest.mark.realdata
def test_translation_keeps_the_head_as_scanned(moved, tmp_path):
    """``--transform translation`` (no registration, as BLAST-CT sees a scan) moves the head
    onto the template grid without turning or scaling it."""
    from ichseg.pipeline.settings import MethodSettings

    kind = MethodSettings(transform="translation").ants_transform
    result = register_to_template(moved["scan"], moved["affine"], moved["scan_mask"], moved["template_file"],
                                  tmp_path / "translation.mat", kind, seed=1)
    shift = result["template_to_scan"]
    np.testing.assert_allclose(shift[:3, :3], np.eye(3), atol=1e-6)
    # the brain's centre lands near where the known motion put it (15.6 mm away): without
    # the 10 degree turn the best overlap is a few mm off (measured 4.1 mm along one axis)
    error = np.linalg.norm(_apply(shift, CENTRE) - _apply(moved["true"], CENTRE))
    assert error < 6.0 < np.linalg.norm(SHIFT_MM)


@pytest.mark.realdata
def test_with_a_translation_the_atlas_follows_a_rigid_registration(moved, tmp_path):
    """The network's grid keeps the head as scanned, while the atlas regions and the overlap QC
    get the head turned onto the template."""
    from ichseg.pipeline.registration import to_template_space

    template_mask = moved["template_mask"]
    space = to_template_space(moved["scan"], moved["affine"], moved["scan_mask"], moved["template_img"],
                              template_mask, tmp_path / "net.mat", "Translation", 1, tmp_path / "atlas.mat")
    np.testing.assert_allclose(space.template_to_scan[:3, :3], np.eye(3), atol=1e-6)
    points = CENTRE + 60.0 * np.vstack([np.eye(3), -np.eye(3)])
    errors = np.linalg.norm(_apply(space.atlas.atlas_to_scan, points) - _apply(moved["true"], points), axis=1)
    assert errors.max() < MAX_ERROR_MM, errors
    assert (tmp_path / "atlas.mat").stat().st_size > 0
    # the overlap is judged on the turned head: as good as the registration, not the 10 degrees
    assert space.qc["registration_dice"] > MIN_DICE
    assert _dice(space.brain_mask, template_mask) < space.qc["registration_dice"] - 0.02
    # the registration check shows the turned head: it matches the template, the shifted one less
    template = np.asanyarray(moved["template_img"].dataobj, dtype=np.float32)

    def match(ct):
        return np.corrcoef(np.clip(ct[template_mask], 0, 100), template[template_mask])[0, 1]

    # measured 0.82 (the partial volume of the 4 mm slices), shifted only 0.43
    assert match(space.atlas.aligned_ct) > 0.75 and match(space.atlas.aligned_ct) > match(space.ct) + 0.2


@pytest.mark.realdata
def test_the_atlas_step_on_its_own_gives_the_same_alignment(moved, tmp_path):
    """The workflow runs the atlas's rigid registration as a step beside the translation
    (align_for_atlas); it must give what the combined call gives, to the bit."""
    from ichseg.pipeline.registration import align_for_atlas, to_template_space

    args = (moved["scan"], moved["affine"], moved["scan_mask"], moved["template_img"], moved["template_mask"])
    combined = to_template_space(*args, tmp_path / "net.mat", "Translation", 1, tmp_path / "atlas.mat")
    alone = to_template_space(*args, tmp_path / "net2.mat", "Translation", 1, tmp_path / "atlas2.mat", atlas=False)
    assert alone.atlas is None and alone.qc == {} and not (tmp_path / "atlas2.mat").exists()
    np.testing.assert_array_equal(alone.ct, combined.ct)
    step = align_for_atlas(*args, tmp_path / "atlas3.mat", 1)
    np.testing.assert_array_equal(step.atlas_to_scan, combined.atlas.atlas_to_scan)
    np.testing.assert_array_equal(step.aligned_ct, combined.atlas.aligned_ct)
    assert step.qc == combined.qc
    assert (tmp_path / "atlas3.mat").read_bytes() == (tmp_path / "atlas.mat").read_bytes()
