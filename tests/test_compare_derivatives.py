"""bench/compare_derivatives.py: the check that a change kept the results the same."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

_SPEC = importlib.util.spec_from_file_location(
    "compare_derivatives", Path(__file__).resolve().parents[1] / "bench" / "compare_derivatives.py")
compare_derivatives = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_derivatives)


def _folder(root: Path) -> Path:
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.eye(4)), anat / "sub-01_dseg.nii.gz")
    pd.DataFrame([{"iph_ml": 1.5, "status": "ok"}]).to_csv(anat / "sub-01_volumes.tsv", sep="\t", index=False)
    (anat / "sub-01_volumes.json").write_text(json.dumps({"Model": {"model": "m", "inference_seconds": 3.0}}))
    (root / "sub-01.html").write_text("<p>report</p>")
    return root


def test_equal_folders_agree_whatever_the_timings_and_reports(tmp_path):
    before = _folder(tmp_path / "before")
    after = tmp_path / "after"
    shutil.copytree(before, after)
    (after / "sub-01" / "anat" / "sub-01_volumes.json").write_text(
        json.dumps({"Model": {"model": "m", "inference_seconds": 9.0}}))
    (after / "sub-01.html").write_text("<p>another report</p>")
    (after / "sub-01" / "anat" / "sub-01_dseg.json").write_text("{}")
    assert compare_derivatives.main([str(before), str(after), "--allow-added", "*_dseg.json"]) == 0
    assert compare_derivatives.main([str(before), str(after)]) == 1  # the addition was not allowed


def test_a_changed_voxel_or_cell_is_found(tmp_path, capsys):
    before = _folder(tmp_path / "before")
    after = tmp_path / "after"
    shutil.copytree(before, after)
    dseg = after / "sub-01" / "anat" / "sub-01_dseg.nii.gz"
    data = np.asanyarray(nib.load(dseg).dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, np.eye(4)), dseg)
    pd.DataFrame([{"iph_ml": 1.6, "status": "ok"}]).to_csv(
        after / "sub-01" / "anat" / "sub-01_volumes.tsv", sep="\t", index=False)
    assert compare_derivatives.main([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "voxel data differ (1 voxels)" in out and "cells differ in columns ['iph_ml']" in out
