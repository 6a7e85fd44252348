#!/usr/bin/env python
"""Benchmark ichseg's participant level on the real head CTs: time, CPU, memory, results.

    python bench/run_benchmark.py [--repeats 3] [--models blastct-v1 blastct-v1-ensemble]
        [--scans mistie-0034 ge-head deepbleed-brain] [--device cpu] [--parallel-scans 4]
        [--out bench/results]

Part 1 (single scans): for each CT and model, a one-scan BIDS dataset is run through
``ichseg ... participant --n-procs 2`` in a subprocess, ``--repeats`` times, each time with a
fresh work and output directory (nothing cached). Part 2 (parallel scans): a dataset of
``--parallel-scans`` CTs (the real CTs in turn, repeated ones as further sessions) is run with
each ``--parallel-n-procs`` value. Writes ``benchmark.json`` (every run, medians, machine) and
``benchmark.md`` (tables of medians) into ``--out``; ``--render JSON`` rewrites the Markdown
of an existing JSON. See docs/benchmarks.md for what every figure means.

Needs the assets (``ICHSEG_DATA_DIR`` or the download cache). Linux: memory is read from
``/proc`` (psutil is used where ``/proc`` is missing and psutil is installed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRAPPER = HERE / "instrumented_cli.py"
USAGE_FILE = "_bench_usage.json"  # written by instrumented_cli.py into every node folder

DEFAULT_SCANS = ["mistie-0034", "ge-head", "deepbleed-brain"]
DEFAULT_MODELS = ["blastct-v1", "blastct-v1-ensemble"]

#: Benchmark steps and the Nipype nodes (last part of the node's name) they add up.
STEPS = {
    "loading": ("conform",),
    "brain_extraction": ("brain_extraction",),
    "registration": ("register", "register_atlas"),  # side by side: their sum exceeds the wall time
    "inference": ("segment",),
    "inverse_transform": ("probabilities_to_scan", "brain_mask_to_source"),
    "tabulation": ("tabulate_volumes",),  # + every node of ct_derivatives_wf (the ds_* sinks)
    "report": ("scan_report",),
}
STEP_TITLES = {
    "loading": "load", "brain_extraction": "brain", "registration": "register",
    "inference": "inference", "inverse_transform": "to scan", "tabulation": "tabulate",
    "report": "report", "other": "other",
}
DERIVATIVES_WF = "ct_derivatives_wf"
VOLUME_KEYS = ("iph_ml", "eah_ml", "oed_ml", "ivh_ml", "hemorrhage_ml", "brain_ml")
MIB = 2**20


# --------------------------------------------------------------------------------------------
# memory of a process tree


class TreeMonitor(threading.Thread):
    """Sample the memory of a process and all its descendants until stopped.

    Every ``interval`` s: the summed RSS (``VmRSS``) and anonymous memory (``RssAnon`` +
    ``RssShmem``) of the tree, from ``/proc/<pid>/status`` (cheap). RSS counts pages shared
    between processes (forked workers share the parent's libraries) once per process, so the
    sum over-states what the tree really holds. PSS (proportional set size,
    ``/proc/<pid>/smaps_rollup``) splits every shared page between its users, so the sum of PSS
    is the tree's real footprint; but reading it costs tens of milliseconds of CPU per large
    process, so it is read only while the RSS sum is within 5 % of its peak so far: every
    ``pss_interval`` s, or after 1 s when the RSS sum has grown by 5 % since the last reading.
    """

    def __init__(self, pid: int, interval: float = 0.2, pss_interval: float = 10.0):
        super().__init__(name="bench-tree-monitor", daemon=True)
        self.pid = pid
        self.interval = interval
        self.pss_interval = pss_interval
        self.peak_rss = 0
        self.peak_anon = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self.samples = 0
        self.pss_samples = 0
        self._last_pss = float("-inf")
        self._rss_at_last_pss = 0
        self._stop_event = threading.Event()
        self._proc = Path("/proc").is_dir()
        self._children_files = Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/children").exists()
        try:
            import psutil  # only used where /proc is missing

            self._psutil = psutil
        except ImportError:
            self._psutil = None

    def _children(self, pid: int) -> list[int]:
        found = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fobj:
                    found.extend(int(c) for c in fobj.read().split())
        except OSError:
            pass
        return found

    def _tree_proc(self) -> list[int]:
        if self._children_files:  # Linux with CONFIG_PROC_CHILDREN: read only the tree
            tree, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo.extend(self._children(pid))
            return tree
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fobj:
                    stat = fobj.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree

    @staticmethod
    def _status(pid: int) -> tuple[int, int]:
        """(RSS, anonymous + shmem resident memory) of one process, in bytes."""
        rss = anon = 0
        try:
            with open(f"/proc/{pid}/status") as fobj:
                for line in fobj:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith(("RssAnon:", "RssShmem:")):
                        anon += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return rss, anon

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fobj:
                for line in fobj:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def sample(self) -> None:
        rss = anon = 0
        if self._proc:
            tree = self._tree_proc()
            for pid in tree:
                r, a = self._status(pid)
                rss, anon = rss + r, anon + a
        elif self._psutil is not None:
            try:
                root = self._psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except self._psutil.Error:
                return
            for proc in tree:
                try:
                    rss += proc.memory_info().rss
                except self._psutil.Error:
                    pass
        else:
            return
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_procs = max(self.peak_procs, len(tree))
        now = time.monotonic()
        since = now - self._last_pss
        near_peak = rss >= 0.95 * self.peak_rss
        grown = rss > 1.05 * self._rss_at_last_pss
        if self._proc and near_peak and (since >= self.pss_interval or (grown and since >= 1.0)):
            self._last_pss, self._rss_at_last_pss = now, rss
            self.pss_samples += 1
            self.peak_pss = max(self.peak_pss, sum(self._pss(pid) for pid in tree))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# --------------------------------------------------------------------------------------------
# running ichseg


def run_ichseg(bids_dir: Path, out_dir: Path, work_dir: Path, n_procs: int, model: str,
               device: str, log_file: Path, instrument: bool, extra_args: list[str],
               timeout: float | None) -> dict:
    """Run the participant level in a subprocess; return exit code, wall, CPU and memory."""
    entry = [str(WRAPPER)] if instrument else ["-m", "ichseg.bids_app.cli"]
    cmd = [sys.executable, *entry, str(bids_dir), str(out_dir), "participant",
           "-w", str(work_dir), "--n-procs", str(n_procs), "--model", model,
           "--device", device, *extra_args]
    return run_measured(cmd, log_file, work_dir.parent, timeout)


def run_measured(cmd: list[str], log_file: Path, cwd: Path, timeout: float | None,
                 env: dict | None = None) -> dict:
    """Run ``cmd`` in a subprocess; return exit code, wall, CPU and memory of its process tree."""
    env = dict(os.environ, NIPYPE_NO_ET="1", PYTHONUNBUFFERED="1", **(env or {}))
    load_before = _loadavg()
    import resource

    own_before = resource.getrusage(resource.RUSAGE_SELF)
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        t_launch = time.time()
        start = time.perf_counter()
        # own process group, so that a timeout or Ctrl-C stops the run's workers too
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(cwd), start_new_session=True)
        monitor = TreeMonitor(proc.pid)
        monitor.start()

        def kill_run():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        killer = None
        if timeout:
            killer = threading.Timer(timeout, kill_run)
            killer.start()
        # wait4 gives the rusage of this child alone (and of the descendants it reaped): the
        # CPU time of the whole run and the largest RSS any single process of it reached.
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill_run()
            monitor.stop()
            raise
        wall = time.perf_counter() - start
        t_exit = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if killer is not None:
            killer.cancel()
        monitor.stop()
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "command": cmd,
        "exit_code": proc.returncode,
        "wall_s": wall,
        "t_launch": t_launch,
        "t_exit": t_exit,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        # ru_maxrss is in KiB on Linux, bytes on macOS
        "max_rss_single_mib": usage.ru_maxrss / (1024 if sys.platform != "darwin" else MIB),
        "peak_rss_tree_mib": monitor.peak_rss / MIB if monitor.samples else None,
        "peak_pss_tree_mib": monitor.peak_pss / MIB if monitor.peak_pss else None,
        "peak_anon_tree_mib": monitor.peak_anon / MIB if monitor.peak_anon else None,
        "pss_samples": monitor.pss_samples,
        "peak_processes": monitor.peak_procs,
        "memory_samples": monitor.samples,
        # CPU the benchmark itself spent meanwhile (mostly the memory sampling): its cost
        "monitor_cpu_s": (own_after.ru_utime - own_before.ru_utime) + (own_after.ru_stime - own_before.ru_stime),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# the peer: BLAST-CT v1's own command line, single model, on the same CT and machine

#: BLAST-CT's console tool with flush-to-zero set first (before torch makes its thread pool),
#: so that the comparison is not won by ichseg's subnormal handling alone.
PEER_ENTRY = (
    "import sys, torch; torch.set_flush_denormal(True); "
    "from blast_ct.console_tool import console_tool; sys.argv[0] = 'blast-ct'; console_tool()"
)


def _peer_cache(scratch: Path) -> Path:
    """A BLAST_CT_CACHE_DIR holding the same model_1 weights ichseg runs (no download)."""
    from ichseg.pipeline.assets import get_asset

    cache = scratch / "blast-ct-cache"
    target = cache / "saved_models" / "model_1.torch_model"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(get_asset("models/blastct-v1/model_1.pt"))
    return cache


def peer_volumes(label_file: Path) -> dict:
    """Volumes (mL) of BLAST-CT's label map (the same label table as ichseg's), ichseg's columns."""
    import nibabel as nib
    import numpy as np

    from ichseg.pipeline.labels import BRAIN_VOLUME_COLUMN
    from ichseg.pipeline.volumes import label_volumes_ml

    img = nib.load(str(label_file))
    volumes = label_volumes_ml(np.asanyarray(img.dataobj), img.affine)
    return {k: round(v, 2) for k, v in volumes.items() if k != BRAIN_VOLUME_COLUMN}


