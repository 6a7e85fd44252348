"""``ichseg status OUTPUT_DIR``: which scans are done, running, failed or still to run.

Read from the output folder alone, so that it works for local runs and for any scheduler:
the per-scan result files (volume table or failure record), the per-scan locks of running
processes, and the record of the last ``--submit`` (which scans it submitted, in which job),
checked against ``squeue`` when Slurm is there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ichseg.bids_app.group import last_outcome, read_failure
from ichseg.bids_app.scanlock import describe_holder, lock_holder
from ichseg.pipeline.naming import (
    derivative_path,
    entities_from_path,
    find_derivatives,
    scan_id,
    scan_lock_path,
)
from ichseg.pipeline.volumes import STATUS_FAILED

__all__ = ["ScanState", "scan_state", "latest_submission", "collect_states", "run_status"]

DONE, FAILED, RUNNING, PENDING, INCOMPLETE = "done", "failed", "running", "pending", "incomplete"
#: Order of the states in the listing and the summary.
STATES = (DONE, FAILED, RUNNING, PENDING, INCOMPLETE)
#: Where ``--submit`` writes its job scripts, scan lists, task logs and ``submission.json``.
SUBMISSIONS_FOLDER = "logs"


@dataclass(frozen=True)
class ScanState:
    scan: str
    state: str
    detail: str = ""


def scan_state(output_dir: str | os.PathLike, entities) -> ScanState | None:
    """The state of one scan from its files: running, done or failed; None when none applies."""
    sid = scan_id(entities)
    holder = lock_holder(scan_lock_path(output_dir, entities))
    if holder is not None:
        return ScanState(sid, RUNNING, describe_holder(holder))
    outcome = last_outcome(derivative_path(output_dir, entities, "volumes"),
                           derivative_path(output_dir, entities, "failure"))
    if outcome is None:
        return None
    status, path = outcome
    return ScanState(sid, FAILED, read_failure(path)) if status == STATUS_FAILED else ScanState(sid, DONE)


def latest_submission(output_dir: str | os.PathLike) -> dict | None:
    """The ``submission.json`` of the newest ``--submit`` into ``output_dir``, or None."""
    records = sorted(Path(output_dir).glob(f"{SUBMISSIONS_FOLDER}/submit-*/submission.json"))
    for path in reversed(records):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        record["folder"] = str(path.parent)
        return record
    return None


def _queued_tasks(job_id: str) -> dict[str, tuple[str, str]]:
    """``{task index: (state, reason)}`` of a Slurm array job's tasks still in the queue."""
    if not job_id or shutil.which("squeue") is None:
        return {}
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-j", str(job_id), "-o", "%i|%T|%r"],
                                capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    tasks = {}
    for line in result.stdout.splitlines():
        ident, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        _, _, task = ident.partition("_")
        if task.isdigit():
            tasks[task] = (state.strip(), reason.strip())
    return tasks


def collect_states(output_dir: str | os.PathLike) -> list[ScanState]:
    """The state of every scan the output folder knows of: from its results, locks and the
    last submission (scans it submitted that have no result yet are pending or incomplete)."""
    output_dir = Path(output_dir).absolute()
    entities: dict[str, dict] = {}
    for kind in ("volumes", "failure"):
        for source, _ in find_derivatives(output_dir, kind):
            entities.setdefault(scan_id(source), source)
    for lock in output_dir.glob("sub-*/log/.*.lock"):
        try:
            ents = entities_from_path(lock.name[1 : -len(".lock")] + "_ct.nii.gz")
        except ValueError:
            continue
        entities.setdefault(scan_id(ents), ents)
    submitted: dict[str, str] = {}  # scan id -> array task index
    submission = latest_submission(output_dir)
    if submission:
        for task, paths in submission.get("tasks", {}).items():
            for relpath in paths:
                ents = entities_from_path(relpath)
                entities.setdefault(scan_id(ents), ents)
                submitted[scan_id(ents)] = task
    queued = _queued_tasks(submission.get("job_id", "")) if submission else {}
    states = []
    for sid, ents in entities.items():
        state = scan_state(output_dir, ents)
        if sid in submitted:
            task = submitted[sid]
            job = f"{submission.get('job_id')}_{task}"
            if task in queued and (state is None or state.state != RUNNING):
                # Queued again after a rerun, or started but not yet at this scan.
                slurm_state, reason = queued[task]
                kind = RUNNING if slurm_state == "RUNNING" else PENDING
                state = ScanState(sid, kind, f"Slurm job {job} {slurm_state.lower()}"
                                  + (f" ({reason})" if reason and reason != "None" else ""))
            elif state is None:
                log = Path(submission["folder"]) / f"task-{task}.log"
                state = ScanState(sid, INCOMPLETE, f"Slurm job {job} ended without a result "
                                  f"(cancelled, out of time or memory?): see {log}; submit again")
        if state is not None:
            states.append(state)
    order = {name: i for i, name in enumerate(STATES)}
    return sorted(states, key=lambda s: (order[s.state], s.scan))


def run_status(argv: list[str]) -> int:
    """``ichseg status OUTPUT_DIR``: print one line per scan and a summary; return 0."""
    parser = argparse.ArgumentParser(
        prog="ichseg status",
        description="List the scans of an ichseg output folder as done, failed, running, pending "
                    "or incomplete, with the reason, from the results, the locks of running "
                    "processes and the last --submit.",
    )
    parser.add_argument("output_dir", type=Path, help="the OUTPUT_DIR of the participant level")
    parser.add_argument("--json", action="store_true", help="print the states as JSON")
    args = parser.parse_args(argv)
    if not args.output_dir.is_dir():
        print(f"ichseg status: error: {args.output_dir} is not a folder: give the OUTPUT_DIR of a "
              "participant-level run.", file=sys.stderr)
        return 2
    states = collect_states(args.output_dir)
    if args.json:
        print(json.dumps([s.__dict__ for s in states], indent=2))
        return 0
    width = max((len(s.scan) for s in states), default=4)
    for s in states:
        print(f"{s.scan:<{width}}  {s.state:<10}  {s.detail}".rstrip())
    counts = {name: sum(s.state == name for s in states) for name in STATES}
    print(", ".join(f"{n} {name}" for name, n in counts.items()) + f" ({len(states)} scans)")
    return 0
