"""Running the participant and group levels: from parsed arguments to outputs and a summary."""

from __future__ import annotations

import getpass
import logging
import os
import re
import time
from pathlib import Path

from ichseg.bids_app.bids import (
    BIDSInputError,
    CTImage,
    check_output_dir,
    collect_ct_images,
    load_bids_filter,
)
from ichseg.bids_app.description import write_derivatives_description
from ichseg.bids_app.group import (
    GroupLevelError,
    clear_failure_record,
    write_failure_record,
    write_group_table,
)
from ichseg.bids_app.resources import Resources
from ichseg.bids_app.scanlock import ScanLock, describe_holder, lock_holder
from ichseg.pipeline import __version__
from ichseg.pipeline.assets import AssetError
from ichseg.pipeline.cpu import PrecisionError, busy_cpus_message, resolve_precision
from ichseg.pipeline.fileutils import remove_stale_temporaries
from ichseg.pipeline.models import ModelError, resolve_model
from ichseg.pipeline.naming import derivative_path, output_scan_id, scan_lock_path
from ichseg.pipeline.reports import write_group_report
from ichseg.pipeline.settings import MethodSettings
from ichseg.pipeline.tsv import read_tsv
from ichseg.pipeline.volumes import STATUS_OK

LOGGER = logging.getLogger("ichseg")


class UserError(Exception):
    """A problem the user can fix (bad arguments, input, missing assets): no traceback."""


def _check_inputs(args):
    """Validate directories and filters; return (output_dir, bids_filter)."""
    try:
        output_dir = check_output_dir(args.bids_dir, args.output_dir)
        bids_filter = load_bids_filter(args.bids_filter_file) if args.bids_filter_file else None
    except BIDSInputError as exc:
        raise UserError(str(exc)) from None
    return output_dir, bids_filter


def run_participant(args) -> int:
    """Process every selected CT; return 0 when all succeeded, 1 when any failed.

    With ``--submit slurm`` the scans are handed to Slurm instead (:mod:`.slurm`).
    """
    output_dir, bids_filter = _check_inputs(args)
    work_dir = args.work_dir.absolute()
    try:
        check_output_dir(args.bids_dir, work_dir)
    except BIDSInputError as exc:
        raise UserError(f"--work-dir: {exc}") from None
    try:
        images = collect_ct_images(args.bids_dir, args.participant_label, args.session_label, bids_filter)
        if args.scans_file:
            images = select_listed(images, args.bids_dir, args.scans_file)
        resolve_model(args.model)  # fail before any work when weights or config are missing
        resolve_precision(args.precision, args.device)  # e.g. fp16 on the CPU
    except (BIDSInputError, ModelError, AssetError, PrecisionError) as exc:
        raise UserError(str(exc)) from None
    resources = Resources.from_args(args)
    if args.submit == "slurm":
        from ichseg.bids_app.slurm import SlurmError, submit

        try:
            return submit(args, images, output_dir, resources)
        except SlurmError as exc:
            raise UserError(str(exc)) from None

    output_dir.mkdir(parents=True, exist_ok=True)
    write_derivatives_description(output_dir, args.bids_dir, __version__)
    locks = {}
    try:
        for image in images:
            lock = ScanLock(scan_lock_path(output_dir, image.entities))
            if lock.acquire():
                locks[image.scan_id] = lock
            else:
                LOGGER.info("%s: skipped, another ichseg process works on it (%s)", image.scan_id,
                            describe_holder(lock_holder(lock.path)))
        mine = [image for image in images if image.scan_id in locks]
        return _process(args, mine, output_dir, work_dir, resources)
    finally:
        for lock in locks.values():
            lock.release()


