"""CPU and memory limits of a participant-level run: ``--n-procs``, ``--omp-nthreads``, ``--mem``."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ichseg.pipeline.cpu import usable_cpus

LOGGER = logging.getLogger("ichseg")

__all__ = ["Resources", "scan_memory_gb"]

#: CPUs per job of ``--submit`` when ``--n-procs`` is not given.
SUBMIT_N_PROCS = 2
#: Memory (GB) of the Nipype process that schedules the steps, besides the steps themselves.
SCHEDULER_GB = 0.5


def scan_memory_gb() -> float:
    """Memory (GB) one scan needs at its peak: the largest step estimate of the workflow.

    The estimates (``MEM_GB`` of the workflow, measured in bench/) hold for every model and
    precision: the ensemble runs its networks one after another, and bf16 needs less.
    """
    from ichseg.pipeline.workflows.base import MEM_GB

    return max(MEM_GB.values())


@dataclass(frozen=True)
class Resources:
    """What one participant-level process may use.

    ``n_procs`` CPUs in all (Nipype runs steps side by side within it), ``omp_nthreads``
    threads per step (torch, ITK), and ``mem_gb`` GB of memory (None: what the machine has).
    """

    n_procs: int
    omp_nthreads: int
    mem_gb: float | None = None

    @classmethod
    def from_args(cls, args) -> Resources:
        if args.n_procs is not None:
            n_procs = max(1, int(args.n_procs))
        else:
            n_procs = SUBMIT_N_PROCS if getattr(args, "submit", None) else usable_cpus()
        omp = args.omp_nthreads or min(n_procs, 8)
        if omp > n_procs:
            LOGGER.warning("--omp-nthreads %d is more than --n-procs %d; using %d threads per step",
                           omp, n_procs, n_procs)
            omp = n_procs
        return cls(n_procs=n_procs, omp_nthreads=max(1, omp), mem_gb=getattr(args, "mem", None))

    @property
    def scans_side_by_side(self) -> int:
        """How many scans can be at their heaviest step at once."""
        return max(1, self.n_procs // self.omp_nthreads)

    def job_memory_gb(self, n_scans: int) -> float:
        """Memory to ask a scheduler for: ``--mem`` if given, else what the scans need."""
        if self.mem_gb is not None:
            return self.mem_gb
        return SCHEDULER_GB + min(n_scans, self.scans_side_by_side) * scan_memory_gb()

    def job_memory_mb(self, n_scans: int) -> int:
        return int(math.ceil(self.job_memory_gb(n_scans) * 1024))

    def __str__(self) -> str:
        memory = f"{self.mem_gb:g} GB" if self.mem_gb is not None else "all memory"
        return f"{self.n_procs} CPU(s), {self.omp_nthreads} thread(s) per step, {memory}"
