"""Many participant processes on one output folder, and the CPU and memory limits of a run.

With the tiny network on synthetic heads (seconds per scan), so that three concurrent
processes, locks and the scheduling limits can be tested on real workflow runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import derivative_hashes
from nipype.utils.filemanip import loadpkl

from ichseg.bids_app.cli import main
from ichseg.bids_app.demo import write_demo_dataset
from ichseg.bids_app.scanlock import ScanLock, lock_holder
from ichseg.bids_app.status import collect_states
from ichseg.pipeline.naming import derivative_path, scan_lock_path

pytestmark = [pytest.mark.realdata]  # the CT template comes from the asset lookup

SUBJECTS = ["01", "02", "03", "04"]
#: The limits of the reference run, checked from what its steps recorded.
N_PROCS, OMP_NTHREADS, MEM_GB = 2, 1, 3.0


@pytest.fixture(scope="module")
def demo5(tmp_path_factory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("demo5") / "bids", n_subjects=len(SUBJECTS))


def _argv(bids, out, work, model, *extra) -> list[str]:
    return [str(bids), str(out), "participant", "-w", str(work), "--model", str(model), *extra]


@pytest.fixture(scope="module")
def reference(demo5, tiny_model, tmp_path_factory) -> Path:
    """One process, all scans, within N_PROCS CPUs, OMP_NTHREADS threads a step and MEM_GB."""
    base = tmp_path_factory.mktemp("reference")
    code = main(_argv(demo5, base / "out", base / "work", tiny_model, "--n-procs", str(N_PROCS),
                      "--omp-nthreads", str(OMP_NTHREADS), "--mem", str(MEM_GB)))
    assert code == 0
    return base


def _cli(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ichseg.bids_app.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_three_concurrent_writers_leave_whole_outputs(demo5, reference, tiny_model, tmp_path):
    """Overlapping and disjoint participant sets, a shared and a separate work folder."""
    out = tmp_path / "out"
    shared_work, own_work = tmp_path / "work-shared", tmp_path / "work-own"
    runs = [
        _cli(*_argv(demo5, out, shared_work, tiny_model, "--n-procs", 1, "--participant-label", "01", "02", "03")),
        _cli(*_argv(demo5, out, shared_work, tiny_model, "--n-procs", 1, "--participant-label", "03", "04")),
        _cli(*_argv(demo5, out, own_work, tiny_model, "--n-procs", 1)),
    ]
    logs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], logs

    # Every scan done once and whole: byte for byte what one process alone writes.
    assert derivative_hashes(out) == derivative_hashes(reference / "out")
    json.loads((out / "dataset_description.json").read_text())
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not list(out.glob("sub-*/log/*_desc-failed_log.json"))
    assert not list(shared_work.glob("crash/**/crash-*")) and not list(own_work.glob("crash/**/crash-*"))
    assert main([str(demo5), str(out), "group"]) == 0
    table = pd.read_csv(out / "group_volumes.tsv", sep="\t")
    assert sorted(table["participant_id"]) == [f"sub-{s}" for s in SUBJECTS]
    assert set(table["status"]) == {"ok"}
    assert [s.state for s in collect_states(out)] == ["done"] * len(SUBJECTS)


def test_a_locked_scan_is_left_to_the_process_that_holds_it(demo5, reference, tiny_model, tmp_path):
    out = tmp_path / "out"
    lock = scan_lock_path(out, {"subject": "02"})
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from ichseg.bids_app.scanlock import ScanLock; "
         f"assert ScanLock({str(lock)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        details = lock_holder(lock)
        assert details is not None and details["pid"] == holder.pid
        assert main(_argv(demo5, out, tmp_path / "work", tiny_model, "--participant-label", "01", "02")) == 0
        source = {"subject": "02"}
        assert derivative_path(out, {"subject": "01"}, "volumes").exists()
        assert not derivative_path(out, source, "volumes").exists()
        assert not derivative_path(out, source, "failure").exists()
        states = {s.scan: s for s in collect_states(out)}
        assert states["sub-02"].state == "running" and f"pid {holder.pid}" in states["sub-02"].detail
        assert states["sub-01"].state == "done"
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock of a killed process: nothing is stale.
    assert lock_holder(lock) is None
    assert ScanLock(lock).acquire()


def _intervals(work: Path) -> list[tuple[float, float, float, int]]:
    """(start, end, mem_gb, n_procs) of every step of a run, from Nipype's records."""
    found = []
    for result in work.glob("ichseg_wf/*/*/result_*.pklz"):
        runtime = loadpkl(result).runtime
        node = loadpkl(result.parent / "_node.pklz")
        found.append((datetime.fromisoformat(runtime.startTime).timestamp(),
                      datetime.fromisoformat(runtime.endTime).timestamp(), node.mem_gb, node.n_procs))
    return found


def test_cpu_and_memory_limits_are_respected(reference):
    """What ran at once never asked for more than --n-procs CPUs or --mem GB, and the
    network ran on --omp-nthreads threads (recorded inside the step's own process)."""
    intervals = _intervals(reference / "work")
    assert len(intervals) >= 5 * len(SUBJECTS)
    for moment, *_ in intervals:
        running = [iv for iv in intervals if iv[0] <= moment < iv[1]]
        assert sum(iv[3] for iv in running) <= N_PROCS
        assert sum(iv[2] for iv in running) <= MEM_GB + 1e-9
    # --mem 3 lets one 2.5 GB inference step run at a time, even with 2 CPUs.
    segments = sorted(iv for iv in intervals if iv[2] == max(iv[2] for iv in intervals))
    assert all(b[0] >= a[1] - 0.05 for a, b in zip(segments, segments[1:]))
    for sub in SUBJECTS:
        sidecar = json.loads(derivative_path(reference / "out", {"subject": sub}, "volumes_json").read_text())
        assert sidecar["Model"]["torch_threads"] <= OMP_NTHREADS


def test_omp_threads_are_capped_by_n_procs(caplog):
    from ichseg.bids_app.cli import build_parser
    from ichseg.bids_app.resources import Resources

    args = build_parser().parse_args(["b", "o", "participant", "--n-procs", "2", "--omp-nthreads", "8"])
    assert Resources.from_args(args).omp_nthreads == 2
    assert "more than --n-procs" in caplog.text


def test_scan_lock_across_processes(tmp_path):
    lock = tmp_path / "sub-01" / "log" / ".sub-01.lock"
    mine = ScanLock(lock)
    assert mine.acquire()
    probe = subprocess.run(
        [sys.executable, "-c",
         "from ichseg.bids_app.scanlock import ScanLock, lock_holder; import sys; "
         f"l = ScanLock({str(lock)!r}); h = lock_holder({str(lock)!r}); "
         "print(l.acquire(), h['pid'])"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["False", str(os.getpid())]
    mine.release()
    probe = subprocess.run(
        [sys.executable, "-c",
         f"from ichseg.bids_app.scanlock import ScanLock; print(ScanLock({str(lock)!r}).acquire())"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True"


def test_status_lists_failures_with_their_reason(demo5, tmp_path, capsys):
    from ichseg.bids_app.group import write_failure_record

    out = tmp_path / "out"
    write_failure_record(out, {"subject": "03"}, "InputImageError: no air")
    time.sleep(0.01)
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sub-03" in printed and "failed" in printed and "no air" in printed
