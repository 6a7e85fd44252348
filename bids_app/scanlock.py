"""One writer per scan: a lock file per scan in the output folder.

Several participant-level processes may share one output folder: Slurm array tasks, or the
same command started twice by hand. Each process takes the lock of every scan it is about
to process and skips the scans whose lock another process holds, so that a scan's outputs,
its failure record and its Nipype work folder have a single writer at any time.

The lock is a POSIX record lock (``fcntl.lockf``) on ``sub-X/log/.<scan>.lock``. POSIX locks
work across the hosts of an NFS or Lustre mount, and the kernel releases them when the
process ends, however it ends (``scancel``, out of memory, a node failure seen by the lock
server), so a lock is never stale. The file itself stays; while a process holds it, it
records who (host, pid, Slurm job), for ``ichseg status`` and for the messages of others.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["ScanLock", "lock_holder", "describe_holder"]


def _owner() -> dict[str, Any]:
    """Who takes a lock: host, pid, start time and, inside Slurm, the job."""
    owner: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job:
        owner["slurm_job"] = f"{job}_{task}" if task else job
    return owner


class ScanLock:
    """The lock of one scan; :meth:`acquire` returns False when another process holds it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock without waiting; write this process's details into the file."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_owner()) + "\n").encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        # Clear the details first: a reader that finds the file unlocked and empty knows
        # that nobody works on the scan.
        os.ftruncate(self._fd, 0)
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ScanLock:
        if not self.acquire():
            raise BlockingIOError(f"{self.path} is held by {describe_holder(lock_holder(self.path))}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """Details of the process that holds the lock at ``path``, or None when nobody does.

    Must not be called by a process that holds the lock itself: closing any descriptor of
    the file drops a POSIX lock of the calling process.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            try:
                details = json.loads(text) if text else {}
            except json.JSONDecodeError:
                details = {}
            return details if isinstance(details, dict) else {}
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``"pid 123 on node07 (Slurm job 55_3) since 2026-12-03T10:00:00"`` or ``"nobody"``."""
    if holder is None:
        return "nobody"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("slurm_job"):
        text += f" (Slurm job {holder['slurm_job']})"
    if holder.get("since"):
        text += f" since {holder['since']}"
    return text
