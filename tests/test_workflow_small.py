"""The participant workflow with a tiny DeepMedic (random weights) on synthetic head phantoms.

The tiny network keeps these runs short, so the workflow plumbing can be tested thoroughly:
caching, a run killed midway and completed by a re-run, outputs never half-written. The real
network on real CTs is tested in test_cli_integration.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import nibabel as nib
import numpy as np
import pytest
from conftest import derivative_hashes as _outputs

from ichseg.bids_app.cli import main
from ichseg.bids_app.demo import write_demo_dataset
from ichseg.pipeline.naming import derivative_path

pytestmark = [pytest.mark.realdata]  # the CT template comes from the asset lookup


@pytest.fixture(scope="module")
def demo_bids(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "bids", n_subjects=2)


def _argv(bids, out, work, model, *extra):
    return [str(bids), str(out), "participant", "-w", str(work), "--model", str(model),
            "--n-procs", "2", *extra]


@pytest.fixture(scope="module")
def uninterrupted(demo_bids, tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    code = main(_argv(demo_bids, base / "out", base / "work", tiny_model))
    return code, base / "out"


def test_tiny_run_writes_every_output(uninterrupted, demo_bids):
    code, out = uninterrupted
    assert code == 0
    for sub in ("sub-01", "sub-02"):
        source = demo_bids / sub / "anat" / f"{sub}_ct.nii.gz"
        for kind in ("dseg", "volumes", "volumes_json", "brain_mask", "report", "xfm"):
            assert derivative_path(out, source, kind).exists(), (sub, kind)
        dseg = nib.load(derivative_path(out, source, "dseg"))
        np.testing.assert_allclose(dseg.affine, nib.load(source).affine, atol=1e-4)


def test_killed_run_completes_on_rerun(uninterrupted, demo_bids, tiny_model, tmp_path):
    """Kill a run once a scan is being segmented; the re-run completes it to the same outputs."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, NIPYPE_NO_ET="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "ichseg.bids_app.cli", *_argv(demo_bids, out, work, tiny_model)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    try:
        while not list(work.glob("ichseg_wf/*/segment")) and time.time() < deadline:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole process group: Nipype's workers too
        process.wait()
    assert not list(out.rglob("*_volumes.tsv")), "killed too late: a scan had already finished"

    assert main(_argv(demo_bids, out, work, tiny_model)) == 0
    # the re-run removes temporary files a killed run may have left
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    assert _outputs(out) == _outputs(uninterrupted[1])


def test_rerun_reuses_the_work_directory(uninterrupted, demo_bids, tiny_model):
    code, out = uninterrupted
    work = out.parent / "work"
    before = _outputs(out)
    results = sorted(work.glob("ichseg_wf/*/*/result_*.pklz"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert main(_argv(demo_bids, out, work, tiny_model)) == 0
    assert _outputs(out) == before
    # no processing step ran again (their result files are untouched)
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_progress_counts_the_node_that_completes_a_scan(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from ichseg.bids_app.run import _Progress
    from ichseg.pipeline.workflows.outputs import (
        SCAN_COMPLETE_NODE,
        init_ct_derivatives_wf,
    )

    assert init_ct_derivatives_wf(tmp_path).get_node(SCAN_COMPLETE_NODE) is not None
    progress = _Progress(["a", "b"])
    with caplog.at_level(logging.INFO, logger="ichseg"):
        progress(SimpleNamespace(name="ds_dseg", fullname="x.ds_dseg"), "end")
        progress(SimpleNamespace(name=SCAN_COMPLETE_NODE, fullname="x." + SCAN_COMPLETE_NODE), "end")
    assert progress.done == 1
    assert "progress: 1/2 scans done" in caplog.text


def test_the_atlas_follows_the_transform_that_turns_the_head(tmp_path):
    """The network's grid may keep the head as scanned (--transform translation); the atlas
    regions always come through the registration that turns it onto the template."""
    from ichseg.pipeline.settings import MethodSettings
    from ichseg.pipeline.workflows.base import init_single_ct_wf

    wf = init_single_ct_wf(tmp_path / "ct.nii.gz", tmp_path, settings=MethodSettings(transform="translation"))
    graph = wf._graph
    locate, register, atlas, to_scan, report, qc = (wf.get_node(n) for n in (
        "locate_hemorrhage", "register", "register_atlas", "probabilities_to_scan", "scan_report", "merge_qc"))
    assert ("atlas_transform", "transform") in graph.get_edge_data(atlas, locate)["connect"]
    assert ("out_transform", "transform") in graph.get_edge_data(register, to_scan)["connect"]
    assert register.inputs.transform_type == "Translation" and register.inputs.atlas is False
    # the rigid registration is a step of its own beside the translation, not after it
    assert not nx.has_path(graph, register, atlas) and not nx.has_path(graph, atlas, register)
    # the registration check and its QC show the turned head
    assert ("aligned_ct", "template_ct") in graph.get_edge_data(atlas, report)["connect"]
    assert ("qc", "first") in graph.get_edge_data(atlas, qc)["connect"]

    rigid = init_single_ct_wf(tmp_path / "ct.nii.gz", tmp_path, settings=MethodSettings(transform="rigid"))
    assert rigid.get_node("register_atlas") is None
    assert ("atlas_transform", "transform") in rigid._graph.get_edge_data(
        rigid.get_node("register"), rigid.get_node("locate_hemorrhage"))["connect"]


def test_the_ivh_rule_reads_the_atlas_transform(tmp_path):
    """--ivh-margin-mm and --eah-margin-mm map the atlas through the same transform as the
    atlas regions; without them, the mapping back to the scan needs no atlas."""
    from ichseg.pipeline.settings import MethodSettings
    from ichseg.pipeline.workflows.base import init_single_ct_wf

    for transform, atlas_node, margins in (("translation", "register_atlas", (4.0, None)),
                                           ("rigid", "register", (None, 5.0))):
        wf = init_single_ct_wf(tmp_path / "ct.nii.gz", tmp_path, settings=MethodSettings(
            transform=transform, ivh_margin_mm=margins[0], eah_margin_mm=margins[1]))
        to_scan = wf.get_node("probabilities_to_scan")
        edge = wf._graph.get_edge_data(wf.get_node(atlas_node), to_scan)
        assert ("atlas_transform", "atlas_transform") in edge["connect"]
        assert ("out_file", "brain_mask") in wf._graph.get_edge_data(wf.get_node("brain_mask_to_source"),
                                                                      to_scan)["connect"]
        assert (to_scan.inputs.ivh_margin_mm, to_scan.inputs.eah_margin_mm) == margins
        assert Path(to_scan.inputs.atlas).is_file()
        recorded = wf.get_node("tabulate_volumes").inputs.extra_metadata["ClassConfinement"]
        assert recorded == {"IVHMarginMM": margins[0], "EAHMarginMM": margins[1]}
    off = init_single_ct_wf(tmp_path / "ct.nii.gz", tmp_path,
                            settings=MethodSettings(ivh_margin_mm=None, eah_margin_mm=None))
    assert off._graph.get_edge_data(off.get_node("register_atlas"), off.get_node("probabilities_to_scan")) is None


def test_the_segment_step_gets_the_grid_shifts(tmp_path):
    from ichseg.pipeline.settings import MethodSettings
    from ichseg.pipeline.workflows.base import init_single_ct_wf

    for shifts in (1, 3):
        wf = init_single_ct_wf(tmp_path / "ct.nii.gz", tmp_path, settings=MethodSettings(grid_shifts=shifts))
        assert wf.get_node("segment").inputs.grid_shifts == shifts