def run_peer(name: str, scratch: Path, args, repeat: int) -> dict:
    """One run of BLAST-CT's CLI (single model, CPU threads as torch sets them) on a real CT."""
    run_dir = Path(tempfile.mkdtemp(prefix="peer-", dir=scratch))
    out_file = run_dir / "blast_ct_labels.nii.gz"
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / _safe(f"peer_{name}_r{repeat}.log")
    device = "cpu" if args.device == "cpu" else args.device.split(":")[-1].replace("cuda", "0")
    cmd = [sys.executable, "-c", PEER_ENTRY, "--input", str(asset_ct(name)), "--output", str(out_file),
           "--device", device]
    result = run_measured(cmd, log_file, run_dir, args.timeout,
                          env={"BLAST_CT_CACHE_DIR": str(_peer_cache(scratch))})
    result.update(scan=name, repeat=repeat, log=str(log_file.relative_to(args.out)))
    result["volumes"] = peer_volumes(out_file) if result["exit_code"] == 0 and out_file.exists() else {}
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------
# reading the work directory


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        value = dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    if value.tzinfo is None:  # nipype writes UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def step_of(node: str, path: Path) -> str:
    if DERIVATIVES_WF in path.parts:
        return "tabulation"
    for step, names in STEPS.items():
        if node in names:
            return step
    return "other"