def select_listed(images: list[CTImage], bids_dir: Path, scans_file: Path) -> list[CTImage]:
    """The images whose paths (relative to the dataset, one per line) ``scans_file`` lists."""
    try:
        listed = [line.strip() for line in Path(scans_file).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise BIDSInputError(f"--scans-file {scans_file}: cannot read it ({exc.strerror}).") from None
    root = Path(bids_dir).absolute()
    by_path = {image.path.absolute().relative_to(root).as_posix(): image for image in images}
    unknown = [rel for rel in listed if rel not in by_path]
    if unknown:
        raise BIDSInputError(
            f"--scans-file {scans_file} lists {len(unknown)} file(s) that are not selected CT images "
            f"of {root}, e.g. {unknown[0]}. List paths relative to the dataset, one per line."
        )
    return [by_path[rel] for rel in listed]


def _process(args, images: list[CTImage], output_dir: Path, work_dir: Path, resources: Resources) -> int:
    """Run the workflow over the images this process holds the locks of; record the results."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from ichseg.pipeline.workflows.base import init_ichseg_wf

    crash_root = work_dir / "crash"
    nipype_config.update_config({
        "execution": {
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "hash_method": "timestamp",
            # MultiProc looks for finished steps every poll_sleep_duration seconds (default 2);
            # measured idle time between steps per scan: about 15 s with the default, 4 s
            # with 0.5 s. One poll costs milliseconds even for thousands of nodes.
            "poll_sleep_duration": 0.2,
        },
        "monitoring": {"enabled": False},
    })
    nipype_logging.update_logging(nipype_config)
    # Nipype's own messages (tracebacks of failed steps included) only with --verbose: each
    # failed scan is summarised with its reason at the end, and its crash file is kept.
    nipype_level = logging.INFO if args.verbose > 1 else (logging.WARNING if args.verbose else logging.CRITICAL)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)

    failed = {}
    for image in images:
        if image.problem:  # known from the dataset alone: fail it now, run the others
            failed[image.scan_id] = image.problem
            write_failure_record(output_dir, image.entities, image.problem, source_file=str(image.path))
    all_images, images = images, [image for image in images if not image.problem]
    ids = [image.scan_id for image in images]
    LOGGER.info("ichseg %s: %d CT image(s) to process with model %s on %s, %s",
                __version__, len(images), args.model, args.device, resources)
    busy = busy_cpus_message(resources.n_procs)
    if busy:
        LOGGER.warning(busy)
    try:
        workflow = init_ichseg_wf(
            ct_files=[image.path for image in images],
            scan_ids=ids,
            sidecars=[image.sidecar for image in images],
            output_dir=output_dir,
            work_dir=work_dir,
            crash_dir=crash_root,
            settings=method_settings(args, resources),
        )
    except AssetError as exc:
        raise UserError(str(exc)) from None

    owned = set(ids)
    for stale in remove_stale_temporaries(output_dir, owned=lambda name: output_scan_id(name) in owned):
        LOGGER.info("removed %s, left by an interrupted run", stale)
    progress = _Progress(images)
    started = time.time()
    if images:
        plugin, plugin_args = nipype_plugin(args, resources, progress)
        try:
            workflow.run(plugin=plugin, plugin_args=plugin_args)
        except RuntimeError as exc:  # nipype raises once at the end if any node crashed
            LOGGER.debug("nipype: %s", exc)

    for image in images:
        volumes = derivative_path(output_dir, image.entities, "volumes")
        if volumes.exists() and volumes.stat().st_mtime >= started - 1:
            clear_failure_record(output_dir, image.entities)
            continue
        reason = _crash_reason(crash_root / image.scan_id, since=started) or "unknown error (see the work directory)"
        failed[image.scan_id] = reason
        write_failure_record(output_dir, image.entities, reason, source_file=str(image.path))

    elapsed = time.time() - started
    done = len(all_images) - len(failed)
    LOGGER.info("finished %d/%d scan(s) in %.0f s; outputs in %s", done, len(all_images), elapsed, output_dir)
    if failed:
        LOGGER.error("%d scan(s) failed:", len(failed))
        for sid, reason in failed.items():
            LOGGER.error("  %s: %s", sid, reason)
        return 1
    return 0


def method_settings(args, resources: Resources) -> MethodSettings:
    """The method options of the command line as the pipeline's settings object."""
    return MethodSettings(
        model=args.model, device=args.device, precision=args.precision,
        omp_nthreads=resources.omp_nthreads, transform=args.transform,
        network_input=args.network_input, margin_mm=args.margin_mm,
        hemorrhage_threshold=args.hemorrhage_threshold, hemorrhage_seed=args.hemorrhage_seed,
        ivh_margin_mm=args.ivh_margin_mm, eah_margin_mm=args.eah_margin_mm, grid_shifts=args.grid_shifts,
    )


def nipype_plugin(args, resources: Resources, progress=None) -> tuple[str, dict]:
    """Nipype plugin name and arguments from ``--nipype-plugin(-args)`` and the resources."""
    plugin = args.nipype_plugin
    plugin_args = dict(args.nipype_plugin_args or {})
    if plugin == "MultiProc":
        plugin_args.setdefault("n_procs", resources.n_procs)
        plugin_args.setdefault("raise_insufficient", False)
        if resources.mem_gb is not None:
            plugin_args.setdefault("memory_gb", resources.mem_gb)
    else:
        # Nipype's cluster plugins name their jobs after $LOGNAME, which batch systems and
        # containers do not always set.
        try:
            os.environ.setdefault("LOGNAME", getpass.getuser())
        except (KeyError, OSError):  # a uid without a passwd entry, as in containers
            os.environ.setdefault("LOGNAME", f"uid{os.getuid()}")
    if progress is not None:
        plugin_args.setdefault("status_callback", progress)
    return plugin, plugin_args


def _crash_reason(crash_dir: Path, since: float) -> str | None:
    """The error message of the newest crash file in one scan's crash folder, if any."""
    crashes = [p for p in crash_dir.glob("crash-*.txt") if p.stat().st_mtime >= since - 1]
    if not crashes:
        return None
    text = max(crashes, key=lambda p: p.stat().st_mtime).read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    # "ichseg.pipeline.checks.InputImageError: msg" -> "InputImageError: msg"
    return re.sub(r"^(?:[A-Za-z_]+\.)+", "", errors[-1] if errors else lines[-1])


class _Progress:
    """Nipype status callback that reports scans done / total and the elapsed time."""

    def __init__(self, images):
        from ichseg.pipeline.workflows.outputs import (
            SCAN_COMPLETE_NODE,  # imports Nipype
        )

        self.complete_node = SCAN_COMPLETE_NODE
        self.total = len(images)
        self.done = 0
        self.started = time.time()

    def __call__(self, node, status):
        if status == "end" and node.name == self.complete_node:
            self.done += 1
            LOGGER.info("progress: %d/%d scans done (%.0f s)", self.done, self.total, time.time() - self.started)
        elif status == "exception":
            LOGGER.warning("step %s failed (%s)", node.fullname, node.name)


def run_group(args) -> int:
    """Write the group table of every scan; return 0 (1 when some scans failed or are missing)."""
    output_dir, bids_filter = _check_inputs(args)
    try:
        path = write_group_table(output_dir, args.bids_dir, args.participant_label, bids_filter)
        report = write_group_report(output_dir)
    except (GroupLevelError, BIDSInputError) as exc:
        raise UserError(str(exc)) from None
    table = read_tsv(path)
    bad = table[table["status"] != STATUS_OK]
    LOGGER.info("group table: %s (%d scans, %d not ok); report: %s", path, len(table), len(bad), report)
    for _, row in bad.iterrows():
        LOGGER.warning("  %s: %s %s", row["source_file"], row["status"], row.get("error", ""))
    return 1 if len(bad) else 0
