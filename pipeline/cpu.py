"""CPU floating-point settings for the network: the one place they are made.

Two things decide how fast the DeepMedic networks run on a CPU:

* **Subnormal (denormal) floats.** About 17 % of the published BLAST-CT weights are
  subnormal float32 values (below 1.2e-38), and PReLU layers produce subnormal activations.
  Intel Xeon cores (AVX-512, AMX) take a microcode assist for every such operand, which made
  oneDNN's convolutions about 35x slower; AMD cores barely notice. Flush-to-zero (FTZ) and
  denormals-are-zero (DAZ) in the MXCSR register remove the stalls. MXCSR is per thread:
  a new thread copies it from the thread that creates it, so it must be set in the thread
  that runs the network *and* in every thread of torch's OpenMP pool, which may already
  exist. :func:`flush_denormals` does both and checks the result with a parallel probe.
* **Native bf16.** CPUs with AMX or AVX-512-BF16 run bf16 convolutions several times faster
  than float32; elsewhere bf16 is emulated and much slower. bf16 moved the hemorrhage volume
  of two real CTs by more than 1 % (bench/results/precision), so it is opt-in:
  :func:`resolve_precision` keeps float32 for ``auto`` and warns where bf16 would be slow.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import platform
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

LOGGER = logging.getLogger(__name__)

#: Precisions the network can run in; ``auto`` picks by hardware (:func:`resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ISA features recorded with every benchmark figure and the model provenance.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")

# Elements of the probe tensor: well above at::parallel_for's grain size (32768), so that
# every intra-op thread computes a part of it.
_PROBE_ELEMENTS = 1 << 20


def _probe_subnormals_survive() -> bool:
    """True if some intra-op thread still produces subnormal results (no flush-to-zero)."""
    import torch

    tiny = torch.full((_PROBE_ELEMENTS * max(1, torch.get_num_threads()),), 1e-30, dtype=torch.float32)
    # 1e-30 * 1e-10 = 1e-40 is subnormal; with FTZ every thread writes 0 instead.
    return bool(((tiny * 1e-10) != 0).any())


def _openmp_library():
    """torch's OpenMP runtime (libgomp, or libomp which exports the same entry point), or None."""
    import torch

    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for pattern in ("libgomp*.so*", "libomp*.so*", "libiomp*.so*", "libomp*.dylib", "libiomp*.dylib"):
        for path in sorted(glob.glob(os.path.join(lib_dir, pattern))):
            try:
                lib = ctypes.CDLL(path)  # already loaded by torch: the same instance
            except OSError:
                continue
            if hasattr(lib, "GOMP_parallel"):
                return lib
    return None


def _flush_in_openmp_pool(num_threads: int, flush: bool = True) -> set[int]:
    """Set (or clear) FTZ/DAZ in each thread of torch's OpenMP pool; returns the threads reached.

    One OpenMP parallel region of ``num_threads`` runs a callback in every pool thread (the
    same pool torch's parallel loops use from this thread), and the callback sets the
    thread's own MXCSR through torch.
    """
    import torch

    lib = _openmp_library()
    if lib is None:
        return set()
    reached: set[int] = set()

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    def body(_data):  # runs in each pool thread (ctypes takes the GIL)
        torch.set_flush_denormal(flush)
        reached.add(threading.get_native_id())

    lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    lib.GOMP_parallel(ctypes.cast(body, ctypes.c_void_p), None, num_threads, 0)
    return reached


def flush_denormals() -> dict:
    """Flush subnormal floats to zero in this thread and in torch's intra-op threads.

    Call it in the thread that runs the network, after ``torch.set_num_threads``. Returns
    ``{"flush_denormal": bool, "verified": bool}``: whether the CPU supports it (x86 with
    SSE3) and whether a parallel probe then found no subnormal result in any thread.
    """
    import torch

    if not torch.set_flush_denormal(True):
        # Not x86: arm64 and others treat subnormals at full speed or flush them by default.
        return {"flush_denormal": False, "verified": False}
    if _probe_subnormals_survive():
        # The OpenMP pool was created before this thread flushed: its threads kept the old mode.
        reached = _flush_in_openmp_pool(torch.get_num_threads())
        LOGGER.debug("flush-to-zero set in %d OpenMP pool thread(s)", len(reached))
    verified = not _probe_subnormals_survive()
    if not verified:
        LOGGER.warning(
            "could not set flush-to-zero in every torch thread: the network may run many "
            "times slower on this CPU; set OMP_NUM_THREADS=1 or report this with `lscpu`"
        )
    return {"flush_denormal": True, "verified": verified}


def configure_torch(num_threads: int) -> dict:
    """Threads and floating-point mode for running the network in this process and thread.

    Returns what was set, for the provenance (``torch_threads``, ``flush_denormal``,
    ``flush_denormal_verified``).
    """
    import torch

    torch.set_num_threads(max(1, int(num_threads)))
    status = flush_denormals()
    return {
        "torch_threads": torch.get_num_threads(),
        "flush_denormal": status["flush_denormal"],
        "flush_denormal_verified": status["verified"],
    }