def read_nodes(work_dir: Path) -> list[dict]:
    """One record per node that ran: scan, step, wall/CPU time, memory (see module doc)."""
    from nipype.utils.filemanip import loadpkl

    records = []
    for result_file in sorted(work_dir.rglob("result_*.pklz")):
        folder = result_file.parent
        node = result_file.name[len("result_"):-len(".pklz")]
        scan = next((p for p in folder.relative_to(work_dir).parts if p.startswith("ct_")), None)
        record = {"scan_node": scan, "node": node, "step": step_of(node, folder),
                  "folder": str(folder.relative_to(work_dir))}
        try:
            runtime = loadpkl(result_file).runtime
        except Exception as exc:  # noqa: BLE001
            runtime = None
            record["error"] = f"cannot read {result_file.name}: {exc}"
        if runtime is not None:
            record["nipype_duration_s"] = getattr(runtime, "duration", None)
            record["nipype_start"] = _epoch(getattr(runtime, "startTime", None))
            record["nipype_end"] = _epoch(getattr(runtime, "endTime", None))
            # only present when Nipype's own resource monitor was on
            for key in ("cpu_percent", "mem_peak_gb"):
                value = getattr(runtime, key, None)
                if value is not None:
                    record[f"nipype_{key}"] = value
        usage_file = folder / USAGE_FILE
        if usage_file.exists():
            usage = json.loads(usage_file.read_text())
            record.update(
                wall_s=usage["wall_s"], cpu_s=usage["cpu_s"], t_start=usage["t_start"],
                t_end=usage["t_end"], peak_rss_mib=usage.get("peak_rss_mib"),
                in_main_process=usage.get("in_main_process"),
            )
        else:  # not instrumented: Nipype's interface time (excludes node bookkeeping)
            record.update(wall_s=record.get("nipype_duration_s"), cpu_s=None,
                          t_start=record.get("nipype_start"), t_end=record.get("nipype_end"))
        records.append(record)
    return records


def summarize_steps(nodes: list[dict]) -> dict:
    """Per step: summed node wall time, summed CPU time, largest process RSS, node count."""
    steps = {}
    for step in [*STEPS, "other"]:
        mine = [n for n in nodes if n["step"] == step]
        walls = [n["wall_s"] for n in mine if n.get("wall_s") is not None]
        cpus = [n["cpu_s"] for n in mine if n.get("cpu_s") is not None]
        rss = [n["peak_rss_mib"] for n in mine if n.get("peak_rss_mib") is not None]
        steps[step] = {
            "wall_s": sum(walls) if walls else None,
            "cpu_s": sum(cpus) if cpus and len(cpus) == len(mine) else None,
            "peak_rss_mib": max(rss) if rss else None,
            "nodes": len(mine),
        }
    return steps


def timeline(nodes: list[dict], t_launch: float, t_exit: float) -> dict:
    """Start-up before the first node, span of the nodes, and shut-down after the last."""
    starts = [n["t_start"] for n in nodes if n.get("t_start")]
    ends = [n["t_end"] for n in nodes if n.get("t_end")]
    if not starts or not ends:
        return {}
    first, last = min(starts), max(ends)
    # time inside the span when no node was running: Nipype's scheduling pauses (MultiProc
    # looks for finished nodes every poll_sleep_duration = 2 s) and result handling
    busy, covered_to = 0.0, first
    for start, end in sorted((n["t_start"], n["t_end"]) for n in nodes if n.get("t_start") and n.get("t_end")):
        if end > covered_to:
            busy += end - max(start, covered_to)
            covered_to = end
    return {"startup_s": first - t_launch, "nodes_span_s": last - first,
            "idle_in_span_s": (last - first) - busy, "shutdown_s": t_exit - last}


