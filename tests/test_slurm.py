"""``--submit slurm``, ``ichseg status`` and ``--nipype-plugin SLURM`` on a real Slurm cluster.

A one-node cluster on 127.0.0.1 (tests/slurm_cluster.py) runs the jobs. The real-data test
submits real head CTs and a scan that fails inside its array task, cancels the job array
midway, submits again, and compares everything with a local MultiProc run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from slurm_cluster import SlurmCluster, missing_requirements

from ichseg.bids_app.cli import main
from ichseg.bids_app.status import collect_states, latest_submission
from ichseg.pipeline.naming import derivative_path, scan_id

pytestmark = [pytest.mark.slurm, pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = missing_requirements()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm tests: {why} (.ci/run installs it)", pytrace=False)
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    patch = pytest.MonkeyPatch()
    for key, value in cluster.env.items():
        patch.setenv(key, value)
    yield cluster
    cluster.stop()
    patch.undo()


#: The real CTs of the test, and a copy of mistie-0034 cut short, which fails in its task.
REAL = {
    "sub-0034/anat/sub-0034_ct.nii.gz": "ct/mistie-0034_ct.nii.gz",
    "sub-ge/anat/sub-ge_ct.nii.gz": "ct/ge-head_ct.nii.gz",
    "sub-stripped/anat/sub-stripped_acq-brain_ct.nii.gz": "ct/deepbleed-brain_ct.nii.gz",
}
BROKEN = "sub-cut/anat/sub-cut_ct.nii.gz"
NIFTI_KINDS = ["brain_mask", "dseg", "hemorrhage_probseg", "template_ct", "template_dseg"]


@pytest.fixture(scope="module")
def real_bids(tmp_path_factory, asset) -> Path:
    root = tmp_path_factory.mktemp("slurm-bids")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "slurm", "BIDSVersion": "1.10.0"}))
    for relpath, name in REAL.items():
        (root / relpath).parent.mkdir(parents=True)
        (root / relpath).write_bytes(asset(name).read_bytes())
    raw = asset("ct/mistie-0034_ct.nii.gz").read_bytes()
    (root / BROKEN).parent.mkdir(parents=True)
    (root / BROKEN).write_bytes(raw[: len(raw) // 3])  # passes indexing, fails when read
    return root


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def real_runs(slurm, real_bids, tmp_path_factory):
    """A local MultiProc run, then Slurm: submit, cancel midway, submit again, finish."""
    base = tmp_path_factory.mktemp("slurm-runs")
    started = time.perf_counter()
    local_code = main([str(real_bids), str(base / "local"), "participant", "-w", str(base / "work-local"),
                       "--n-procs", "2", "--omp-nthreads", "1"])
    local_seconds = time.perf_counter() - started

    out = base / "slurm"
    argv = [str(real_bids), str(out), "participant", "-w", str(base / "work-slurm"),
            "--submit", "slurm", "--n-procs", "1"]
    started = time.perf_counter()
    assert main(argv) == 0
    first = latest_submission(out)
    _wait_for(lambda: list(out.glob("sub-*/anat/*_volumes.tsv")), 900, "a first scan")
    slurm.run("scancel", first["job_id"])
    slurm.wait_for_jobs()
    cancelled = {s.scan: s for s in collect_states(out)}
    done_then = {sid for sid, s in cancelled.items() if s.state == "done"}
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("sub-*/anat/*_volumes.tsv")}

    assert main(argv) == 0
    second = latest_submission(out)
    slurm.wait_for_jobs()
    slurm_seconds = time.perf_counter() - started
    print(f"local MultiProc run: {local_seconds:.0f} s; Slurm with a cancel and a resubmission: "
          f"{slurm_seconds:.0f} s")
    return {"local": base / "local", "local_code": local_code, "out": out, "first": first,
            "second": second, "cancelled": cancelled, "done_then": done_then, "stamps": stamps,
            "final": {s.scan: s for s in collect_states(out)}}


def _data_sha256(path: Path) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asanyarray(nib.load(path).dataobj)).tobytes()).hexdigest()


def test_slurm_results_equal_a_local_run(real_runs, real_bids):
    assert real_runs["local_code"] == 1  # the broken scan fails there too
    for relpath in REAL:
        source = real_bids / relpath
        for kind in NIFTI_KINDS:
            assert _data_sha256(derivative_path(real_runs["out"], source, kind)) == \
                _data_sha256(derivative_path(real_runs["local"], source, kind)), (relpath, kind)
        slurm_row = pd.read_csv(derivative_path(real_runs["out"], source, "volumes"), sep="\t")
        local_row = pd.read_csv(derivative_path(real_runs["local"], source, "volumes"), sep="\t")
        pd.testing.assert_frame_equal(slurm_row, local_row)


def test_cancel_then_resubmit_runs_only_what_is_missing(real_runs, real_bids):
    first, second = real_runs["first"], real_runs["second"]
    assert sorted(p for paths in first["tasks"].values() for p in paths) == sorted([*REAL, BROKEN])
    assert real_runs["done_then"], "no scan had finished before the cancel"
    cancelled = real_runs["cancelled"]
    assert any(s.state == "incomplete" for s in cancelled.values()), cancelled
    resubmitted = {scan_id(Path(p).name) for paths in second["tasks"].values() for p in paths}
    assert resubmitted == {scan_id(Path(p).name) for p in [*REAL, BROKEN]} - real_runs["done_then"]
    # What was done stayed as it was.
    for path, stamp in real_runs["stamps"].items():
        assert path.stat().st_mtime_ns == stamp


def test_failed_array_task_is_reported(real_runs, capsys):
    final = real_runs["final"]
    assert final["sub-cut"].state == "failed" and "cannot read the image" in final["sub-cut"].detail.lower()
    assert {sid: s.state for sid, s in final.items() if sid != "sub-cut"} == \
        {scan_id(Path(p).name): "done" for p in REAL}
    assert main(["status", str(real_runs["out"])]) == 0
    assert "3 done, 1 failed" in capsys.readouterr().out
    # The group-level job ran after the array and lists the failure.
    table = pd.read_csv(real_runs["out"] / "group_volumes.tsv", sep="\t", keep_default_na=False)
    row = table.set_index("participant_id").loc["sub-cut"]
    assert row["status"] == "failed" and "cannot read the image" in row["error"].lower()
    assert set(table.loc[table["participant_id"] != "sub-cut", "status"]) == {"ok"}


def test_job_scripts_ask_for_the_resources(real_runs):
    folder = Path(real_runs["second"]["folder"])
    script = (folder / "participant.sbatch").read_text()
    assert "--cpus-per-task=1" in script and "--mem=3072M" in script
    assert "--n-procs 1 --mem 3.00" in script and "--scans-file" in script
    assert (folder / "group.log").exists()


def test_nipype_slurm_plugin(slurm, tiny_model, tmp_path):
    """Each step a Slurm job, submitted and waited for by one ichseg process."""
    from ichseg.bids_app.demo import write_demo_dataset

    bids = write_demo_dataset(tmp_path / "bids", n_subjects=1)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--model", str(tiny_model),
                 "--nipype-plugin", "SLURM", "--nipype-plugin-args", '{"sbatch_args": "--mem=2G"}'])
    assert code == 0
    assert derivative_path(out, {"subject": "01"}, "volumes").exists()
    # The steps ran as jobs: Nipype's SLURM plugin leaves its batch scripts.
    assert list((tmp_path / "work").rglob("batch/batchscript_*.sh"))
