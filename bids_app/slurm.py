"""``--submit slurm``: the participant level as a Slurm job array, the group level after it.

One array task per ``--scans-per-job`` scans. Each task runs the ordinary participant level
on its own list of scans (``--scans-file``) with the same options, so a task is exactly what
a user could run by hand, and many tasks share the output folder safely (one lock per scan,
atomic writes). The group level is a second job that starts when every task has ended,
whatever its exit status, so that failed scans appear in the group table.

Everything goes into ``OUTPUT_DIR/logs/submit-<time>/``: the two job scripts, the scan list
of each task, each task's log and ``submission.json`` (read by ``ichseg status``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ichseg.bids_app.bids import CTImage
from ichseg.bids_app.resources import Resources
from ichseg.bids_app.status import DONE, RUNNING, SUBMISSIONS_FOLDER, scan_state

LOGGER = logging.getLogger("ichseg")

__all__ = ["SlurmError", "submit", "task_arguments"]

#: Options that concern the submission itself or the scan selection, which the scans files
#: replace: they are not passed on to the array tasks.
_NOT_FORWARDED = {"submit", "sbatch_args", "scans_per_job", "participant_label", "session_label",
                  "bids_filter_file", "scans_file", "nipype_plugin", "nipype_plugin_args",
                  "help", "version", "bids_dir", "output_dir", "analysis_level"}
#: Resources of the group-level job (it reads tables and draws the report).
GROUP_JOB = {"cpus": 1, "mem_mb": 2048}


class SlurmError(Exception):
    """Submission is impossible (no sbatch, sbatch refused the job); the message says why."""


def task_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line options of ``args`` that differ from the defaults, in canonical form,
    without those of the submission and the scan selection."""
    argv = []
    for action in parser._actions:
        if not action.option_strings or action.dest in _NOT_FORWARDED:
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        option = _long_option(action)
        if isinstance(action, argparse._CountAction):
            argv += [option] * int(value)
        elif isinstance(action, argparse._StoreTrueAction):
            argv.append(option)
        elif value is None and hasattr(action.type, "none_word"):
            argv += [option, action.type.none_word]  # e.g. --hemorrhage-threshold argmax
        elif isinstance(value, Path):
            argv += [option, str(value.absolute())]
        else:
            argv += [option, str(value)]
    return argv


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values (all take one value)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in options:
            skip = True
        else:
            kept.append(item)
    return kept


