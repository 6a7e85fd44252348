"""A one-node Slurm cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd.

Debian's slurm-wlm and munge packages (``.ci/run`` installs them). The daemons run as root
with a configuration of their own in a temporary folder, on free ports, without cgroups
(process tracking by /proc), so they need nothing else from the machine and leave nothing
behind. Commands find the cluster through ``SLURM_CONF``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")


def missing_requirements() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root"
    return None


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024
    return 4096


def _ensure_munged() -> None:
    """Start munged with the machine's key unless it already answers."""
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    _wait(lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0,
          30, "munged did not start")


def _wait(condition, seconds: float, message: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise RuntimeError(message)


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop`; ``env`` holds ``SLURM_CONF``."""

    def __init__(self, folder: Path, cpus: int = 2):
        self.folder = Path(folder)
        self.cpus = cpus
        self.conf = self.folder / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, d_port = _free_ports(2)
        f = self.folder
        self.conf.write_text("\n".join([
            "ClusterName=ichsegtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"StateSaveLocation={f}/state", f"SlurmdSpoolDir={f}/spool",
            f"SlurmctldPidFile={f}/slurmctld.pid", f"SlurmdPidFile={f}/slurmd.pid",
            f"SlurmctldLogFile={f}/log/slurmctld.log", f"SlurmdLogFile={f}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU_Memory",
            "MpiDefault=none", "ReturnToService=2",
            "SchedulerType=sched/backfill", "SchedulerParameters=bf_interval=1,sched_min_interval=100000",
            "MinJobAge=3600", "KillWait=5",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")

    def start(self) -> SlurmCluster:
        _ensure_munged()
        self._write_conf()
        env = {**os.environ, **self.env}
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(self.conf)], env=env, check=True)
        subprocess.run(["/usr/sbin/slurmd", "-f", str(self.conf), "-N", self.node], env=env, check=True)

        def idle() -> bool:
            result = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return result.stdout.strip() == "idle"

        _wait(idle, 60, f"the test cluster did not come up; see {self.folder / 'log'}")
        return self

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld"):
            pidfile = self.folder / f"{name}.pid"
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def run(self, *command: str, check: bool = True) -> str:
        """Run a Slurm command (squeue, scancel, ...) against this cluster; return stdout."""
        result = subprocess.run(command, env={**os.environ, **self.env}, capture_output=True,
                                text=True, check=check)
        return result.stdout

    def wait_for_jobs(self, seconds: float = 1200) -> None:
        """Wait until the queue is empty."""
        _wait(lambda: not self.run("squeue", "-h").strip(), seconds, "jobs still queued")
