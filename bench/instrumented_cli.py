"""``ichseg`` with per-step CPU and memory accounting, for the benchmark only.

Usage is that of the ``ichseg`` command line::

    python bench/instrumented_cli.py BIDS_DIR OUTPUT_DIR participant -w WORK --n-procs 2

It wraps :meth:`nipype.pipeline.engine.Node.run` so that every node writes
``_bench_usage.json`` into its own folder of the work directory:

``t_start``, ``t_end``
    Epoch seconds (``time.time()``) around the node's run.
``wall_s``
    ``t_end - t_start``.
``cpu_s``, ``user_s``, ``sys_s``
    CPU time of the process that ran the node during the run (all its threads: torch,
    ITK/ANTs, NumPy), plus that of any subprocess the node started and waited for
    (``getrusage`` of ``RUSAGE_SELF`` and ``RUSAGE_CHILDREN``, after minus before). A
    MultiProc worker runs one node at a time, so this is the node's own CPU time. Nodes that
    Nipype runs inside the main process (``run_without_submitting``: the derivative sinks)
    also get the little CPU time the scheduler spends meanwhile.
``peak_rss_mib``
    Largest resident set size of that process while the node ran, sampled every 0.1 s
    from ``/proc/self/statm`` (plus the value at the start and at the end). The worker's
    memory includes what earlier nodes left behind in it (imported libraries, heap).
``pid``, ``in_main_process``
    Which process ran the node.

Nothing else changes: the same ``ichseg.bids_app.cli.main`` runs with the same arguments.
Why a wrapper and not Nipype's own resource monitor: ``ichseg`` switches the monitor off
(``monitoring.enabled = False`` in ``bids_app/run.py``), and the monitor needs ``psutil``,
which is not a dependency of ichseg; besides, the monitor records the *peak* CPU percent of
a node, not its CPU time.

This relies on Nipype's MultiProc plugin forking its workers (the default start method on
Linux), so that the workers inherit the wrapped method. Under another start method the
files are simply missing and the benchmark falls back to Nipype's own node durations.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

USAGE_FILE = "_bench_usage.json"
SAMPLE_SECONDS = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MAIN_PID = os.getpid()


def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc``); None where unavailable."""
    try:
        with open("/proc/self/statm") as fobj:
            return int(fobj.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class _PeakRSS(threading.Thread):
    """Background thread that records the largest RSS of this process until stopped."""

    def __init__(self):
        super().__init__(name="bench-rss", daemon=True)
        self.peak = _rss_bytes() or 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=1.0)
        self.peak = max(self.peak, _rss_bytes() or 0)
        return self.peak


def _cpu(usage) -> tuple[float, float]:
    return usage.ru_utime, usage.ru_stime


def install() -> None:
    """Wrap ``Node.run`` so that each node records its wall/CPU time and peak memory."""
    from nipype.pipeline.engine import nodes

    if getattr(nodes.Node.run, "_bench_wrapped", False):
        return
    original = nodes.Node.run

    def run(self, *args, **kwargs):
        self_before = _cpu(resource.getrusage(resource.RUSAGE_SELF))
        children_before = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
        sampler = _PeakRSS()
        sampler.start()
        t_start = time.time()
        try:
            return original(self, *args, **kwargs)
        finally:
            t_end = time.time()
            peak = sampler.stop()
            self_after = _cpu(resource.getrusage(resource.RUSAGE_SELF))
            children_after = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
            user = (self_after[0] - self_before[0]) + (children_after[0] - children_before[0])
            system = (self_after[1] - self_before[1]) + (children_after[1] - children_before[1])
            record = {
                "node": self.fullname,
                "t_start": t_start,
                "t_end": t_end,
                "wall_s": t_end - t_start,
                "cpu_s": user + system,
                "user_s": user,
                "sys_s": system,
                "peak_rss_mib": peak / 2**20 if peak else None,
                "pid": os.getpid(),
                "in_main_process": os.getpid() == _MAIN_PID,
                "n_procs": getattr(self, "n_procs", None),
                "mem_gb_estimate": getattr(self, "mem_gb", None),
            }
            try:
                folder = self.output_dir()
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, USAGE_FILE), "w") as fobj:
                    json.dump(record, fobj)
            except Exception:  # accounting must never break the run  # noqa: BLE001
                pass

    run._bench_wrapped = True
    nodes.Node.run = run


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # as ichseg's own main does, before nipype loads
    install()
    from ichseg.bids_app.cli import main as ichseg_main

    return ichseg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