def inference_info(work_dir: Path, nodes: list[dict]) -> dict:
    """Throughput of the segment node(s) from the ``model_info.json`` they write."""
    out = {}
    for node in nodes:
        if node["node"] != "segment":
            continue
        info_file = work_dir / node["folder"] / "model_info.json"
        if not info_file.exists():
            continue
        info = json.loads(info_file.read_text())
        seconds = info.get("inference_seconds")
        roi = info.get("roi_voxels")
        n_networks = info.get("n_networks") or 1
        macs = info.get("multiply_adds")
        rec = {
            "model": info.get("model"),
            "n_networks": n_networks,
            "inference_seconds": seconds,
            "roi_voxels": roi,
            "multiply_adds": macs,
            "precision": info.get("precision"),
            "flush_denormal_verified": info.get("flush_denormal_verified"),
            "roi_voxels_per_s": roi / seconds if roi and seconds else None,
            # multiply-adds per second, all networks together: the raw speed of the network code
            "multiply_adds_per_s": macs * n_networks / seconds if macs and seconds else None,
        }
        out[node["scan_node"]] = rec
    return out


def read_volumes(out_dir: Path, bids_file: Path) -> dict:
    from ichseg.pipeline.naming import derivative_path

    path = derivative_path(out_dir, bids_file, "volumes")
    if not path.exists():
        return {}
    with open(path, newline="") as fobj:
        row = next(csv.DictReader(fobj, delimiter="\t"), {})
    volumes = {}
    for key, value in row.items():
        try:
            volumes[key] = float(value)
        except (TypeError, ValueError):
            volumes[key] = value
    return volumes


# --------------------------------------------------------------------------------------------
# datasets


def asset_ct(name: str) -> Path:
    from ichseg.pipeline.assets import get_asset

    return get_asset(f"ct/{name}_ct.nii.gz")


def dataset_subject(name: str) -> str:
    """The subject of a real CT in :func:`make_dataset`'s datasets."""
    return "sub-" + re.sub(r"[^A-Za-z0-9]", "", name)


def make_dataset(root: Path, scans: list[str]) -> list[tuple[str, Path]]:
    """A BIDS dataset of copies of the real CTs; a CT listed again becomes a further session.

    Returns ``(scan name, path in the dataset)`` pairs.
    """
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "ichseg benchmark", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    counts = {name: scans.count(name) for name in scans}
    seen: dict[str, int] = {}
    files = []
    for name in scans:
        seen[name] = seen.get(name, 0) + 1
        sub = dataset_subject(name)
        ses = f"ses-{seen[name]}" if counts[name] > 1 else None
        folder = root / sub / (ses or "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        stem = "_".join(p for p in (sub, ses) if p) + "_ct"
        source = asset_ct(name)
        target = folder / f"{stem}.nii.gz"
        shutil.copyfile(source, target)
        sidecar = source.with_name(f"{name}_ct.json")
        if sidecar.exists():
            shutil.copyfile(sidecar, folder / f"{stem}.json")
        files.append((name, target))
    return files


# --------------------------------------------------------------------------------------------
# statistics and machine


def median_of(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(values) if values else None


def median_record(runs: list[dict], keys: list[str]) -> dict:
    """Median of dotted keys (``steps.inference.wall_s``) over the successful runs."""
    ok = [r for r in runs if r.get("exit_code") == 0]
    out = {"n_runs": len(runs), "n_ok": len(ok)}
    for key in keys:
        out[key] = median_of([_get(r, key) for r in ok])
    return out


def _get(record: dict, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def machine_info() -> dict:
    from ichseg.pipeline.cpu import cpu_model

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": None,
        "cgroup_cpu_max": None,
        "cgroup_memory_max_gib": None,
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    try:  # a container's limits (cgroup v2), which may be below the host's
        info["cgroup_cpu_max"] = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
        mem = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        info["cgroup_memory_max_gib"] = mem if mem == "max" else round(int(mem) / 2**30, 2)
    except (OSError, ValueError):
        pass
    return info


_SOFTWARE_PROBE = r"""
import json, os, importlib.metadata as md
os.environ.setdefault("NIPYPE_NO_ET", "1")
out = {}
for dist in ("ichseg", "torch", "nipype", "numpy", "scipy", "nibabel", "antspyx", "blast-ct", "psutil"):
    try:
        out[dist] = md.version(dist)
    except md.PackageNotFoundError:
        out[dist] = None
import torch
out["torch_threads"] = torch.get_num_threads()
out["torch_interop_threads"] = torch.get_num_interop_threads()
out["torch_mkldnn"] = torch.backends.mkldnn.is_available()
out["torch_cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    out["cuda_device"] = torch.cuda.get_device_name(0)
from ichseg.pipeline.cpu import machine_description
out["cpu"] = machine_description()  # model, ISA flags (AVX2, AVX-512, AMX), torch and oneDNN
out["torch_parallel_info"] = [l.strip() for l in torch.__config__.parallel_info().splitlines() if "OMP" in l or "MKL" in l or "threads" in l]
print(json.dumps(out))
"""


def software_info() -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", _SOFTWARE_PROBE], capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, NIPYPE_NO_ET="1"))
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001
        info = {"error": str(exc)}
    info["env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ICHSEG_DATA_DIR")
                   if os.environ.get(k) is not None}
    info["git"] = _git()
    return info


def _git() -> dict:
    def git(*args):
        try:  # --no-optional-locks: never touch the repository's index
            return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *args],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "modified_files": status.splitlines() if status else [],
            "code_state": code_state()}


