"""bench/make_truthset.py: the truth sets of intraventricular and extra-axial blood, on a real head."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.bids_app.evaluate import find_references
from ichseg.pipeline.geometry import voxel_volume_ml
from ichseg.pipeline.labels import EAH_INDEX, IVH_INDEX

_SPEC = importlib.util.spec_from_file_location(
    "make_truthset", Path(__file__).resolve().parents[1] / "bench" / "make_truthset.py")
make_truthset = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(make_truthset)


@pytest.mark.realdata
@pytest.mark.parametrize("kind, letter, index, columns", [
    ("ivh", "v", IVH_INDEX, {"ivh_reference_ml", "side", "fill_share"}),
    ("eah", "e", EAH_INDEX, {"eah_reference_ml", "side", "thickness_mm", "radius_mm"}),
])
def test_drawn_phantoms_in_the_normal_head(asset, tmp_path, kind, letter, index, columns):
    asset("ct/ge-head_ct.nii.gz")
    rows = make_truthset.make_truthset(tmp_path, "heldout", 2, 0, ["ge-head"], kind=kind)
    root = tmp_path / f"heldout-{kind}"
    labels_ = [f"sub-h{letter}001", f"sub-h{letter}002"]
    assert [r["participant_id"] for r in rows] == labels_
    table = (root / "phantoms.tsv").read_text().splitlines()
    assert columns | {"true_volume_ml", "clot_hu"} <= set(table[0].split("\t"))
    references = find_references(root / "reference")
    assert sorted(references) == labels_
    for row in rows:
        anat = root / "reference" / row["participant_id"] / "anat" / row["participant_id"]
        dseg = nib.load(f"{anat}_dseg.nii.gz")
        labels = np.asanyarray(dseg.dataobj)
        fraction = np.asanyarray(nib.load(f"{anat}_label-{kind.upper()}_desc-fraction_probseg.nii.gz").dataobj)
        assert set(np.unique(labels)) == {0, index}
        assert ((labels == index) == (fraction >= 0.5)).all()
        voxel_ml = voxel_volume_ml(dseg.affine)
        assert float(fraction.sum()) * voxel_ml == pytest.approx(row["true_volume_ml"], abs=1e-3)
        assert (labels == index).sum() * voxel_ml == pytest.approx(row[f"{kind}_reference_ml"], abs=1e-3)
        assert row["true_volume_ml"] > 0.5  # the GE head's ventricles or convexity are found and filled
        assert not (anat.parent / f"{anat.name}_desc-ignore_mask.nii.gz").exists()  # a normal head


def test_a_reversed_density_range_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_truthset.main([str(tmp_path), "--kind", "ivh", "--ivh-hu", "75", "55"])
    assert "--ivh-hu 75 55: give the lower density first" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["iph", "eah"])
def test_a_ventricular_density_for_a_kind_without_ventricular_blood_is_refused(tmp_path, capsys, kind):
    with pytest.raises(SystemExit):
        make_truthset.main([str(tmp_path), "--kind", kind, "--ivh-hu", "55", "75"])
    assert f"--kind {kind} paints none" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.realdata
def test_a_volume_range_keeps_the_split_shapes_of_that_size_only(asset):
    asset("lesion-shapes/HemSeg-500.zip")
    every = make_truthset.split_shapes("heldout")
    chosen = make_truthset.split_shapes("heldout", (2.0, 82.0))
    assert 0 < len(chosen) < len(every)
    assert all(2.0 <= s.volume_ml <= 82.0 for s in chosen)
    assert {s.name for s in chosen} == {s.name for s in every if 2.0 <= s.volume_ml <= 82.0}


@pytest.mark.parametrize("argv, message", [
    (["--volume-ml", "82", "2"], "--volume-ml 82 2: give the lower volume first"),
    (["--kind", "ivh", "--volume-ml", "2", "82"], "--kind ivh uses none"),
])
def test_a_wrong_volume_range_is_refused_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        make_truthset.main([str(tmp_path), *argv])
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
