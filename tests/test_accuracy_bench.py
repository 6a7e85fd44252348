"""bench/accuracy.py: the truth-set figures, volumes against the painted volume included."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.pipeline.lesion_insertion import FRACTION_ENTITIES

_SPEC = importlib.util.spec_from_file_location(
    "accuracy_bench", Path(__file__).resolve().parents[1] / "bench" / "accuracy.py")
accuracy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(accuracy)


def _row(scan, ml, ref_ml, dice=0.9):
    return {"scan": scan, "status": "ok", "hemorrhage_ml": ml, "hemorrhage_ref_ml": ref_ml, "hemorrhage_dice": dice}


ROWS = [_row("sub-t001", 28.0, 32.0), _row("sub-t002", 4.0, 5.0), _row("sub-t003", 10.0, 10.0)]
PHANTOMS = {"sub-t001": {"host": "a", "true_volume_ml": "30.0"},
            "sub-t002": {"host": "b", "true_volume_ml": "4.0"},
            "sub-t003": {"host": "a"}}  # no painted volume: left out of the painted figures


def test_painted_volume_separates_the_model_error_from_the_mask_error():
    painted = accuracy.painted_agreement(ROWS, PHANTOMS)
    assert painted["n_scans"] == 2
    model, mask = painted["ichseg"], painted["reference_mask"]
    # ichseg 28 and 4 mL against 30 and 4 mL painted; the masks 32 and 5 mL
    assert model["mean_difference_ml"] == pytest.approx(-1.0)
    assert mask["mean_difference_ml"] == pytest.approx(1.5)
    assert model["n_over_15ml"] == mask["n_over_15ml"] == 1
    assert model["worst_relative_error_over_15ml"] == pytest.approx(2 / 30)
    assert mask["mean_relative_difference_large"] == pytest.approx(2 / 30)
    assert model["rmse_ml"] == pytest.approx((4 / 2) ** 0.5)


def test_summary_keeps_every_scan_and_renders_both_tables():
    summary = accuracy.summarise(ROWS, PHANTOMS)
    # against the masks: 28 vs 32 mL is the only lesion over 15 mL
    assert summary["worst_relative_error_over_15ml"] == pytest.approx(4 / 32)
    assert [s["scan"] for s in summary["scans"]] == ["sub-t001", "sub-t002", "sub-t003"]
    assert summary["scans"][0]["painted_ml"] == 30.0
    text = accuracy.render({"default": summary})
    assert "| default | ichseg | 2 |" in text
    assert "| default | reference mask | 2 |" in text
    assert "6.7 %" in text  # 2 of 30 mL


def test_a_truth_set_without_painted_volumes_still_scores():
    summary = accuracy.summarise(ROWS, {"sub-t001": {"host": "a"}})
    assert summary["painted"] == {"n_scans": 0}
    assert "painted volume" not in accuracy.render({"default": summary})


def test_partial_voxels_hold_the_disagreement_at_the_boundary():
    # a lesion of 4 full voxels and 2 half-covered ones; the prediction misses one half voxel
    # and adds one voxel far away
    fraction = np.array([0, 1, 1, 1, 1, 0.6, 0.4, 0, 0, 0], dtype=np.float32)
    reference = fraction >= 0.5
    predicted = reference.copy()
    predicted[5] = False
    predicted[9] = True
    scores = accuracy.partial_voxel_scores(predicted, reference, fraction)
    assert scores["disagreement_in_partial"] == pytest.approx(0.5)
    assert scores["dice_without_partial"] == pytest.approx(2 * 4 / (4 + 5))
    same = accuracy.partial_voxel_scores(reference, reference, fraction)
    assert np.isnan(same["disagreement_in_partial"]) and same["dice_without_partial"] == 1.0


def _nifti(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))


def test_partial_voxel_table_reads_the_truth_sets_fraction_maps(tmp_path):
    fraction = np.zeros((4, 4, 4), np.float32)
    fraction[1:3, 1:3, 1:3] = 1.0
    fraction[3, 1:3, 1:3] = 0.6
    reference = (fraction >= 0.5).astype(np.uint8)
    predicted = np.where(fraction == 1.0, 1, 0).astype(np.uint8)  # misses the partial face
    predicted[0, 0, 0] = 1  # and adds a voxel the ignore mask hides
    ignore = np.zeros_like(reference)
    ignore[0, 0, 0] = 1
    ref_dir, out = tmp_path / "reference", tmp_path / "out"
    _nifti(reference, ref_dir / "sub-01/anat/sub-01_dseg.nii.gz")
    _nifti(ignore, ref_dir / "sub-01/anat/sub-01_desc-ignore_mask.nii.gz")
    _nifti(fraction, ref_dir / f"sub-01/anat/sub-01_{FRACTION_ENTITIES}.nii.gz")
    _nifti(reference, ref_dir / "sub-02/anat/sub-02_dseg.nii.gz")  # no fraction map: left out
    _nifti(reference, ref_dir / "sub-03/anat/sub-03_mask.nii.gz")  # a mask is no truth set's: left out
    _nifti(predicted, out / "sub-03/anat/sub-03_dseg.nii.gz")
    _nifti(predicted, out / "sub-01/anat/sub-01_dseg.nii.gz")
    _nifti(predicted, out / "sub-02/anat/sub-02_dseg.nii.gz")
    table = accuracy.partial_voxel_table(out, ref_dir)
    assert sorted(table) == ["sub-01", "sub-02"]
    assert "dice_without_partial" not in table["sub-02"]  # no fraction map: no partial voxels
    assert table["sub-01"]["dice_without_partial"] == 1.0 and table["sub-01"]["disagreement_in_partial"] == 1.0
    # of the 12 IPH voxels outside the ignore mask, the 4 of the partial face are missed
    assert table["sub-01"]["confusion"]["iph"]["iph"] == pytest.approx(8 / 12)
    assert table["sub-01"]["confusion"]["iph"]["bg"] == pytest.approx(4 / 12)
    summary = accuracy.summarise([_row("sub-01", 0.008, 0.012)], {}, table)
    assert summary["partial_voxels"]["n_scans"] == 1
    assert "| default | 1 | 100 % | 1.000 |" in accuracy.render({"default": summary})


def test_recomputed_probabilities_are_kept_until_their_run_changes(tmp_path, monkeypatch):
    node = tmp_path / "ct_sub_t001"
    for part in ("register/ct_space-template.nii", "segment/probabilities_space-template.nii"):
        (node / part).parent.mkdir(parents=True, exist_ok=True)
        (node / part).write_bytes(b"")
    calls = []

    def fake(node_, source, cache):
        calls.append(source)
        return np.full((5, 2, 2, 2), len(calls), np.float32), np.eye(4)

    monkeypatch.setattr(accuracy, "_recomputed", fake)
    first, _ = accuracy._cached_recomputed(node, "ensemble", {})
    again, affine = accuracy._cached_recomputed(node, "ensemble", {})
    assert calls == ["ensemble"] and np.array_equal(first, again) and np.array_equal(affine, np.eye(4))
    # a new run of the setting (its probabilities rewritten): computed again
    stat = (node / "segment/probabilities_space-template.nii").stat()
    os.utime(node / "segment/probabilities_space-template.nii", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    remade, _ = accuracy._cached_recomputed(node, "ensemble", {})
    assert calls == ["ensemble", "ensemble"] and remade[0, 0, 0, 0] == 2


def test_class_figures_say_where_the_references_ventricular_blood_went(tmp_path):
    reference = np.zeros((10, 2, 2), np.uint8)
    reference[:, 0, 0] = 4  # 10 voxels of IVH
    predicted = np.zeros_like(reference)
    predicted[:6, 0, 0] = 1  # 6 called IPH
    predicted[6:9, 0, 0] = 4  # 3 IVH
    predicted[0, 1, 1] = 2  # and an EAH voxel elsewhere
    ref_dir, out = tmp_path / "reference", tmp_path / "out"
    _nifti(reference, ref_dir / "sub-v01/anat/sub-v01_dseg.nii.gz")
    _nifti(predicted, out / "sub-v01/anat/sub-v01_dseg.nii.gz")
    table = accuracy.partial_voxel_table(out, ref_dir)
    shares = table["sub-v01"]["confusion"]
    assert list(shares) == ["ivh"]  # the only bleeding class of the reference
    assert shares["ivh"] == pytest.approx({"bg": 0.1, "iph": 0.6, "eah": 0.0, "oed": 0.0, "ivh": 0.3})
    row = {"scan": "sub-v01", "status": "ok", "hemorrhage_ml": 0.01, "hemorrhage_ref_ml": 0.01, "hemorrhage_dice": 0.9,
           "ivh_ml": 0.003, "ivh_ref_ml": 0.01, "ivh_dice": 2 * 3 / 13, "iph_ml": 0.006, "iph_ref_ml": 0.0,
           "iph_dice": float("nan")}
    summary = accuracy.summarise([row], {}, table)
    assert list(summary["by_class"]) == ["ivh"]
    ivh = summary["by_class"]["ivh"]
    assert ivh["mean_difference_ml"] == pytest.approx(-0.007) and ivh["labelled_as"]["iph"] == pytest.approx(0.6)
    # r and the worst error over 15 mL need more scans and larger lesions
    assert "| default | IVH | 1 | 0.462 / 0.462 | – | -0.01 | 0.01 | – | 10 / 60 / 0 / 0 / 30 |" in accuracy.render(
        {"default": summary})
    # rows without class figures: no class table
    assert "By class" not in accuracy.render({"default": accuracy.summarise(ROWS, PHANTOMS)})


def test_the_oedema_rim_of_the_reference_is_scored_as_a_class(tmp_path):
    reference = np.zeros((10, 2, 2), np.uint8)
    reference[:4, 0, 0] = 1  # 4 voxels of IPH
    reference[4:8, 0, 0] = 3  # and a rim of 4 voxels of oedema
    predicted = reference.copy()
    predicted[6:8, 0, 0] = 0  # half the rim missed
    ref_dir, out = tmp_path / "reference", tmp_path / "out"
    _nifti(reference, ref_dir / "sub-t01/anat/sub-t01_dseg.nii.gz")
    _nifti(predicted, out / "sub-t01/anat/sub-t01_dseg.nii.gz")
    table = accuracy.partial_voxel_table(out, ref_dir)
    assert list(table["sub-t01"]["confusion"]) == ["iph", "oed"]
    assert table["sub-t01"]["confusion"]["oed"] == pytest.approx({"bg": 0.5, "iph": 0.0, "eah": 0.0, "oed": 0.5,
                                                                  "ivh": 0.0})
    row = {"scan": "sub-t01", "status": "ok", "hemorrhage_ml": 0.004, "hemorrhage_ref_ml": 0.004,
           "hemorrhage_dice": 1.0, "iph_ml": 0.004, "iph_ref_ml": 0.004, "iph_dice": 1.0,
           "oed_ml": 0.002, "oed_ref_ml": 0.004, "oed_dice": 2 * 2 / 6}
    summary = accuracy.summarise([row], {}, table)
    assert list(summary["by_class"]) == ["iph", "oed"]
    rendered = accuracy.render({"default": summary})
    assert "| default | OED | 1 | 0.667 / 0.667 | – | -0.00 | 0.00 | – | 50 / 0 / 0 / 50 / 0 |" in rendered
    # the intraparenchymal class too: its volume can be wrong where the total is right
    assert "| default | IPH | 1 | 1.000 / 1.000 | – | 0.00 | 0.00 | – |" in rendered


def test_subdural_voxels_found_are_counted_by_the_layers_local_thickness():
    # a crescent 10 mm thick at its centre (the origin), radius 20 mm: (1 - (r/20)^2) of it at r
    reference = np.zeros((41, 3, 3), bool)
    reference[:, 1, 1] = True
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = -20.0  # voxel i lies at x = i - 20
    found = reference.copy()
    found[:10] = False  # x -20..-11 missed: the thin end on one side
    phantom = {"centre_ras": "[0.0, 1.0, 1.0]", "thickness_mm": "10", "radius_mm": "20", "floor_z_mm": "-100"}
    counts = accuracy.layer_counts(found, reference, affine, phantom)
    x = np.arange(41) - 20.0
    local = 10 * (1 - (x / 20) ** 2)
    expected_voxels = np.histogram(local, bins=[0, 2, 4, 6, 10, 99])[0]
    assert [counts[label][1] for label in accuracy.LAYER_LABELS] == list(expected_voxels)
    expected_found = np.histogram(local[x >= -10], bins=[0, 2, 4, 6, 10, 99])[0]
    assert [counts[label][0] for label in accuracy.LAYER_LABELS] == list(expected_found)
    assert counts["≥ 10 mm"] == [1, 1] and counts["0-2 mm"] == [3, 6]
    assert accuracy.layer_counts(found, reference, affine, {"host": "a"}) is None  # not a crescent
    rows = [_row("sub-e001", 1.0, 1.0)]
    stats = accuracy.summarise(rows, {"sub-e001": {"host": "a"}}, {"sub-e001": {"layers": counts, "confusion": {}}})
    layer = stats["by_layer_thickness"]
    assert layer["2-4 mm"]["found"] == pytest.approx(counts["2-4 mm"][0] / counts["2-4 mm"][1])
    assert "layers" not in stats["scans"][0]
    assert "Subdural crescents" in accuracy.render({"default": stats})


def test_class_split_says_which_mislabelled_voxels_lie_where_the_label_is_possible():
    spec = importlib.util.spec_from_file_location(
        "class_split_bench", Path(__file__).resolve().parents[1] / "bench" / "class_split.py")
    class_split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(class_split)
    affine = np.eye(4)
    brain = np.zeros((40, 20, 20), bool)
    brain[2:38, 2:18, 2:18] = True
    ventricles = np.zeros_like(brain)
    ventricles[18:22, 8:12, 8:12] = True
    lesion = np.zeros_like(brain)
    lesion[10:30, 9:11, 9:11] = True  # 80 voxels, 16 of them in the ventricle
    predicted = np.where(lesion, 1, 0).astype(np.uint8)
    predicted[20:24, 9:11, 9:11] = 4  # 16 IVH: 8 inside the ventricle, 8 within 2 mm of it
    predicted[10:14, 9:11, 9:11] = 4  # 16 IVH 4-8 mm from it: not where IVH can be
    predicted[26:30, 9:11, 9:11] = 2  # 16 EAH, 7 mm or more inside the brain's edge
    split = class_split.split_of(lesion, predicted, ventricles, brain, affine)
    assert split["iph_share"] == pytest.approx(32 / 80)
    assert split["ivh_share"] == pytest.approx(32 / 80) and split["eah_share"] == pytest.approx(16 / 80)
    assert split["lesion_in_ventricles_share"] == pytest.approx(16 / 80)
    assert split["ivh_near_ventricles_share"] == pytest.approx(0.5)
    assert split["eah_near_brain_edge_share"] == 0.0
    assert split["lesion_ml"] == pytest.approx(0.08)


def test_class_figures_give_the_worst_error_of_the_large_lesions():
    rows = [{"scan": f"sub-t00{i}", "status": "ok", "hemorrhage_ml": t, "hemorrhage_ref_ml": t, "hemorrhage_dice": 0.9,
             "iph_ml": ml, "iph_ref_ml": ref, "iph_dice": 0.8}
            for i, (t, ml, ref) in enumerate([(20.0, 15.0, 20.0), (40.0, 38.0, 40.0), (5.0, 1.0, 5.0)])]
    iph = accuracy.summarise(rows, {})["by_class"]["iph"]
    assert iph["worst_relative_error_over_15ml"] == pytest.approx(0.25)  # 15 of 20 mL; 1 of 5 mL is not > 15 mL
    assert iph["volume_pearson_r"] == pytest.approx(np.corrcoef([15, 38, 1], [20, 40, 5])[0, 1])
