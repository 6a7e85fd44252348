"""End to end: a BIDS dataset of real head CTs through the ``ichseg`` command line.

Built in a temporary folder from the real CTs of the asset lookup: mistie-0034 (large
hematoma) scanned in two sessions, the GE head (normal, gantry tilt, irregular slices) and
a scan that arrives already skull-stripped, plus one broken copy of mistie-0034 per kind of
bad input. Runs the participant level with two processes, the group level, then the
participant level again to check caching; bad scans must fail with their reason while the
good ones produce every output.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ichseg.bids_app.cli import main
from ichseg.pipeline.labels import VOLUME_COLUMNS
from ichseg.pipeline.naming import DERIVATIVES, derivative_path, scan_id

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SCANS = {
    # BIDS path of the copy  ->  asset
    "sub-0034/ses-1/anat/sub-0034_ses-1_ct.nii.gz": "ct/mistie-0034_ct.nii.gz",
    "sub-0034/ses-2/anat/sub-0034_ses-2_ct.nii.gz": "ct/mistie-0034_ct.nii.gz",
    "sub-ge/anat/sub-ge_ct.nii.gz": "ct/ge-head_ct.nii.gz",
    "sub-stripped/anat/sub-stripped_acq-brain_ct.nii.gz": "ct/deepbleed-brain_ct.nii.gz",
}
#: Kinds written for every scan (figures/reports/failure records are not in this list).
PER_SCAN_KINDS = ["brain_mask", "dseg", "dseg_tsv", "hemorrhage_probseg", "template_ct",
                  "template_dseg", "xfm", "volumes", "volumes_json", "regions", "report"]
#: Outputs that must sit exactly on the input CT's grid.
SCAN_GRID_KINDS = ["brain_mask", "dseg", "hemorrhage_probseg"]


def _mistie_variant(mistie: nib.Nifti1Image, kind: str) -> tuple[nib.Nifti1Image | bytes, dict]:
    """A broken copy of mistie-0034 (image or raw bytes) and its sidecar, for one input problem."""
    data = np.asanyarray(mistie.dataobj).astype(np.int16)
    affine, header = mistie.affine, mistie.header.copy()
    sidecar = {"Modality": "CT"}
    if kind == "4d":
        return nib.Nifti1Image(np.stack([data, data], axis=-1), affine, header), sidecar
    if kind == "single-slice":
        return nib.Nifti1Image(data[:, :, 10:11], affine, header), sidecar
    if kind == "nan":
        floats = data.astype(np.float32)
        floats[200:210, 200:210, 12] = np.nan
        return nib.Nifti1Image(floats, affine), sidecar
    if kind == "raw-values":  # stored values without the DICOM rescale (HU + 1024)
        return nib.Nifti1Image((np.clip(data, -1024, None) + 1024).astype(np.int16), affine), sidecar
    if kind == "voxel-size":
        huge = affine.copy()
        huge[:3, :3] *= 40.0
        return nib.Nifti1Image(data, huge), sidecar
    if kind == "no-orientation":
        img = nib.Nifti1Image(data, affine)
        img.set_sform(None, code=0)
        img.set_qform(None, code=0)
        return img, sidecar
    if kind == "localizer":
        return nib.Nifti1Image(data, affine, header), {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}
    if kind == "contrast":
        return nib.Nifti1Image(data, affine, header), {"ContrastBolusAgent": "Omnipaque 350"}
    if kind == "truncated":
        raw = gzip.compress(nib.Nifti1Image(data, affine, header).to_bytes())
        return raw[: len(raw) // 3], sidecar
    if kind == "eight-bit":  # a brain-window export: grey levels 0-255, no air at -1000 HU
        grey = np.clip(data / 80.0 * 255.0, 0, 255).round().astype(np.uint8)
        return nib.Nifti1Image(grey, affine), sidecar
    if kind == "plain-as-gz":  # uncompressed NIfTI bytes under a .nii.gz name
        return nib.Nifti1Image(data, affine, header).to_bytes(), sidecar
    if kind == "invalid-json":  # the image is fine, its sidecar is not JSON
        return nib.Nifti1Image(data, affine, header), '{"Modality": "CT",'
    if kind == "folder":  # a folder where the image should be
        return None, sidecar
    raise ValueError(kind)


#: Broken copies of mistie-0034: the error message each must give (a fragment, lower case).
BAD_INPUTS = {
    "4d": "expected one 3d head ct volume",
    "single-slice": "slice",
    "nan": "nan or infinite",
    "raw-values": "hounsfield",
    "voxel-size": "implausible voxel size",
    "no-orientation": "no orientation",
    "localizer": "localizer",
    "contrast": "contrast-enhanced",
    "truncated": "cannot read the image",
    "eight-bit": "not hounsfield units",
    "plain-as-gz": "not gzip-compressed although its name ends in .gz: rename it to",
    "invalid-json": "is not valid json",
    "folder": "is a folder, not a nifti file",
}
#: Six 6-mm slices of mistie-0034 through its hematoma: runs, but incomplete head coverage.
PARTIAL = "sub-partial/anat/sub-partial_ct.nii.gz"
#: Follow-ups of sub-0034 whose hematoma was grown by this many mL (its dense voxels dilated,
#: with the clot's HU): expansion (> 6 mL) and no expansion.
GROWN = {"sub-0034/ses-3/anat/sub-0034_ses-3_ct.nii.gz": 8.0,
         "sub-0034/ses-4/anat/sub-0034_ses-4_ct.nii.gz": 2.0}


def _grow_hematoma(img: nib.Nifti1Image, ml: float) -> tuple[nib.Nifti1Image, float]:
    """mistie-0034 with its hematoma grown into the brain around it by ``ml``; returns the image
    and the exact growth.

    The visible hematoma is the dense clot with the partial-volume rim around it (above 40 HU,
    within 2 mm), which the label map already covers. The growth fills everything within an
    in-plane distance of the clot with the clot's HU, out to the distance at which ``ml`` of
    brain-density voxels beyond the visible hematoma have been filled.
    """
    ct = np.asanyarray(img.dataobj).astype(np.int16)
    clot = _hematoma(ct)
    zooms = img.header.get_zooms()[:3]
    voxel_ml = float(np.prod(zooms)) / 1000
    distance = ndimage.distance_transform_edt(~clot, sampling=(zooms[0], zooms[1], 1e6))
    visible = clot | ((distance <= 2.0) & (ct > 40))
    brain = (ct > 10) & (ct < 60)
    new = brain & ~visible
    order = np.argsort(np.where(new, distance, np.inf), axis=None)[: int(round(ml / voxel_ml))]
    reach = distance.flat[order[-1]]
    grown = ct.copy()
    fill = (distance <= reach) & (brain | visible) & ~clot
    grown[fill] = int(np.median(ct[clot]))
    return nib.Nifti1Image(grown, img.affine, img.header), float(np.count_nonzero(fill & ~visible) * voxel_ml)


def _bad_relpath(kind: str) -> str:
    label = "bad" + kind.replace("-", "")
    return f"sub-{label}/anat/sub-{label}_ct.nii.gz"


@pytest.fixture(scope="module")
def bids_dataset(tmp_path_factory, asset):
    root = tmp_path_factory.mktemp("bids")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "ichseg integration", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    for relpath, name in SCANS.items():
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(asset(name), target)
    shutil.copyfile(asset("ct/ge-head_ct.nii.gz").with_name("ge-head_ct.json"),
                    root / "sub-ge/anat/sub-ge_ct.json")
    mistie = nib.load(asset("ct/mistie-0034_ct.nii.gz"))
    for kind in BAD_INPUTS:
        target = root / _bad_relpath(kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        image, sidecar = _mistie_variant(mistie, kind)
        if image is None:
            target.mkdir()
        elif isinstance(image, bytes):
            target.write_bytes(image)
        else:
            nib.save(image, target)
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        target.with_name(target.name.replace(".nii.gz", ".json")).write_text(text)
    target = root / PARTIAL
    target.parent.mkdir(parents=True)
    nib.save(mistie.slicer[:, :, 8:14], target)
    for relpath, ml in GROWN.items():
        (root / relpath).parent.mkdir(parents=True)
        nib.save(_grow_hematoma(mistie, ml)[0], root / relpath)
    return root


@pytest.fixture(scope="module")
def run(bids_dataset, tmp_path_factory):
    """Run participant (twice) and group levels; return paths, exit codes and timings."""
    base = tmp_path_factory.mktemp("run")
    out, work = base / "derivatives", base / "work"
    before = {p: p.stat().st_mtime for p in bids_dataset.rglob("*")}
    argv = [str(bids_dataset), str(out), "participant", "-w", str(work), "--n-procs", "2"]
    start = time.perf_counter()
    first = main(argv)
    first_seconds = time.perf_counter() - start
    volumes_first = {p: p.read_text() for p in out.glob("sub-*/**/*_volumes.tsv")}
    group = main([str(bids_dataset), str(out), "group"])
    start = time.perf_counter()
    second = main(argv)
    second_seconds = time.perf_counter() - start
    return {
        "bids": bids_dataset, "out": out, "codes": (first, group, second),
        "seconds": (first_seconds, second_seconds), "volumes_first": volumes_first,
        "inputs_before": before,
    }


def _volumes(run, relpath) -> pd.Series:
    path = derivative_path(run["out"], run["bids"] / relpath, "volumes")
    return pd.read_csv(path, sep="\t", na_values="n/a").iloc[0]


def test_exit_codes(run):
    # bad inputs fail, so every level reports failure (1) rather than a crash (2+)
    assert run["codes"] == (1, 1, 1)


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_fails_with_its_reason(run, kind):
    source = run["bids"] / _bad_relpath(kind)
    record = derivative_path(run["out"], source, "failure")
    assert record.exists(), f"no failure record for {kind}"
    message = json.loads(record.read_text())["error"]
    assert BAD_INPUTS[kind] in message.lower(), message
    assert str(source.name) in message  # the message names the file
    assert not derivative_path(run["out"], source, "volumes").exists()
    assert not derivative_path(run["out"], source, "dseg").exists()
    table = pd.read_csv(run["out"] / "group_volumes.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    row = table[table["source_file"].str.endswith(source.name)].iloc[0]
    assert row["status"] == "failed"
    assert BAD_INPUTS[kind] in row["error"].lower()


def test_input_warnings_recorded(run):
    mistie = json.loads(derivative_path(
        run["out"], run["bids"] / next(iter(SCANS)), "volumes_json").read_text())
    assert any("thick slices" in w for w in mistie["Warnings"])
    ge = json.loads(derivative_path(run["out"], run["bids"] / "sub-ge/anat/sub-ge_ct.nii.gz", "volumes_json").read_text())
    assert any("gantry tilt" in w for w in ge["Warnings"])
    assert _volumes(run, "sub-ge/anat/sub-ge_ct.nii.gz")["n_warnings"] >= 1


def test_partial_head_coverage_gives_lower_bounds_for_review(run):
    row = _volumes(run, PARTIAL)
    assert row["status"] == "ok"
    assert row["head_coverage_mm"] < 40 and bool(row["flag_head_coverage"]) and bool(row["volumes_lower_bound"])
    assert row["qc"] == "review"
    sidecar = json.loads(derivative_path(run["out"], run["bids"] / PARTIAL, "volumes_json").read_text())
    warning = next(w for w in sidecar["Warnings"] if w.startswith("incomplete head coverage"))
    assert "mm of head" in warning and "lower bounds" in warning
    assert "lower bound" in sidecar["volumes_lower_bound"]["Description"]
    whole = _volumes(run, next(iter(SCANS)))
    assert 0 < row["hemorrhage_ml"] < whole["hemorrhage_ml"]  # part of the bleed is outside
    table = pd.read_csv(run["out"] / "group_volumes.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    partial = table[table["participant_id"] == "sub-partial"].iloc[0]
    assert bool(partial["volumes_lower_bound"]) and partial["qc"] == "review"


def test_qc_rating_in_tables_and_group_report(run):
    table = pd.read_csv(run["out"] / "group_volumes.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert set(table.loc[table["status"] == "failed", "qc"]) == {"fail"}
    assert set(table.loc[table["status"] == "ok", "qc"]) <= {"pass", "review", "fail"}
    # mistie-0034 has 6-mm slices and the GE head a gantry tilt: both ask for a look
    assert _volumes(run, "sub-ge/anat/sub-ge_ct.nii.gz")["qc"] == "review"
    sidecar = json.loads((run["out"] / "group_volumes.json").read_text())
    assert "Rule:" in sidecar["qc"]["Description"]
    html = (run["out"] / "group_report.html").read_text()
    assert "QC rating" in html and "review" in html


def test_no_temporary_files_left(run):
    assert not [p for p in run["out"].rglob("*") if ".tmp-" in p.name]


def test_input_dataset_untouched(run):
    after = {p: p.stat().st_mtime for p in run["bids"].rglob("*")}
    assert after == run["inputs_before"]


def test_dataset_description(run):
    description = json.loads((run["out"] / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "ichseg"
    assert description["GeneratedBy"][0]["Version"]
    assert description["SourceDatasets"]


@pytest.mark.parametrize("relpath", list(SCANS))
def test_every_output_named_and_on_the_input_grid(run, relpath):
    source = nib.load(run["bids"] / relpath)
    for kind in PER_SCAN_KINDS:
        path = derivative_path(run["out"], run["bids"] / relpath, kind)
        assert path.exists(), f"missing {kind}: {path}"
        assert path.name.endswith(DERIVATIVES[kind].extension)
    for kind in SCAN_GRID_KINDS:
        img = nib.load(derivative_path(run["out"], run["bids"] / relpath, kind))
        assert img.shape == source.shape[:3], kind
        np.testing.assert_allclose(img.affine, source.affine, atol=1e-4, err_msg=kind)
    dseg = np.asanyarray(nib.load(derivative_path(run["out"], run["bids"] / relpath, "dseg")).dataobj)
    assert set(np.unique(dseg)) <= {0, 1, 2, 3, 4}
    probseg = nib.load(derivative_path(run["out"], run["bids"] / relpath, "hemorrhage_probseg")).get_fdata()
    assert probseg.min() >= 0 and probseg.max() <= 1
    row = _volumes(run, relpath)
    assert list(row.index[: len(VOLUME_COLUMNS)]) == list(VOLUME_COLUMNS)
    assert row["status"] == "ok"
    sidecar = json.loads(derivative_path(run["out"], run["bids"] / relpath, "volumes_json").read_text())
    assert len(sidecar["Model"]["weights_sha256"][0]) == 64
    assert sidecar["SoftwareVersions"]["ichseg"]


def _hematoma(ct: np.ndarray) -> np.ndarray:
    """The visible hematoma: the largest connected blob of 55-90 HU (fresh clotted blood)."""
    blood = ndimage.binary_opening((ct > 55) & (ct < 90), iterations=1)
    labels, n = ndimage.label(blood)
    sizes = ndimage.sum(blood, labels, range(1, n + 1))
    return labels == (np.argmax(sizes) + 1)


@pytest.mark.parametrize("session", ["ses-1", "ses-2"])
def test_mistie_hematoma_found(run, session):
    relpath = f"sub-0034/{session}/anat/sub-0034_{session}_ct.nii.gz"
    source = nib.load(run["bids"] / relpath)
    ct = source.get_fdata()
    hematoma = _hematoma(ct)
    # The deep hematoma: right side of the patient by the header's RAS axes (x > 0 mm),
    # which is the image's left in the radiological display where it is described as "left".
    centre_world = source.affine @ np.r_[ndimage.center_of_mass(hematoma), 1]
    assert 20 < centre_world[0] < 70
    dseg = np.asanyarray(nib.load(derivative_path(run["out"], source.get_filename(), "dseg")).dataobj)
    iph = dseg == 1
    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(iph))
    assert hematoma[centre], "the centre of mass of the IPH label is not inside the hematoma"
    assert (iph & hematoma).sum() / hematoma.sum() > 0.8  # the label covers the hematoma
    row = _volumes(run, relpath)
    # By eye, the hematoma spans 8 slices of 6 mm and about 45 x 35 mm in plane: ~35-50 mL;
    # the 55-90 HU core alone is about 33 mL.
    assert 30 < row["iph_ml"] < 60
    assert 30 < row["hemorrhage_ml"] < 65
    assert 1000 < row["brain_ml"] < 1800
    # ABC/2 of the clot (38 mL of IPH in one component): the unweighted one near it, Kothari's
    # weighting of the 6-mm slices lower
    assert 0.7 * row["iph_ml"] < row["iph_abc2_unweighted_ml"] < 1.5 * row["iph_ml"]
    assert 15 < row["iph_abc2_ml"] < row["iph_abc2_unweighted_ml"]
    # a deep hematoma on the side x > 0 of the header's RAS axes: the patient's right
    assert row["location"] == "deep" and row["side"] == "right"
    assert row["deep_ml"] > 0.5 * row["iph_ml"] and row["right_ml"] > 0.9 * row["iph_ml"]
    regions = pd.read_csv(derivative_path(run["out"], source.get_filename(), "regions"), sep="\t")
    assert regions["iph_ml"].sum() == pytest.approx(row["iph_ml"], abs=0.01)


def test_sessions_give_identical_results(run):
    first = _volumes(run, "sub-0034/ses-1/anat/sub-0034_ses-1_ct.nii.gz")
    second = _volumes(run, "sub-0034/ses-2/anat/sub-0034_ses-2_ct.nii.gz")
    pd.testing.assert_series_equal(first, second, check_names=False)


def test_normal_head_has_almost_no_hemorrhage(run):
    row = _volumes(run, "sub-ge/anat/sub-ge_ct.nii.gz")
    assert row["hemorrhage_ml"] < 0.5  # issue 11's target for this normal head
    assert 800 < row["brain_ml"] < 1600


def test_skull_stripped_scan_runs(run):
    row = _volumes(run, "sub-stripped/anat/sub-stripped_acq-brain_ct.nii.gz")
    assert 1000 < row["brain_ml"] < 1600
    assert row["hemorrhage_ml"] < 20  # small hyperdense foci at most


def test_group_table(run):
    table = pd.read_csv(run["out"] / "group_volumes.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert len(table) == len(SCANS) + len(BAD_INPUTS) + 1 + len(GROWN)
    assert set(table["status"]) == {"ok", "failed"}
    table = table[table["status"] == "ok"]
    assert len(table) == len(SCANS) + 1 + len(GROWN)
    assert sorted(table["participant_id"].unique()) == ["sub-0034", "sub-ge", "sub-partial", "sub-stripped"]
    for flag in ("flag_brain_volume", "flag_registration", "flag_roi_edge", "flag_outside_brain"):
        assert flag in table.columns
    # the faint blood the hysteresis seed left out is counted, not hidden (mistie-0034: specks
    # at the skull base and a strip along the convexity, docs/method.md section 7)
    assert (table["hemorrhage_below_seed_ml"] >= 0).all()
    first = (table["participant_id"] == "sub-0034") & (table["session_id"] == "ses-1")
    assert table.loc[first, "hemorrhage_below_seed_ml"].item() > 0.3
    assert set(table.loc[table["participant_id"] == "sub-0034", "session_id"]) == {"ses-1", "ses-2", "ses-3", "ses-4"}
    for column in VOLUME_COLUMNS:
        assert table[column].notna().all(), column
    sidecar = json.loads((run["out"] / "group_volumes.json").read_text())
    assert sidecar["hemorrhage_ml"]["Units"] == "mL"
    mistie = table[table["participant_id"] == "sub-0034"].iloc[0]
    assert mistie["hemorrhage_ml"] == pytest.approx(_volumes(run, next(iter(SCANS)))["hemorrhage_ml"])


def test_longitudinal_table_flags_expansion_by_the_grown_volume(run):
    table = pd.read_csv(run["out"] / "group_longitudinal.tsv", sep="\t", na_values="n/a", keep_default_na=False)
    assert list(table["participant_id"]) == ["sub-0034"] * 3  # the other subjects have one scan
    rows = table.set_index("followup_session_id")
    assert set(table["baseline_session_id"]) == {"ses-1"}
    same, eight, two = rows.loc["ses-2"], rows.loc["ses-3"], rows.loc["ses-4"]
    assert same["iph_change_ml"] == 0 and not same["expansion_6ml_33pct"]  # the same CT twice
    # The CNN measures the growth painted into the image: 8.5 mL beyond the visible hematoma
    # came out as 8.9 mL; 2.5 mL as 4.1 mL (the filled partial-volume rim adds to it), still
    # short of any expansion definition.
    assert 8 * 0.65 < eight["hemorrhage_change_ml"] < 8 * 1.35
    assert 0.5 < two["hemorrhage_change_ml"] < 6.0 and two["iph_change_pct"] < 33
    assert eight["expansion_6ml_33pct"] and not two["expansion_6ml_33pct"]
    assert not eight["expansion_12p5ml_1p4x"] and not two["expansion_12p5ml_1p4x"]
    assert eight["growth_le_35pct"] and two["growth_le_35pct"]


def test_tables_read_cleanly_with_pandas(run):
    import warnings

    for name in ("group_volumes.tsv", "group_longitudinal.tsv"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = pd.read_csv(run["out"] / name, sep="\t", na_values="n/a")
        sidecar = json.loads((run["out"] / name).with_suffix(".json").read_text())
        assert set(table.columns) <= set(sidecar), name
        for column in table.columns:
            if column.endswith("_ml"):
                assert sidecar[column].get("Units") == "mL", (name, column)


def test_rerun_is_cached_and_identical(run):
    first, second = run["seconds"]
    assert second < 0.5 * first, f"re-run took {second:.0f} s after {first:.0f} s"
    again = {p: p.read_text() for p in run["out"].glob("sub-*/**/*_volumes.tsv")}
    assert again == run["volumes_first"]


@pytest.mark.parametrize("relpath", list(SCANS))
def test_scan_report(run, relpath):
    source = run["bids"] / relpath
    html = derivative_path(run["out"], source, "report").read_text()
    row = _volumes(run, relpath)
    assert scan_id(source) in html
    for flag in [c for c in row.index if c.startswith("flag_")]:
        assert flag in html
    for desc in ("segmentation", "registration"):
        figure = derivative_path(run["out"], source, "figure", desc=desc)
        assert figure.exists() and figure.stat().st_size > 10_000
    assert 'src="http' not in html and 'href="http' not in html  # opens offline


def test_group_report_lists_every_scan_and_failure(run):
    html = (run["out"] / "group_report.html").read_text()
    for relpath in list(SCANS) + [_bad_relpath(kind) for kind in BAD_INPUTS]:
        assert scan_id(run["bids"] / relpath) in html