def code_state() -> str | None:
    """Short hash of the checked-out code (HEAD + uncommitted changes of tracked files).

    Taken before every run: each run executes the working tree as it is at its start, so a
    change of the code during a benchmark shows as runs with different states.
    """
    import hashlib

    try:
        head = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, timeout=30).stdout
        diff = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "diff", "HEAD", "--",
                               ".", ":(exclude)bench", ":(exclude)docs", ":(exclude)tests"], capture_output=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return hashlib.sha1(head + diff).hexdigest()[:12] if head else None


# --------------------------------------------------------------------------------------------
# the benchmark


RUN_KEYS = ["wall_s", "cpu_s", "peak_rss_tree_mib", "peak_pss_tree_mib", "max_rss_single_mib",
            "timeline.startup_s", "timeline.nodes_span_s", "timeline.idle_in_span_s", "timeline.shutdown_s"]
SINGLE_KEYS = RUN_KEYS + [f"steps.{s}.{k}" for s in [*STEPS, "other"] for k in ("wall_s", "cpu_s", "peak_rss_mib")] + [
    "inference.inference_seconds", "inference.roi_voxels", "inference.multiply_adds",
    "inference.roi_voxels_per_s", "inference.multiply_adds_per_s",
] + [f"volumes.{k}" for k in VOLUME_KEYS]
PARALLEL_KEYS = RUN_KEYS + ["scans_per_hour", "cpu_utilisation"]
PEER_KEYS = RUN_KEYS + [f"volumes.{k}" for k in VOLUME_KEYS if k != "brain_ml"]


def one_run(label: str, bids_dir: Path, bids_files: list[tuple[str, Path]], scratch: Path, args,
            model: str, n_procs: int) -> dict:
    """Run once with fresh work/output directories; gather everything; clean up."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    out_dir, work_dir = run_dir / "derivatives", run_dir / "work"
    work_dir.mkdir()
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{label}.log"
    state = code_state()
    result = run_ichseg(bids_dir, out_dir, work_dir, n_procs, model, args.device, log_file,
                        not args.no_instrument, args.ichseg_args, args.timeout)
    nodes = read_nodes(work_dir)
    result["label"] = label
    result["code_state"] = state
    result["model"] = model
    result["n_procs"] = n_procs
    result["timeline"] = timeline(nodes, result["t_launch"], result["t_exit"])
    result["nodes"] = nodes
    result["log"] = str(log_file.relative_to(args.out))
    result["scans"] = {}
    info = inference_info(work_dir, nodes)
    from ichseg.pipeline.naming import scan_id

    for name, bids_file in bids_files:
        sid = scan_id(bids_file)
        node_tag = "ct_" + re.sub(r"[^0-9A-Za-z]", "_", sid)
        mine = [n for n in nodes if n["scan_node"] == node_tag]
        result["scans"][sid] = {
            "ct": name,
            "steps": summarize_steps(mine),
            "inference": info.get(node_tag, {}),
            "volumes": read_volumes(out_dir, bids_file),
        }
    if not args.keep_work:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        result["run_dir"] = str(run_dir)
    return result


def benchmark(args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ichseg-bench-", dir=args.tmp_dir))
    started = dt.datetime.now().astimezone()
    print(f"ichseg benchmark: scratch {scratch}, results in {args.out}", flush=True)
    data = {
        "schema": 1,
        "date": started.isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "settings": {
            "repeats": args.repeats, "models": args.models, "scans": args.scans,
            "device": args.device, "n_procs": args.n_procs, "parallel_scans": args.parallel_scans,
            "parallel_cts": args.parallel_cts, "skip_single": args.skip_single,
            "parallel_n_procs": args.parallel_n_procs, "parallel_model": args.parallel_model,
            "parallel_repeats": args.parallel_repeats, "instrumented": not args.no_instrument,
            "ichseg_args": args.ichseg_args, "peer_repeats": args.peer_repeats,
        },
        "machine": machine_info(),
        "software": software_info(),
        "single": {"runs": [], "medians": []},
        "parallel": {"runs": [], "medians": []},
    }
    sw = data["software"]
    print(f"machine: {data['machine']['cpu_model']}, {data['machine']['usable_cpus']} CPUs, "
          f"{data['machine']['ram_gib']} GiB; torch {sw.get('torch')} ({sw.get('torch_threads')} threads)",
          flush=True)
    save(data, args.out)
    try:
        # ---- part 1: single scans
        total = len(args.scans) * len(args.models) * args.repeats
        count = 0
        for name in [] if args.skip_single else args.scans:
            bids_dir = scratch / f"bids-{name}"
            files = make_dataset(bids_dir, [name])
            for model in args.models:
                runs = []
                for repeat in range(1, args.repeats + 1):
                    count += 1
                    label = _safe(f"single_{name}_{model}_r{repeat}")
                    print(f"[{count}/{total}] {name} x {model}, repeat {repeat}/{args.repeats} ...", end=" ", flush=True)
                    run = one_run(label, bids_dir, files, scratch, args, model, args.n_procs)
                    (scan_result,) = run.pop("scans").values()
                    run.update(scan=name, repeat=repeat, **scan_result)
                    runs.append(run)
                    data["single"]["runs"].append(run)
                    print(_run_line(run), flush=True)
                    save(data, args.out)
                med = median_record(runs, SINGLE_KEYS)
                med.update(scan=name, model=model, volumes_identical=_same_volumes(runs),
                           precision=_precisions(runs))
                data["single"]["medians"].append(med)
                save(data, args.out)
            shutil.rmtree(bids_dir, ignore_errors=True)

        # ---- part 2: parallel scans
        if args.parallel_scans > 0:
            names = [args.parallel_cts[i % len(args.parallel_cts)] for i in range(args.parallel_scans)]
            bids_dir = scratch / "bids-parallel"
            files = make_dataset(bids_dir, names)
            total = len(args.parallel_n_procs) * args.parallel_repeats
            count = 0
            for n_procs in args.parallel_n_procs:
                runs = []
                for repeat in range(1, args.parallel_repeats + 1):
                    count += 1
                    label = _safe(f"parallel_{len(names)}scans_{args.parallel_model}_np{n_procs}_r{repeat}")
                    print(f"[parallel {count}/{total}] {len(names)} scans ({', '.join(names)}) x "
                          f"{args.parallel_model}, --n-procs {n_procs}, repeat {repeat}/{args.parallel_repeats} ...",
                          end=" ", flush=True)
                    run = one_run(label, bids_dir, files, scratch, args, args.parallel_model, n_procs)
                    run.update(repeat=repeat, n_scans=len(names), cts=names)
                    ok = sum(1 for s in run["scans"].values() if s["volumes"])  # a volume table = a finished scan
                    run["scans_ok"] = ok
                    run["scans_per_hour"] = ok * 3600 / run["wall_s"] if run["wall_s"] else None
                    run["cpu_utilisation"] = run["cpu_s"] / (run["wall_s"] * n_procs) if run["wall_s"] else None
                    runs.append(run)
                    data["parallel"]["runs"].append(run)
                    print(_run_line(run), flush=True)
                    save(data, args.out)
                med = median_record(runs, PARALLEL_KEYS)
                med.update(n_procs=n_procs, n_scans=len(names), model=args.parallel_model, cts=names)
                data["parallel"]["medians"].append(med)
                save(data, args.out)
        # ---- part 3: the peer, side by side
        if args.peer_repeats > 0:
            data["peer"] = {"runs": [], "medians": []}
            for name in args.scans:
                runs = []
                for repeat in range(1, args.peer_repeats + 1):
                    print(f"[peer] BLAST-CT CLI on {name}, repeat {repeat}/{args.peer_repeats} ...", end=" ", flush=True)
                    run = run_peer(name, scratch, args, repeat)
                    runs.append(run)
                    data["peer"]["runs"].append(run)
                    print(_run_line(run), flush=True)
                    save(data, args.out)
                med = median_record(runs, PEER_KEYS)
                med.update(scan=name, volumes_identical=_same_volumes(runs))
                data["peer"]["medians"].append(med)
                save(data, args.out)
    finally:
        data["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        save(data, args.out)
        if not args.keep_work:
            shutil.rmtree(scratch, ignore_errors=True)
    return data


def _safe(label: str) -> str:
    """A file name from a run label (a model may be given as a path)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label)[-120:]


