"""bench/real_scans.py: the real CTs under several settings, compared with the first."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.pipeline.naming import derivative_path
from ichseg.pipeline.phantom import make_head_phantom

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # its sibling modules, as when it runs as a script
_SPEC = importlib.util.spec_from_file_location("real_scans_bench", BENCH / "real_scans.py")
real_scans = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(real_scans)


def _write_run(out: Path, source: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    dseg = derivative_path(out, source, "dseg")
    dseg.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), dseg)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    values = {"iph_ml": (labels == 1).sum(), "eah_ml": (labels == 2).sum(), "oed_ml": (labels == 3).sum(),
              "ivh_ml": (labels == 4).sum()}
    values = {k: v * voxel_ml for k, v in values.items()}
    values["hemorrhage_ml"] = values["iph_ml"] + values["eah_ml"] + values["ivh_ml"]
    table = derivative_path(out, source, "volumes")
    table.write_text("\t".join(values) + "\n" + "\t".join(f"{v:.4f}" for v in values.values()) + "\n")


def test_settings_are_compared_with_the_first_and_a_failed_scan_is_named(tmp_path):
    phantom = make_head_phantom(shape=(48, 48, 12), voxel_size=(4.0, 4.0, 5.0), hemorrhage_ml=20.0)
    source = tmp_path / "bids" / "sub-a" / "anat" / "sub-a_ct.nii.gz"
    source.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(phantom.data, phantom.affine), source)
    missing = tmp_path / "bids" / "sub-b" / "anat" / "sub-b_ct.nii.gz"
    first = np.where(phantom.hemorrhage_mask, 1, 0)
    second = first.copy()
    x = np.nonzero(phantom.hemorrhage_mask)[0]
    second[: int(np.median(x))] = 0  # the second setting finds half of the bleed
    _write_run(tmp_path / "default", source, first, phantom.affine)
    _write_run(tmp_path / "other", source, second, phantom.affine)
    rows = real_scans.compare_settings({"default": tmp_path / "default", "other": tmp_path / "other"},
                                       [("a", source), ("b", missing)], tmp_path / "figures")
    a, b = rows
    expected = 2 * (second > 0).sum() / ((first > 0).sum() + (second > 0).sum())
    assert np.isclose(a["agreement"]["other"]["hemorrhage"], expected) and expected < 0.9
    assert np.isnan(a["agreement"]["other"]["oed"])  # neither has oedema
    assert a["volumes"]["other"]["hemorrhage_ml"] < a["volumes"]["default"]["hemorrhage_ml"]
    assert Path(a["figure"]).is_file() and b["failed"] == ["default", "other"]
    text = real_scans.render({"machine": {}, "settings": [("default", ""), ("other", "--x 1")], "rows": rows})
    assert "| a | other | " in text and f"{expected:.3f}" in text and "| b | other | failed |" in text
    assert "`ichseg BIDS OUT participant --x 1`" in text