@contextmanager
def torch_configured(num_threads: int) -> Iterator[dict]:
    """:func:`configure_torch` for the duration of a block; then the caller's thread count and
    floating-point mode come back (the Python API runs the network in the caller's process,
    whose other computations must keep IEEE subnormals)."""
    import torch

    threads = torch.get_num_threads()
    flushed_before = not _probe_subnormals_survive()
    try:
        yield configure_torch(num_threads)
    finally:
        if not flushed_before and torch.set_flush_denormal(False):
            _flush_in_openmp_pool(torch.get_num_threads(), flush=False)
        torch.set_num_threads(threads)


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux), else platform's name."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fobj:
            text = fobj.read()
    except OSError:
        return model, flags
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    if found:
        model = found.group(1).strip()
    found = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    if found:
        flags = frozenset(found.group(1).split())
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` reports."""
    return _cpuinfo()[0]


def isa_flags() -> dict[str, bool]:
    """Which of :data:`ISA_FLAGS` the CPU has: /proc/cpuinfo, else torch's own detection."""
    _, flags = _cpuinfo()
    found = {name: name in flags for name in ISA_FLAGS}
    if not flags:  # no /proc (macOS, Windows): ask torch, which is imported only here
        try:
            import torch

            found["avx2"] = bool(torch.cpu._is_avx2_supported())
            found["avx512f"] = bool(torch.cpu._is_avx512_supported())
            found["avx512_bf16"] = bool(torch.cpu._is_avx512_bf16_supported())
            found["amx_tile"] = found["amx_bf16"] = bool(torch.cpu._is_amx_tile_supported())
        except (ImportError, AttributeError):
            pass
    return found


def has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AMX or AVX-512-BF16)."""
    flags = isa_flags()
    return flags["amx_tile"] or flags["amx_bf16"] or flags["avx512_bf16"]


def onednn_version() -> str | None:
    """The oneDNN (MKL-DNN) version torch was built with, e.g. ``"3.12.0"``."""
    import torch

    found = re.search(r"MKL-DNN v([0-9][0-9.]*)", torch.__config__.show())
    return found.group(1) if found else None


def usable_cpus() -> int:
    """CPUs this process may use: the machine's, less its CPU affinity (Slurm, ``taskset``) and
    its cgroup CPU quota (``docker run --cpus``), or ``LOKY_MAX_CPU_COUNT`` if set.

    ``os.cpu_count()`` counts the whole machine: in a container limited to 2 CPUs of a 64-core
    node it would start 64 threads, which then take turns on 2 CPUs.
    """
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def runnable_threads(samples: int = 5, interval_s: float = 0.05) -> int | None:
    """Threads of other programs that are running or waiting for a CPU now (Linux), else None.

    The 4th field of /proc/loadavg counts the runnable threads of the whole machine at this
    instant, this reader included; the median of a few samples skips kernel threads that wake
    for a moment. Unlike the load average it does not remember work that just ended.
    """
    counts = []
    for sample in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fobj:
                counts.append(int(fobj.read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return None
        if sample + 1 < samples:
            time.sleep(interval_s)
    return max(0, sorted(counts)[len(counts) // 2] - 1)


def busy_cpus_message(threads: int, others: int | None = None, usable: int | None = None) -> str | None:
    """A warning when other programs already keep the usable CPUs busy, else None.

    Threads of two CPU-bound programs on the same cores interleave badly (OpenMP threads spin
    while they wait): two network runs side by side on 2 cores each took about ten times as
    long. ``others`` defaults to :func:`runnable_threads`, taken before ichseg starts any work;
    ``usable`` to :func:`usable_cpus`. A process limited to a share of the machine (Slurm,
    containers) is not judged: the count is machine-wide, the others may run on other CPUs.
    """
    usable = usable_cpus() if usable is None else usable
    if usable < (os.cpu_count() or usable):
        return None
    others = runnable_threads() if others is None else others
    if others is None:
        return None
    if others + threads <= usable:
        return None
    return (f"the CPUs are busy: {others} thread(s) of other programs are running on {usable} "
            f"usable CPU(s), and ichseg adds {threads}, so its steps will compete with them and "
            "may run several times slower. Run all scans in one ichseg command (it shares the "
            "CPUs between them), or give each command its own CPUs with --n-procs and "
            "--omp-nthreads (or taskset)")


def machine_description() -> dict:
    """CPU model, ISA flags, core count and the torch/oneDNN versions: kept with every figure."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "isa": isa_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "onednn": onednn_version(),
    }


class PrecisionError(ValueError):
    """A precision that cannot be used on the chosen device."""


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """The precision the network runs in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is float32 on every device: bf16 autocast failed ichseg's acceptance test for
    reduced precision (hemorrhage volume within 1 % of float32 and 99 % of hemorrhage voxels
    labelled alike on every real CT; docs/benchmarks.md), so it is offered, not chosen.
    ``bf16`` runs fast only where the CPU has AMX or AVX-512-BF16 (emulated bf16 was measured
    25-30x slower than float32 on AVX2) or on CUDA; ``fp16`` is for CUDA only.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    cuda = str(device).startswith("cuda")
    if precision == "auto":
        return "fp32"
    if precision == "fp16" and not cuda:
        raise PrecisionError(
            "--precision fp16 needs a CUDA device; on the CPU use fp32, or bf16 on a CPU with "
            "AMX or AVX-512-BF16"
        )
    if precision == "bf16" and not cuda and not has_native_bf16():
        LOGGER.warning("this CPU has no native bf16 (AMX or AVX-512-BF16): bf16 will be much slower than fp32")
    return precision