def _run_line(run: dict) -> str:
    parts = [f"exit {run['exit_code']}", f"{run['wall_s']:.1f} s", f"CPU {run['cpu_s']:.0f} s"]
    if run.get("peak_rss_tree_mib"):
        parts.append(f"peak RSS {run['peak_rss_tree_mib'] / 1024:.2f} GiB")
    if "volumes" in run:
        hem = run["volumes"].get("hemorrhage_ml")
        parts.append(f"hemorrhage {hem} mL" if hem is not None else "no volumes")
    if run["exit_code"] != 0:
        parts.append(f"FAILED, see {run['log']}")
    return ", ".join(parts)


def _precisions(runs: list[dict]) -> str | None:
    """The network precision(s) the runs used, from their model_info.json."""
    found = sorted({r.get("inference", {}).get("precision") for r in runs} - {None})
    return "/".join(found) if found else None


def _same_volumes(runs: list[dict]) -> bool | None:
    tables = [tuple(r.get("volumes", {}).get(k) for k in VOLUME_KEYS) for r in runs if r.get("exit_code") == 0]
    return len(set(tables)) <= 1 if tables else None


def save(data: dict, out: Path) -> None:
    tmp = out / ".benchmark.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(out / "benchmark.json")
    (out / "benchmark.md").write_text(render_markdown(data))


# --------------------------------------------------------------------------------------------
# Markdown


def _fmt(value, digits=1, scale=1.0) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value * scale:,.{digits}f}"
    return str(value)


def _mvox(value) -> str:
    return "–" if value is None else f"{value / 1e6:.2f}"


def _kvox(value) -> str:
    return "–" if value is None else f"{value / 1e3:,.1f}"


