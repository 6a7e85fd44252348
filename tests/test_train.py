"""``ichseg train`` end to end on a tiny phantom set, with a narrow network (fast)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch

from ichseg.bids_app.cli import main
from ichseg.bids_app.train import split_subjects
from ichseg.pipeline.inference import build_network
from ichseg.pipeline.phantom import make_head_phantom
from ichseg.pipeline.settings import MethodSettings
from ichseg.pipeline.training import (
    ANY_BLOOD_LABEL,
    BASE_PROBABILITY_SCALE,
    DENSE_BACKGROUND_SHARE,
    IGNORE_LABEL,
    MINED_BACKGROUND_PROBABILITY,
    MINED_SHARE_OF_DENSE,
    NO_BLOOD_LABEL,
    PreparedScan,
    TrainingSettings,
    _changed_settings,
    draw_patch_centre,
    extract_patch,
    hemorrhage_dice,
    inputs_fingerprint,
    load_prepared,
    mine_background,
    sample_patches,
    save_prepared,
    soft_targets,
)

NARROW = {
    "model": {"DeepMedic": {"fully_connected": [6, 6], "feature_maps": [2, 2, 3, 3, 3, 3, 4, 4]}},
    "data": {"input_channels": 1, "num_classes": 5},
}


def test_split_subjects_is_seeded_and_keeps_one_of_each():
    train, val = split_subjects(["a", "b", "c", "d", "e"], 0.2, seed=0)
    assert len(val) == 1 and len(train) == 4 and not set(train) & set(val)
    assert split_subjects(["a", "b", "c", "d", "e"], 0.2, seed=0) == (train, val)
    assert split_subjects(["a", "b"], 0.9, seed=1)[0]  # never an empty training set
    assert split_subjects(["a"], 0.2, seed=0) == (["a"], [])


def test_extract_patch_pads_beyond_the_volume():
    volume = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    patch = extract_patch(volume, np.array([0, 0, 0]), 3, -1.0)
    assert patch[1, 1, 1] == volume[0, 0, 0]
    assert patch[0, 0, 0] == -1.0
    np.testing.assert_array_equal(extract_patch(volume, np.array([1, 1, 1]), 3, -1.0), volume)


def _centres(scan, n=2000):
    rng = np.random.default_rng(0)
    return np.array([draw_patch_centre(scan, rng) for _ in range(n)])


def test_background_patches_reach_dense_background_but_not_bone_or_blood():
    hu = np.full((30, 30, 30), 30.0, np.float32)
    hu += np.random.default_rng(1).normal(0.0, 8.0, hu.shape).astype(np.float32)  # noise: specks over 50 HU
    labels = np.zeros(hu.shape, np.uint8)
    hu[4:10, 4:10, 4:10] = 65.0  # a venous sinus: dense background, 0.8 % of the region
    hu[24:, :, :] = 400.0  # bone, with its partial volume beside it
    hu[22:24, :, :] = 80.0
    scan = PreparedScan("sub-01", hu, labels, np.ones(hu.shape, bool))
    centres = _centres(scan)
    on_sinus = np.all((centres >= 3) & (centres < 11), axis=1)
    # half the background draws land on the sinus; noise and the bone's edge do not count as dense
    assert DENSE_BACKGROUND_SHARE - 0.1 < on_sinus.mean() < DENSE_BACKGROUND_SHARE + 0.1
    # the other half are uniform over the region (bone included, 8 of 30 planes)
    assert 0.08 < (centres[:, 0] >= 22).mean() < 0.18

    labels[4:10, 4:10, 4:10] = IGNORE_LABEL  # the sinus left out of the reference: not background
    centres = _centres(PreparedScan("sub-01", hu, labels, np.ones(hu.shape, bool)))
    assert np.all((centres >= 3) & (centres < 11), axis=1).mean() < 0.05

    labels[4:10, 4:10, 4:10] = 1  # the same dense voxels as blood
    centres = _centres(PreparedScan("sub-01", hu, labels, np.ones(hu.shape, bool)))
    on_blood = np.all((centres >= 4) & (centres < 10), axis=1)
    # IPH is drawn with 0.175 / (0.3 + 0.175); no background draw finds dense background to go to
    assert 0.3 < on_blood.mean() < 0.45


def test_without_dense_background_the_background_draws_are_uniform():
    hu = np.full((10, 10, 10), 30.0, np.float32)
    scan = PreparedScan("sub-01", hu, np.zeros(hu.shape, np.uint8), np.ones(hu.shape, bool))
    centres = _centres(scan)
    assert abs(centres[:, 0].mean() - 4.5) < 0.3


def test_mined_background_is_where_the_base_model_sees_blood_away_from_the_labels():
    shape = (30, 30, 30)
    labels = np.zeros(shape, np.uint8)
    labels[20:24, 20:24, 20:24] = 1  # a lesion
    labels[2:5, 20:24, 2:5] = IGNORE_LABEL  # a host's own finding, left out of the reference
    blood = np.zeros(shape, np.float32)
    blood[4:8, 4:8, 4:8] = 0.5  # the base model's false blood, far from any label: mined
    blood[19:25, 19:25, 19:25] = 0.9  # the lesion and its edge
    blood[2:7, 20:24, 2:7] = 0.9  # over and beside the ignored finding
    blood[10:14, 4:8, 4:8] = MINED_BACKGROUND_PROBABILITY / 2  # too faint to count
    roi = np.ones(shape, bool)
    roi[:, :, 28:] = False  # outside the region
    blood[:, :, 28:] = 0.9
    base = np.zeros((5, *shape), np.uint8)
    base[1] = np.rint(blood * 0.6 * BASE_PROBABILITY_SCALE)  # the total over the bleeding classes counts
    base[4] = np.rint(blood * 0.4 * BASE_PROBABILITY_SCALE)
    base[0] = BASE_PROBABILITY_SCALE - base[1] - base[4]
    scan = PreparedScan("sub-01", np.zeros(shape, np.float32), labels, roi)
    mined = np.zeros(shape, bool).ravel()
    mined[mine_background(scan, base)] = True
    expected = np.zeros(shape, bool)
    expected[4:8, 4:8, 4:8] = True
    np.testing.assert_array_equal(mined.reshape(shape), expected)
    # a hemorrhage mask's blood is labelled too; its background is not
    labels[labels == 0] = NO_BLOOD_LABEL
    labels[labels == 1] = ANY_BLOOD_LABEL
    mined[:] = False
    mined[mine_background(scan, base)] = True
    np.testing.assert_array_equal(mined.reshape(shape), expected)


def test_soft_targets_follow_the_base_model_only_where_the_reference_leaves_the_class_open():
    labels = np.array([[0, 1, 3, ANY_BLOOD_LABEL, NO_BLOOD_LABEL, IGNORE_LABEL, ANY_BLOOD_LABEL]], np.uint8)
    #                   bg   IPH  EAH  OED  IVH
    base = np.array([[60, 100, 20, 60, 15],
                     [60, 100, 20, 60, 15],
                     [60, 100, 20, 60, 15],
                     [60, 100, 20, 60, 15],
                     [60, 100, 20, 60, 15],
                     [60, 100, 20, 60, 15],
                     [255, 0, 0, 0, 0]], np.uint8).T[None]  # (1, classes, voxels)
    targets = soft_targets(labels, base)
    assert targets.shape == (1, 5, 7)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(targets[0, :, 0], [1, 0, 0, 0, 0])  # a named class: itself,
    np.testing.assert_array_equal(targets[0, :, 1], [0, 1, 0, 0, 0])  # whatever the base model says
    np.testing.assert_array_equal(targets[0, :, 2], [0, 0, 0, 1, 0])
    np.testing.assert_allclose(targets[0, :, 3], np.array([0, 100, 20, 0, 15]) / 135)  # which blood class
    np.testing.assert_allclose(targets[0, :, 4], np.array([60, 0, 0, 60, 0]) / 120)  # background or oedema
    np.testing.assert_allclose(targets[0, :, 5], np.array([60, 100, 20, 60, 15]) / 255)  # ignored: all of it
    np.testing.assert_allclose(targets[0, :, 6], [0, 1 / 3, 1 / 3, 0, 1 / 3])  # base sees no blood: uniform


def test_soft_patches_are_aligned_with_their_inputs_and_mirrored_with_them():
    shape = (40, 40, 40)
    rng = np.random.default_rng(0)
    iph = rng.random(shape) < 0.3  # a pattern the input and the base probabilities share
    hu = np.where(iph, 60.0, 20.0).astype(np.float32)
    hu[..., :20] += 5.0  # left and right differ, so that a mirrored target would not match
    base = np.zeros((5, *shape), np.uint8)
    base[1] = iph * BASE_PROBABILITY_SCALE
    base[0] = BASE_PROBABILITY_SCALE - base[1]
    scan = PreparedScan("sub-01", hu, np.full(shape, IGNORE_LABEL, np.uint8), np.ones(shape, bool), base=base)
    output, context = 6, 4
    inputs, targets = sample_patches([scan], 40, output, context, lambda x: x, np.random.default_rng(1), soft=True)
    assert targets.shape == (40, 5, output, output, output)
    centre = slice(context // 2, context // 2 + output)
    np.testing.assert_array_equal(targets[:, 1] > 0.5, inputs[:, 0, centre, centre, centre] >= 60)


def test_a_hemorrhage_masks_blood_is_drawn_as_a_class():
    labels = np.full((20, 20, 20), NO_BLOOD_LABEL, np.uint8)
    labels[2:6, 2:6, 2:6] = ANY_BLOOD_LABEL
    centres = _centres(PreparedScan("sub-01", np.full(labels.shape, 30.0, np.float32), labels,
                                    np.ones(labels.shape, bool)))
    on_blood = np.all((centres >= 2) & (centres < 6), axis=1).mean()
    assert 0.3 < on_blood < 0.45  # as often as IPH in a label map: 0.175 / (0.3 + 0.175)


def test_ignored_voxels_are_drawn_only_where_they_have_targets():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:6, 2:6, 2:6] = IGNORE_LABEL
    scan = PreparedScan("sub-01", np.full(labels.shape, 30.0, np.float32), labels, np.ones(labels.shape, bool))
    on_ignored = np.all((_centres(scan) >= 2) & (_centres(scan) < 6), axis=1).mean()
    assert on_ignored < 0.05  # no loss there: only the uniform background draws land on it
    scan.base = np.zeros((5, *labels.shape), np.uint8)  # soft targets: the base model's output, rehearsed
    on_ignored = np.all((_centres(scan) >= 2) & (_centres(scan) < 6), axis=1).mean()
    assert 0.3 < on_ignored < 0.45


def test_the_base_models_run_is_cached_by_the_scan_it_was_computed_from(tmp_path, monkeypatch):
    import ichseg.pipeline.training as training
    from ichseg.bids_app.train import _base_probabilities

    runs = []

    def fake_run(scan, network, window, precision="fp32"):
        runs.append(scan.name)
        return np.broadcast_to(scan.hu.astype(np.uint8), (5, *scan.hu.shape)).copy()

    monkeypatch.setattr(training, "base_probabilities", fake_run)
    weights = tmp_path / "model_1.pt"
    weights.write_bytes(b"weights")
    shape = (4, 4, 4)
    scan = PreparedScan("sub-01", np.full(shape, 7.0, np.float32), np.zeros(shape, np.uint8), np.ones(shape, bool))
    _base_probabilities([scan], None, None, weights, tmp_path, "fp32", mine=False, keep=True)
    _base_probabilities([scan], None, None, weights, tmp_path, "fp32", mine=False, keep=True)
    assert runs == ["sub-01"] and scan.base[0, 0, 0, 0] == 7  # the second start reads the cache
    # the same scan prepared again from another CT: its cached run no longer applies
    scan = PreparedScan("sub-01", np.full(shape, 9.0, np.float32), np.zeros(shape, np.uint8), np.ones(shape, bool))
    _base_probabilities([scan], None, None, weights, tmp_path, "fp32", mine=False, keep=True)
    assert runs == ["sub-01", "sub-01"] and scan.base[0, 0, 0, 0] == 9
    _base_probabilities([scan], None, None, weights, tmp_path, "bf16", mine=False, keep=False)
    assert len(runs) == 3 and scan.base is None  # another precision runs again; not kept without distil
    # one cache per scan: the runs it replaced are gone, another scan's stays
    other = PreparedScan("sub-010", np.full(shape, 1.0, np.float32), np.zeros(shape, np.uint8), np.ones(shape, bool))
    _base_probabilities([other], None, None, weights, tmp_path, "fp32", mine=False, keep=False)
    assert len(list(tmp_path.glob("sub-01_base-*.npy"))) == len(list(tmp_path.glob("sub-010_base-*.npy"))) == 1


def test_resuming_with_other_settings_is_refused():
    before = asdict(TrainingSettings(epochs=2))
    assert _changed_settings(before, asdict(TrainingSettings(epochs=5, patience=9))) == ""
    assert _changed_settings(before, asdict(TrainingSettings(mine_background=True))) == \
        "mine_background: False -> True"
    del before["distil"]  # a checkpoint from before the setting existed holds its default
    assert _changed_settings(before, asdict(TrainingSettings())) == ""


def test_mined_background_takes_half_of_the_dense_share():
    hu = np.full((30, 30, 30), 30.0, np.float32)
    hu[4:10, 4:10, 4:10] = 65.0  # dense background
    scan = PreparedScan("sub-01", hu, np.zeros(hu.shape, np.uint8), np.ones(hu.shape, bool))
    before = _centres(scan)
    region = np.zeros(hu.shape, bool)
    region[20:24, 20:24, 20:24] = True
    scan.mined = np.flatnonzero(region)
    after = _centres(scan)
    on_mined = np.all((after >= 20) & (after < 24), axis=1)
    on_dense = np.all((after >= 4) & (after < 10), axis=1)
    share = DENSE_BACKGROUND_SHARE * MINED_SHARE_OF_DENSE
    assert share - 0.05 < on_mined.mean() < share + 0.05
    assert DENSE_BACKGROUND_SHARE - share - 0.05 < on_dense.mean() < DENSE_BACKGROUND_SHARE - share + 0.05
    # the other draws are those of a scan without mined voxels, from the same seed
    keep = ~on_mined
    assert (np.all(after[keep] == before[keep], axis=1)).mean() > 0.99


def test_ignored_voxels_do_not_count_in_the_validation_score():
    targets = torch.tensor([[0, 1, IGNORE_LABEL, IGNORE_LABEL]])
    logits = torch.zeros(1, 5, 4)
    logits[0, 1] = 5.0  # every voxel predicted IPH
    # one true positive, one false positive (the background voxel); the ignored voxels are neither
    assert hemorrhage_dice(logits, targets) == (2, 3)
    # a hemorrhage mask's blood and background count as blood and background
    assert hemorrhage_dice(logits, torch.tensor([[NO_BLOOD_LABEL, ANY_BLOOD_LABEL, IGNORE_LABEL, 0]])) == (2, 4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    bids, ref = root / "bids", root / "ref"
    (bids).mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    for i, ml in enumerate((12.0, 20.0, 8.0), start=1):
        head = make_head_phantom(voxel_size=(0.9, 0.9, 5.0), shape=(200, 220, 28), hemorrhage_ml=ml, seed=i)
        for folder, data, name in ((bids, head.data, "ct"), (ref, head.hemorrhage_mask.astype(np.uint8), "dseg"),
                                   (root / "masks", head.hemorrhage_mask.astype(np.uint8), "desc-hemorrhage_mask")):
            path = folder / f"sub-{i:02d}/anat/sub-{i:02d}_{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, head.affine), str(path))
        if i == 1:  # a region the reference leaves out: prepared with IGNORE_LABEL
            ignore = np.zeros(head.data.shape, np.uint8)
            ignore[20:60, 20:60, 10:14] = 1
            nib.save(nib.Nifti1Image(ignore, head.affine), str(ref / "sub-01/anat/sub-01_desc-ignore_mask.nii.gz"))
    base = root / "narrow"
    base.mkdir()
    torch.manual_seed(0)
    torch.save(build_network(NARROW).state_dict(), base / "model_1.pt")
    (base / "config.json").write_text(json.dumps(NARROW))
    return bids, ref, base, root


ARGS = ["--epochs", "2", "--iterations", "2", "--batch-size", "1", "--output-patch", "15",
        "--validation-patches", "2", "--seed", "3"]


def test_a_cached_scan_is_prepared_again_when_its_inputs_change(tmp_path):
    files = {name: tmp_path / name for name in ("ct.nii.gz", "dseg.nii.gz", "template.nii.gz", "ignore.nii.gz")}
    for i, path in enumerate(files.values()):
        path.write_bytes(bytes([i]) * 64)
    args = (files["ct.nii.gz"], files["dseg.nii.gz"], files["template.nii.gz"], files["ignore.nii.gz"])
    before = inputs_fingerprint(*args)
    scan = PreparedScan("sub-01", np.zeros((2, 2, 2), np.float32), np.ones((2, 2, 2), np.uint8),
                        np.ones((2, 2, 2), bool))
    cache = tmp_path / "sub-01.npz"
    save_prepared(scan, cache, before)
    assert load_prepared("sub-01", cache, before).labels.sum() == 8
    files["ignore.nii.gz"].write_bytes(b"a new ignore mask")
    after = inputs_fingerprint(*args)
    assert after != before and load_prepared("sub-01", cache, after) is None
    assert inputs_fingerprint(*args[:3]) != after  # no ignore mask is a different input too
    assert inputs_fingerprint(*args, margin_mm=10) != after
    assert inputs_fingerprint(*args, transform="rigid") != after
    np.savez_compressed(cache, hu=scan.hu, labels=scan.labels, roi=scan.roi)  # a cache from before fingerprints
    assert load_prepared("sub-01", cache, after) is None and load_prepared("sub-01", cache) is not None


def test_model_card_names_the_license_of_the_data(tmp_path):
    from ichseg.bids_app.train import _license_line, dataset_license

    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "dataset_description.json").write_text('{"Name": "x", "License": "CC0"}')
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "dataset_description.json").write_text('{"Name": "x"}')
    licenses = {"CTs": dataset_license(tmp_path / "ct"), "references": dataset_license(tmp_path / "ref")}
    assert licenses == {"CTs": "CC0", "references": None}
    assert dataset_license(tmp_path / "missing") is None
    line = _license_line(licenses)
    assert line.startswith("CTs: CC0; not stated for the references")
    assert "check them before sharing" in _license_line({"CTs": "CC0", "references": "CC0"})


@pytest.mark.realdata
@pytest.mark.slow
def test_train_writes_a_model_that_ichseg_runs_and_resumes(dataset, asset, capsys):
    asset("templates/scct_unsmooth_SS_0.01.nii.gz")  # the registration target
    bids, ref, base, root = dataset
    model = root / "model"
    work = root / "prepared"
    assert main(["train", str(bids), str(ref), str(model), "--base", str(base), "-w", str(work), *ARGS]) == 0
    prepared = np.load(work / "sub-01.npz")["labels"]
    assert (prepared == IGNORE_LABEL).any() and (prepared == 1).any()  # the ignore mask reached the labels
    assert not (np.load(work / "sub-02.npz")["labels"] == IGNORE_LABEL).any()
    card = json.loads((model / "model_card.json").read_text())
    umask = os.umask(0)
    os.umask(umask)
    for written in ("model_1.pt", "checkpoint.pt"):  # shared model folders: readable as the umask says
        assert (model / written).stat().st_mode & 0o777 == 0o666 & ~umask
    assert len(card["data"]["training_subjects"]) == 2 and len(card["data"]["validation_subjects"]) == 1
    assert [h["epoch"] for h in card["history"]["epochs"]] == [1, 2]
    from ichseg.pipeline.models import resolve_model

    assert card["base"]["license"] == resolve_model(str(base)).spec.license  # the base's, whatever it is
    assert "fine-tuned by ichseg train" in resolve_model(str(model)).spec.description
    assert "Data it saw" in (model / "README.md").read_text()
    assert card["data"]["transform"] == MethodSettings().transform  # prepared as ichseg runs by default
    assert f"--transform {card['data']['transform']}" in (model / "README.md").read_text()
    assert set(card["data"]["license"]) == {"CTs", "references"}
    # how the patches were drawn, so that a card tells apart models of another sampler
    assert card["patch_sampling"]["dense_background"]["share_of_background_patches"] == DENSE_BACKGROUND_SHARE
    assert '"dense_background"' in (model / "README.md").read_text()
    assert "License of the data" in (model / "README.md").read_text()
    state = torch.load(str(model / "model_1.pt"), weights_only=True)
    original = torch.load(str(base / "model_1.pt"), weights_only=True)
    assert set(state) == set(original)
    assert any(not torch.equal(state[k], original[k]) for k in state if state[k].is_floating_point())

    # the same seed gives the same first epoch; --resume continues after the last one
    again = root / "again"
    assert main(["train", str(bids), str(ref), str(again), "--base", str(base), "-w", str(work), *ARGS]) == 0
    first = json.loads((again / "model_card.json").read_text())["history"]["epochs"][0]
    assert first["loss"] == pytest.approx(card["history"]["epochs"][0]["loss"], rel=1e-4)
    # mining: the base model runs once on each training scan, its findings cached and on the card
    mined = root / "mined"
    assert main(["train", str(bids), str(ref), str(mined), "--base", str(base), "-w", str(work), *ARGS,
                 "--mine-background"]) == 0
    assert len(list(work.glob("*_base-*.npy"))) == len(card["data"]["training_scans"])
    assert json.loads((mined / "model_card.json").read_text())["patch_sampling"]["mined_background"]
    assert card["patch_sampling"]["mined_background"] is None
    # resuming with other settings would mix two runs in one model: refused, the fix named
    assert main(["train", str(bids), str(ref), str(model), "--base", str(base), "-w", str(work), *ARGS,
                 "--mine-background", "--resume"]) == 2
    assert "mine_background: False -> True" in capsys.readouterr().err

    # hemorrhage masks as references: refused without --distil; with it, the base model's
    # probabilities (already cached above) decide the classes the masks leave open
    masks = root / "masks"
    assert main(["train", str(bids), str(masks), str(root / "from-masks"), "--base", str(base),
                 "-w", str(root / "prepared-masks"), *ARGS]) == 2
    assert "add --distil" in capsys.readouterr().err
    assert main(["train", str(bids), str(masks), str(root / "from-masks"), "--base", str(base),
                 "-w", str(root / "prepared-masks"), *ARGS, "--distil"]) == 0
    prepared = np.load(root / "prepared-masks" / "sub-02.npz")["labels"]
    assert set(np.unique(prepared)) == {0, NO_BLOOD_LABEL, ANY_BLOOD_LABEL}  # 0: beyond the CT
    distilled = json.loads((root / "from-masks" / "model_card.json").read_text())
    assert distilled["settings"]["distil"] and "--distil" in (root / "from-masks" / "README.md").read_text()
    args = [a if a != "2" or i != 1 else "3" for i, a in enumerate(ARGS)]
    # a reference edited since the scans were prepared: that scan is prepared again, not taken from the cache
    (ref / "sub-01/anat/sub-01_desc-ignore_mask.nii.gz").unlink()
    assert main(["train", str(bids), str(ref), str(model), "--base", str(base), "-w", str(work), *args,
                 "--resume"]) == 0
    assert not (np.load(work / "sub-01.npz")["labels"] == IGNORE_LABEL).any()
    resumed = json.loads((model / "model_card.json").read_text())["history"]["epochs"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3]

    # the model folder runs as --model
    out = root / "out"
    assert main([str(bids), str(out), "participant", "--participant-label", "03", "--model", str(model),
                 "-w", str(root / "work"), "--n-procs", "1", "-q"]) == 0
    assert (out / "sub-03/anat/sub-03_dseg.nii.gz").is_file()


def test_a_label_map_with_labels_outside_the_table_is_refused_by_name(tmp_path):
    from ichseg.pipeline.training import prepare_scan

    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    ct = np.full((40, 40, 12), 30.0, np.float32)
    labels = np.zeros(ct.shape, np.uint16)
    labels[10:20, 10:20, 4:6] = 300  # another tool's label numbering
    nib.save(nib.Nifti1Image(ct, affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "dseg.nii.gz"))
    with pytest.raises(ValueError, match=r"dseg.nii.gz holds labels \[300\].*relabel it"):
        prepare_scan("sub-01", tmp_path / "ct.nii.gz", tmp_path / "dseg.nii.gz", tmp_path / "template.nii.gz",
                     tmp_path)


def test_train_refuses_bad_input(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    code = main(["train", str(tmp_path / "bids"), str(tmp_path / "ref"), str(tmp_path / "model")])
    assert code == 2
    assert "ichseg train: error" in capsys.readouterr().err
