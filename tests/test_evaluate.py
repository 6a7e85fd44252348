"""``ichseg evaluate``: pairing, measures and outputs, on label maps with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ichseg.bids_app.cli import main
from ichseg.bids_app.evaluate import EvaluationError, evaluate, find_references

AFFINE = np.diag([0.5, 0.5, 5.0, 1.0])
VOXEL_ML = 0.5 * 0.5 * 5.0 / 1000
SHAPE = (40, 40, 12)


def _save(data, path: Path, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), str(path))
    return path


def _blob(size):
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:5 + size, 5:25, 2:8] = 1
    return labels


@pytest.fixture
def folders(tmp_path):
    """Three scans: sub-01 exact, sub-02 half missed (Dice 2/3), sub-03 no prediction;
    sub-04 a prediction without reference."""
    out, ref = tmp_path / "out", tmp_path / "ref"
    truth = {"01": _blob(20), "02": _blob(20), "03": _blob(10)}
    predictions = {"01": _blob(20), "02": _blob(10), "04": _blob(5)}
    for sub, labels in truth.items():
        _save(labels, ref / f"sub-{sub}/anat/sub-{sub}_dseg.nii.gz")
    for sub, labels in predictions.items():
        _save(labels, out / f"sub-{sub}/anat/sub-{sub}_dseg.nii.gz")
        # ichseg's template-space map must not be taken for the label map
        _save(np.zeros((4, 4, 4)), out / f"sub-{sub}/anat/sub-{sub}_space-scct_dseg.nii.gz", np.eye(4))
    return out, ref


def test_evaluate_pairs_scans_and_measures(folders):
    out, ref = folders
    result = evaluate(out, ref)
    rows = {r["scan"]: r for r in result["scans"]}
    assert rows["sub-01"]["hemorrhage_dice"] == 1.0
    assert rows["sub-02"]["hemorrhage_dice"] == pytest.approx(2 / 3)
    assert rows["sub-02"]["hemorrhage_diff_ml"] == pytest.approx(-10 * 20 * 6 * VOXEL_ML)
    assert rows["sub-03"]["status"] == "missing"
    assert result["missing_predictions"] == ["sub-03"]
    assert result["without_reference"] == ["sub-04"]
    stats = result["dataset"]["hemorrhage"]
    assert stats["n_scans"] == 2
    assert stats["dice_mean"] == pytest.approx((1 + 2 / 3) / 2)


def test_evaluate_command_writes_tsv_json_html(folders, tmp_path, capsys):
    out, ref = folders
    assert main(["evaluate", str(out), str(ref), "-o", str(tmp_path / "eval")]) == 0
    table = pd.read_csv(tmp_path / "eval/evaluation.tsv", sep="\t", na_values="n/a")
    assert list(table["scan"]) == ["sub-01", "sub-02", "sub-03"]
    assert table.loc[table.scan == "sub-03", "hemorrhage_dice"].isna().all()
    data = json.loads((tmp_path / "eval/evaluation.json").read_text())
    assert data["dataset"]["hemorrhage"]["rmse_ml"] > 0
    small = data["hemorrhage_by_volume"][0]  # both references are 3 mL
    assert small["range"] == "≤ 5 mL" and small["n_scans"] == 2
    assert small["largest_relative_error"] == pytest.approx(0.5)
    html = (tmp_path / "eval/evaluation.html").read_text()
    assert "<svg" in html and "Bland-Altman" in html and "sub-03" in html
    assert "Hemorrhage by reference volume" in html and "-25.0 %" in html  # mean of 0 and -50 %
    assert "2 scans: Dice 0.833" in capsys.readouterr().out


def test_mask_reference_and_ignore_region(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    predicted = _blob(20)
    predicted[30:35, 30:35, 2:4] = 4  # a second, untraced bleed the reference ignores
    _save(predicted, out / "sub-01/ses-1/anat/sub-01_ses-1_dseg.nii.gz")
    _save(_blob(20) > 0, ref / "sub-01/ses-1/anat/sub-01_ses-1_label-hemorrhage_mask.nii.gz")
    ignore = np.zeros(SHAPE, bool)
    ignore[28:37, 28:37] = True
    _save(ignore, ref / "sub-01/ses-1/anat/sub-01_ses-1_desc-ignore_mask.nii.gz")
    (row,) = evaluate(out, ref)["scans"]
    assert row["hemorrhage_dice"] == 1.0
    assert "iph_dice" not in row  # a mask scores hemorrhage as a whole


def test_reference_on_another_grid_is_an_error_that_says_what_to_do(folders):
    out, ref = folders
    _save(_blob(20), ref / "sub-01/anat/sub-01_dseg.nii.gz", np.diag([1.0, 1.0, 5.0, 1.0]))
    with pytest.raises(EvaluationError, match="not on the grid of .*resample it"):
        evaluate(out, ref)


def test_two_references_for_one_scan_are_refused(folders):
    out, ref = folders
    _save(_blob(20), ref / "sub-01/anat/sub-01_desc-rater2_dseg.nii.gz")
    with pytest.raises(EvaluationError, match="two references for sub-01"):
        find_references(ref)


def test_bad_folders_exit_2_with_a_message(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none"), str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main(["evaluate", str(tmp_path / "out"), str(tmp_path / "out")]) == 2
    assert "no reference segmentations found" in capsys.readouterr().err