def _cpu_line(cpu: dict) -> str:
    """CPU model, ISA flags, torch and oneDNN: the facts every figure depends on."""
    if not cpu:
        return "CPU details not recorded."
    isa = ", ".join(name for name, present in (cpu.get("isa") or {}).items() if present) or "none of AVX2/AVX-512/AMX"
    return (f"CPU: {cpu.get('cpu_model')}, {cpu.get('usable_cpus')} usable cores; ISA: {isa}; "
            f"torch {cpu.get('torch')}, oneDNN {cpu.get('onednn')}.")


def render_markdown(data: dict) -> str:
    machine, sw, settings = data["machine"], data["software"], data["settings"]
    lines = [
        "# ichseg benchmark",
        "",
        f"{data['date']} · {machine.get('cpu_model')} · {machine.get('usable_cpus')} usable CPUs "
        f"(of {machine.get('logical_cpus')}) · {machine.get('ram_gib')} GiB RAM · torch {sw.get('torch')} "
        f"({sw.get('torch_threads')} threads by default) · nipype {sw.get('nipype')} · ichseg {sw.get('ichseg')} "
        f"(commit {str((sw.get('git') or {}).get('commit'))[:10]}"
        f"{', modified' if (sw.get('git') or {}).get('modified_files') else ''}) · device {settings['device']}",
        "",
        _cpu_line(sw.get("cpu") or {}),
        "",
        "Times in seconds, memory in GiB"
        + (f"; every run with the extra arguments `{' '.join(settings['ichseg_args'])}`" if settings.get("ichseg_args") else "")
        + ". See docs/benchmarks.md for the columns.",
        "",
    ]
    meds = data["single"]["medians"]
    if meds:
        steps = [*STEPS, "other"]
        lines += [
            "## Single scan: time per step (wall s / CPU s)",
            "",
            f"One CT per run, `--n-procs {settings['n_procs']}`; medians of {settings['repeats']} run(s) per row.",
            "",
            "| scan | model | precision | " + " | ".join(STEP_TITLES[s] for s in steps) + " | start-up | idle | end-to-end wall | end-to-end CPU |",
            "|---|---|---|" + "---:|" * (len(steps) + 4),
        ]
        for m in meds:
            cells = [f"{_fmt(m.get(f'steps.{s}.wall_s'))} / {_fmt(m.get(f'steps.{s}.cpu_s'))}" for s in steps]
            lines.append(f"| {m['scan']} | {m['model']} | {m.get('precision') or '–'} | " + " | ".join(cells)
                         + f" | {_fmt(m.get('timeline.startup_s'))} | {_fmt(m.get('timeline.idle_in_span_s'))} "
                         f"| **{_fmt(m.get('wall_s'))}** | {_fmt(m.get('cpu_s'))} |")
        lines += [
            "",
            "## Single scan: memory, inference throughput, results",
            "",
            f"Medians of {settings['repeats']} run(s) per row.",
            "",
            "| scan | model | precision | runs ok | peak RSS tree | peak PSS tree | largest process | inference peak RSS "
            "| ROI Mvox | TMAC per network | net inference s | ROI kvox/s | GMAC/s | IPH mL | EAH mL | IVH mL | oedema mL | hemorrhage mL "
            "| brain mL | same volumes every run |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
        ]
        for m in meds:
            same = {True: "yes", False: "**no**", None: "–"}[m.get("volumes_identical")]
            lines.append(
                f"| {m['scan']} | {m['model']} | {m.get('precision') or '–'} | {m['n_ok']}/{m['n_runs']} "
                f"| {_fmt(m.get('peak_rss_tree_mib'), 2, 1 / 1024)} | {_fmt(m.get('peak_pss_tree_mib'), 2, 1 / 1024)} "
                f"| {_fmt(m.get('max_rss_single_mib'), 2, 1 / 1024)} | {_fmt(m.get('steps.inference.peak_rss_mib'), 2, 1 / 1024)} "
                f"| {_mvox(m.get('inference.roi_voxels'))} | {_fmt(m.get('inference.multiply_adds'), 2, 1e-12)} "
                f"| {_fmt(m.get('inference.inference_seconds'))} "
                f"| {_kvox(m.get('inference.roi_voxels_per_s'))} | {_fmt(m.get('inference.multiply_adds_per_s'), 0, 1e-9)} "
                + "".join(f"| {_fmt(m.get(f'volumes.{k}'), 2)} " for k in ("iph_ml", "eah_ml", "ivh_ml", "oed_ml", "hemorrhage_ml"))
                + f"| {_fmt(m.get('volumes.brain_ml'), 0)} | {same} |"
            )
        lines.append("")
    pmeds = data["parallel"]["medians"]
    if pmeds:
        lines += [
            "## Several scans in one run",
            "",
            f"One dataset, one `ichseg` run per row; medians of {settings['parallel_repeats']} run(s) per row.",
            "",
            "| scans | model | --n-procs | runs ok | wall | scans/hour | CPU s | CPU use | peak RSS tree | peak PSS tree | largest process |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in pmeds:
            lines.append(
                f"| {m['n_scans']} ({', '.join(m['cts'])}) | {m['model']} | {m['n_procs']} | {m['n_ok']}/{m['n_runs']} "
                f"| **{_fmt(m.get('wall_s'))}** | {_fmt(m.get('scans_per_hour'))} | {_fmt(m.get('cpu_s'))} "
                f"| {_fmt(m.get('cpu_utilisation'), 0, 100)}% | {_fmt(m.get('peak_rss_tree_mib'), 2, 1 / 1024)} "
                f"| {_fmt(m.get('peak_pss_tree_mib'), 2, 1 / 1024)} | {_fmt(m.get('max_rss_single_mib'), 2, 1 / 1024)} |"
            )
        lines.append("")
    peer = (data.get("peer") or {}).get("medians") or []
    if peer:
        ours = {m["scan"]: m for m in meds if m["model"] == "blastct-v1"}
        lines += [
            "## The peer side by side: BLAST-CT v1's own command line",
            "",
            "`blast-ct --input CT --output labels --device cpu` (single model, the same `model_1` "
            "weights, flush-to-zero set before it starts), on the same machine in the same benchmark; "
            f"medians of {settings.get('peer_repeats')} run(s). Ratio: BLAST-CT's wall time / "
            "ichseg's (blastct-v1, same scan).",
            "",
            "| scan | runs ok | BLAST-CT wall | CPU s | peak RSS tree | hemorrhage mL | ichseg wall | ichseg hemorrhage mL | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in peer:
            mine = ours.get(m["scan"], {})
            ratio = m.get("wall_s") / mine["wall_s"] if m.get("wall_s") and mine.get("wall_s") else None
            lines.append(
                f"| {m['scan']} | {m['n_ok']}/{m['n_runs']} | **{_fmt(m.get('wall_s'))}** | {_fmt(m.get('cpu_s'))} "
                f"| {_fmt(m.get('peak_rss_tree_mib'), 2, 1 / 1024)} | {_fmt(m.get('volumes.hemorrhage_ml'), 2)} "
                f"| {_fmt(mine.get('wall_s'))} | {_fmt(mine.get('volumes.hemorrhage_ml'), 2)} "
                f"| {'**' + _fmt(ratio) + 'x**' if ratio else '–'} |"
            )
        lines.append("")
    runs = data["single"]["runs"] + data["parallel"]["runs"] + (data.get("peer") or {}).get("runs", [])
    states = {r.get("code_state") for r in runs if r.get("code_state")}
    if len(states) > 1:
        lines += [f"**Warning: the code changed during the benchmark ({len(states)} different states of "
                  "the working tree, see `code_state` in benchmark.json); figures of different runs "
                  "may not be comparable.**", ""]
    loads = [r.get("loadavg_before") for r in runs if r.get("loadavg_before")]
    if loads:
        worst = max(l[0] for l in loads)
        lines += [f"1-minute load average before a run: at most {worst:.1f} "
                  f"(on {machine.get('usable_cpus')} CPUs; well above 0 means other work competed).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per scan and model (medians are reported)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--scans", nargs="+", default=DEFAULT_SCANS, help="real CTs (ct/<name>_ct.nii.gz assets)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-procs", type=int, default=2, help="--n-procs of the single-scan runs")
    parser.add_argument("--parallel-scans", type=int, default=4,
                        help="scans in the several-scans dataset; 0 skips that part")
    parser.add_argument("--skip-single", action="store_true", help="run only the several-scans part")
    parser.add_argument("--parallel-cts", nargs="+", default=DEFAULT_SCANS,
                        help="CTs of the several-scans dataset, taken in turn (a repeated CT is a further session)")
    parser.add_argument("--parallel-n-procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parallel-model", default="blastct-v1")
    parser.add_argument("--parallel-repeats", type=int, default=None, help="default: --repeats")
    parser.add_argument("--peer-repeats", type=int, default=None,
                        help="runs of BLAST-CT's own CLI (single model) per scan, side by side; 0 skips "
                             "it (default: --repeats)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where datasets and work dirs go (default: system temp)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work/output directories")
    parser.add_argument("--timeout", type=float, default=None, help="kill a run after this many seconds")
    parser.add_argument("--no-instrument", action="store_true",
                        help="run plain `python -m ichseg.bids_app.cli` (no per-step CPU time or memory)")
    parser.add_argument("--ichseg-args", nargs=argparse.REMAINDER, default=[],
                        help="further ichseg arguments, e.g. --ichseg-args --omp-nthreads 1 (must come last)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite benchmark.md next to an existing benchmark.json")
    args = parser.parse_args(argv)
    if args.parallel_repeats is None:
        args.parallel_repeats = args.repeats
    if args.peer_repeats is None:
        args.peer_repeats = args.repeats
    args.out = args.out.absolute()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        target = args.render.with_name("benchmark.md")
        target.write_text(render_markdown(data))
        print(target)
        return 0
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    for name in {*args.scans, *(args.parallel_cts if args.parallel_scans > 0 else [])}:
        asset_ct(name)  # fail now, not after an hour, when a CT is missing
    data = benchmark(args)
    print()
    print(render_markdown(data))
    print(f"written: {args.out / 'benchmark.json'}, {args.out / 'benchmark.md'}")
    failed = [r["label"] for r in data["single"]["runs"] + data["parallel"]["runs"] if r["exit_code"] != 0]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