def _long_option(action: argparse.Action) -> str:
    """The first ``--long`` spelling of an option (the canonical one)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def _option(name: str, parser: argparse.ArgumentParser) -> str:
    return _long_option(next(action for action in parser._actions if action.dest == name))


def _to_submit(images: list[CTImage], output_dir: Path) -> tuple[list[CTImage], int, int]:
    """Scans not done and not running elsewhere; also the counts of done and running ones."""
    todo, done, running = [], 0, 0
    for image in images:
        state = scan_state(output_dir, image.entities)
        if state is not None and state.state == DONE:
            done += 1
        elif state is not None and state.state == RUNNING:
            running += 1
            LOGGER.info("%s: not submitted, it runs now (%s)", image.scan_id, state.detail)
        else:
            todo.append(image)
    return todo, done, running


def _sbatch(arguments: list[str]) -> str:
    """Run ``sbatch --parsable ...``; return the job id."""
    command = ["sbatch", "--parsable", *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"sbatch did not answer within 2 minutes ({shlex.join(command)}).") from None
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()} "
                         f"(command: {shlex.join(command)}). Fix --sbatch-args or the resources "
                         "(--n-procs, --mem) for this cluster.")
    return result.stdout.strip().split(";")[0]


def _script(header: list[str], command: str) -> str:
    lines = ["#!/bin/bash", *[f"#SBATCH {line}" for line in header], "",
             "# Written by ichseg --submit slurm (docs/hpc.md).",
             "set -eu",
             "export NIPYPE_NO_ET=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1",
             'echo "ichseg job ${SLURM_JOB_ID:-?} task ${SLURM_ARRAY_TASK_ID:--} on $(hostname) at $(date)"',
             command, ""]
    return "\n".join(lines)


def submit(args: argparse.Namespace, images: list[CTImage], output_dir: Path, resources: Resources) -> int:
    """Write and submit the job array and the group job; print their ids; return 0."""
    from ichseg.bids_app.cli import build_parser

    if shutil.which("sbatch") is None:
        raise SlurmError("--submit slurm: the command sbatch is not on PATH. Run ichseg on a login "
                         "node of a Slurm cluster (or load its Slurm module), or drop --submit to "
                         "run here.")
    if args.scans_per_job < 1:
        raise SlurmError(f"--scans-per-job must be 1 or more, not {args.scans_per_job}.")
    output_dir.mkdir(parents=True, exist_ok=True)
    todo, done, running = _to_submit(images, output_dir)
    if not todo:
        print(f"ichseg: nothing to submit: {done} scan(s) done, {running} running "
              f"(ichseg status {output_dir}).")
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = output_dir / SUBMISSIONS_FOLDER / f"submit-{stamp}-{os.getpid()}"
    folder.mkdir(parents=True)
    bids_dir = args.bids_dir.absolute()
    groups = [todo[i : i + args.scans_per_job] for i in range(0, len(todo), args.scans_per_job)]
    tasks = {}
    for index, group in enumerate(groups):
        relpaths = [image.path.absolute().relative_to(bids_dir).as_posix() for image in group]
        (folder / f"scans-{index}.txt").write_text("\n".join(relpaths) + "\n")
        tasks[str(index)] = relpaths

    parser = build_parser()
    python = [sys.executable, "-m", "ichseg.bids_app.cli"]
    # The resources and the work folder are always explicit: a compute node's defaults
    # (its CPU count, the job's working folder) are not the login node's.
    forwarded = _without(task_arguments(args, parser), ("--n-procs", "--mem", "--work-dir"))
    mem_mb = resources.job_memory_mb(args.scans_per_job)
    forwarded += ["--n-procs", str(resources.n_procs), "--mem", f"{mem_mb / 1024:.2f}",
                  "--work-dir", str(args.work_dir.absolute())]
    task_command = (shlex.join([*python, str(bids_dir), str(output_dir.absolute()), "participant", *forwarded])
                    + " --scans-file " + shlex.quote(str(folder)) + '/scans-"$SLURM_ARRAY_TASK_ID".txt')
    participant = folder / "participant.sbatch"
    participant.write_text(_script([
        "--job-name=ichseg", f"--array=0-{len(groups) - 1}",
        f"--cpus-per-task={resources.n_procs}", f"--mem={mem_mb}M", "--ntasks=1",
        f"--output={folder}/task-%a.log",
    ], task_command))
    group_command = [*python, str(bids_dir), str(output_dir.absolute()), "group"]
    for name in ("participant_label", "bids_filter_file"):
        value = getattr(args, name)
        if value:
            group_command += [_option(name, parser),
                              *(map(str, value) if isinstance(value, list) else [str(Path(value).absolute())])]
    group = folder / "group.sbatch"
    group.write_text(_script([
        "--job-name=ichseg-group", f"--cpus-per-task={GROUP_JOB['cpus']}",
        f"--mem={GROUP_JOB['mem_mb']}M", "--ntasks=1", f"--output={folder}/group.log",
    ], shlex.join(group_command)))

    extra = shlex.split(args.sbatch_args or "")
    job_id = _sbatch([*extra, str(participant)])
    group_id = _sbatch([*extra, f"--dependency=afterany:{job_id}", "--kill-on-invalid-dep=yes", str(group)])
    record = {"job_id": job_id, "group_job_id": group_id, "submitted": stamp, "bids_dir": str(bids_dir),
              "scans_per_job": args.scans_per_job, "tasks": tasks, "skipped_done": done,
              "skipped_running": running, "sbatch_args": args.sbatch_args}
    (folder / "submission.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"ichseg: submitted {len(todo)} scan(s) as Slurm array job {job_id} ({len(groups)} task(s), "
          f"{resources.n_procs} CPU(s) and {mem_mb} MB each) and the group level as job {group_id}; "
          f"{done} scan(s) already done. Scripts and logs: {folder}. Follow with: ichseg status {output_dir}")
    return 0
