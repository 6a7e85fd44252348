"""Group level: gather the per-scan volume tables into one table for statistics.

The participant level writes, for each scan, a single-row ``*_volumes.tsv`` (kind
``volumes``) with the volume columns of :data:`ichseg.pipeline.labels.VOLUME_COLUMNS` (mL),
``status`` and any quality-control columns; or, when the scan failed, a failure record
(kind ``failure``, ``{"error": "<message>"}``, see :func:`write_failure_record`).

The group table (``<output_dir>/group_volumes.tsv`` + ``group_volumes.json``) has one row per
scan and the columns, in this order: ``participant_id``, ``session_id``, the other entities
of the source CTs (``acquisition``, ``run``, ...; only those some scan has), ``source_file``,
the volume columns, ``status``, ``error``, then the extra columns of the per-scan tables.
``status`` is ``ok`` (volumes written), ``failed`` (failure record) or ``missing`` (an input CT
without any result, only known when the BIDS dataset is given). When a scan has both a
volume table and a failure record, the newer file wins: it tells the outcome of the last run.
Missing values are ``n/a`` (BIDS); read the table with
``pandas.read_csv(path, sep="\\t", na_values="n/a")`` or
``read.delim(path, na.strings = "n/a")`` in R.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ichseg.bids_app.bids import collect_ct_images
from ichseg.bids_app.longitudinal import (
    acquisition_time,
    add_times,
    longitudinal_sidecar,
    longitudinal_table,
    scans_tsv_times,
)
from ichseg.pipeline.fileutils import atomic_write_text
from ichseg.pipeline.labels import VOLUME_COLUMNS, volume_column_descriptions
from ichseg.pipeline.naming import (
    ENTITIES,
    GROUP_TABLE,
    LONGITUDINAL_TABLE,
    derivative_path,
    entities_sort_key,
    find_derivatives,
    scan_id,
)
from ichseg.pipeline.qc import QC_FAIL
from ichseg.pipeline.tsv import MISSING, read_tsv
from ichseg.pipeline.volumes import STATUS_FAILED, STATUS_MISSING, STATUS_OK

LOGGER = logging.getLogger(__name__)

__all__ = [
    "GroupLevelError",
    "build_group_table",
    "clear_failure_record",
    "read_failure",
    "group_table_sidecar",
    "write_failure_record",
    "write_group_table",
]

_STATUS_LEVELS = {
    STATUS_OK: "Volumes were computed.",
    STATUS_FAILED: "The participant level failed on this scan; see the error column.",
    STATUS_MISSING: "The input CT has no result yet (not run, or the run was interrupted).",
}
_ENTITY_COLUMNS = [e.name for e in ENTITIES if e.name not in ("subject", "session")]
_FIXED_COLUMNS = frozenset({"participant_id", "session_id", "source_file", "status", "error"})


class GroupLevelError(Exception):
    """The group table cannot be built (the message says why and what to do)."""


def write_failure_record(
    output_dir: str | os.PathLike,
    source_entities: Mapping[str, Any] | str | os.PathLike,
    error: BaseException | str,
    **extra: Any,
) -> Path:
    """Record that a scan failed (kind ``failure``); the group level reports the message.

    ``extra`` items (JSON-serialisable) are stored too, e.g. ``crashfile=...``.
    """
    if isinstance(error, BaseException):
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        message = str(error)
    record = {
        "error": message,
        "scan": scan_id(source_entities),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    path = derivative_path(output_dir, source_entities, "failure")
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def clear_failure_record(
    output_dir: str | os.PathLike, source_entities: Mapping[str, Any] | str | os.PathLike
) -> None:
    """Remove a scan's failure record (call when the scan succeeds on a rerun)."""
    derivative_path(output_dir, source_entities, "failure").unlink(missing_ok=True)


def _read_volumes(path: Path) -> dict[str, Any]:
    """The single row of a per-scan volume table, as a dict (``n/a`` -> missing)."""
    table = read_tsv(path)
    if len(table) != 1:
        raise ValueError(f"it has {len(table)} rows instead of 1")
    return {k: v for k, v in table.iloc[0].items() if not pd.isna(v)}


def read_failure(path: Path) -> str:
    """The error message of a failure record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"unreadable failure record {path.name} ({err})"
    if isinstance(record, dict) and record.get("error"):
        return str(record["error"])
    return f"failure record {path.name} has no error message"


def last_outcome(volumes: Path | None, failure: Path | None) -> tuple[str, Path] | None:
    """How the last run of a scan ended, from its result files that exist: ``(STATUS_OK,
    volume table)``, ``(STATUS_FAILED, failure record)``, or None when it has neither.

    Both exist after a failed rerun of a scan that once succeeded (or the reverse, if the
    failure record was not cleared): the newer one tells how the last run ended.
    """
    volumes = volumes if volumes is not None and volumes.exists() else None
    failure = failure if failure is not None and failure.exists() else None
    if volumes is not None and failure is not None:
        if volumes.stat().st_mtime > failure.stat().st_mtime:
            failure = None
        else:
            volumes = None
    if failure is not None:
        return STATUS_FAILED, failure
    return (STATUS_OK, volumes) if volumes is not None else None


def _result_row(vol: Path | None, fail: Path | None) -> dict[str, Any]:
    """Status, error, volumes and extra columns of one scan from its result files."""
    outcome = last_outcome(vol, fail)
    if outcome is None:
        return {"status": STATUS_MISSING}
    status, path = outcome
    if status == STATUS_FAILED:
        return {"status": STATUS_FAILED, "error": read_failure(path)}
    vol = path
    try:
        values = _read_volumes(vol)
    except Exception as err:  # a broken table must not hide the other scans
        return {"status": STATUS_FAILED, "error": f"unreadable volume table {vol.name} ({err})"}
    values.setdefault("status", STATUS_OK)
    return values


def _normalize_subjects(labels: str | Iterable[str] | None) -> list[str] | None:
    if labels is None:
        return None
    labels = [labels] if isinstance(labels, str) else list(labels)
    return [str(lab).strip().removeprefix("sub-") for lab in labels] or None


def build_group_table(
    output_dir: str | os.PathLike,
    bids_dir: str | os.PathLike | None = None,
    participant_label: str | Iterable[str] | None = None,
    bids_filter: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per scan with entities, source file, volumes (mL), status and extra columns.

    Without ``bids_dir``, the rows are the scans with a result in ``output_dir``. With it,
    the rows are the CTs of the dataset selected by ``participant_label`` and
    ``bids_filter`` (as for the participant level), so scans without results show up as
    ``missing``; results of scans outside that selection are left out.
    """
    out = Path(output_dir).absolute()
    if not out.is_dir():
        raise GroupLevelError(
            f"The output folder {out} does not exist. Run the participant level first."
        )
    volumes = {scan_id(ents): (ents, path) for ents, path in find_derivatives(out, "volumes")}
    failures = {scan_id(ents): (ents, path) for ents, path in find_derivatives(out, "failure")}

    scans: list[tuple[dict[str, str], Any]] = []  # (entities, source_file)
    times: dict[str, Any] = {}  # scan id -> acquisition time (with the dataset only)
    if bids_dir is not None:
        root = Path(bids_dir).expanduser().absolute()
        for img in collect_ct_images(root, participant_label, bids_filter=bids_filter):
            relpath = img.path.relative_to(root).as_posix()
            scans.append((img.entities, relpath))
            times[scan_id(img.entities)] = acquisition_time(img.sidecar, scans_tsv_times(root, relpath))
        left_out = (set(volumes) | set(failures)) - {scan_id(ents) for ents, _ in scans}
        if left_out:
            LOGGER.warning(
                "%d scan(s) with results in %s are not among the selected input CTs and are "
                "left out of the group table: %s",
                len(left_out),
                out,
                ", ".join(sorted(left_out)[:10]),
            )
    else:
        found = {**{k: v[0] for k, v in failures.items()}, **{k: v[0] for k, v in volumes.items()}}
        subjects = _normalize_subjects(participant_label)
        if subjects is not None:
            available = sorted({ents["subject"] for ents in found.values()})
            unknown = [s for s in subjects if s not in available]
            if unknown:
                raise GroupLevelError(
                    f"No results for participant(s) {', '.join(unknown)} in {out}. "
                    f"Participants with results: {', '.join(available) or 'none'}."
                )
            found = {k: v for k, v in found.items() if v["subject"] in subjects}
        scans = [(ents, None) for ents in found.values()]
    if not scans:
        raise GroupLevelError(
            f"No per-scan results (*_volumes.tsv or failure records) in {out}. Run the "
            "participant level first, or give the BIDS dataset to list the scans not run yet."
        )
    scans.sort(key=lambda item: entities_sort_key(item[0]))

    entity_columns = [name for name in _ENTITY_COLUMNS if any(ents.get(name) for ents, _ in scans)]
    # Columns the group level fills itself; a per-scan table cannot override them.
    reserved = _FIXED_COLUMNS | set(entity_columns)
    rows, extras = [], []
    for ents, source_file in scans:
        key = scan_id(ents)
        result = _result_row(volumes.get(key, (None, None))[1], failures.get(key, (None, None))[1])
        row: dict[str, Any] = {
            "participant_id": f"sub-{ents['subject']}",
            "session_id": f"ses-{ents['session']}" if ents.get("session") else None,
        }
        row.update({name: ents[name] for name in entity_columns if ents.get(name)})
        # Without the dataset, a per-scan table may say where its input was.
        row["source_file"] = source_file if source_file is not None else result.get("source_file")
        for name, value in result.items():
            if name in ("status", "error") or name not in reserved:
                row[name] = value
            if name not in reserved and name not in VOLUME_COLUMNS and name not in extras:
                extras.append(name)
        rows.append(row)

    columns = [
        "participant_id",
        "session_id",
        *entity_columns,
        "source_file",
        *VOLUME_COLUMNS,
        "status",
        "error",
        *extras,
    ]
    table = pd.DataFrame(rows, columns=columns)
    if bids_dir is not None:
        table = add_times(table, {i: times.get(scan_id(ents)) for i, (ents, _) in enumerate(scans)})
    if "qc" in table.columns:  # a scan without volumes has nothing to pass or review
        table.loc[table["status"] != STATUS_OK, "qc"] = QC_FAIL
    for col in VOLUME_COLUMNS:
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    return table


def group_table_sidecar(table: pd.DataFrame, output_dir: str | os.PathLike | None = None) -> dict:
    """BIDS JSON sidecar describing every column of a group table.

    Extra columns are described from the per-scan ``*_volumes.json`` sidecars in
    ``output_dir`` when one describes them, generically otherwise.
    """
    known: dict[str, Any] = {
        "participant_id": {"Description": "Participant (sub-<label>) of the source CT."},
        "session_id": {
            "Description": "Session (ses-<label>) of the source CT; n/a without sessions."
        },
        "source_file": {
            "Description": "Source CT, relative to the input BIDS dataset; n/a when the group "
            "level ran without the dataset."
        },
        **volume_column_descriptions(),
        "status": {"Description": "Outcome of the participant level.", "Levels": _STATUS_LEVELS},
        "error": {"Description": "Error message of a failed scan; n/a otherwise."},
        "acq_time": {"Description": "Acquisition date and time of the CT (sidecar AcquisitionDateTime, "
                     "or the subject's scans.tsv acq_time); n/a when unknown."},
        "hours_since_first_scan": {"Description": "Hours since the subject's first scan.", "Units": "h"},
    }
    entities = {
        entity.name: {"Description": f"BIDS '{entity.key}' entity of the source CT; n/a if absent."}
        for entity in ENTITIES
    }
    per_scan: dict[str, Any] = {}
    if output_dir is not None:
        for _, path in find_derivatives(output_dir, "volumes_json"):
            try:
                sidecar = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(sidecar, dict):
                for col, desc in sidecar.items():
                    if isinstance(desc, dict):
                        per_scan.setdefault(col, desc)
    generic = {
        "Description": "Carried over unchanged from the per-scan volume tables (*_volumes.tsv)."
    }
    # A per-scan sidecar may describe a QC column whose name is also an entity name.
    return {
        col: known.get(col) or per_scan.get(col) or entities.get(col) or generic
        for col in table.columns
    }


_UNSAFE = re.compile(r"[\t\r\n]+")


def _tsv_text(table: pd.DataFrame) -> str:
    """Tab-separated text with ``n/a`` for missing values, readable by pandas and R as is."""

    def clean(value: Any) -> Any:
        # Free text (error messages) must not break the format: no tabs or line breaks, and
        # no double quotes, which pandas and R read as the start of a quoted field.
        if isinstance(value, str):
            return _UNSAFE.sub(" ", value).replace('"', "'").strip()
        return value

    table = table.copy()
    for col in table.columns:
        if not pd.api.types.is_numeric_dtype(table[col]):
            table[col] = table[col].map(clean, na_action="ignore")
    buffer = io.StringIO()
    table.to_csv(
        buffer, sep="\t", na_rep=MISSING, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n"
    )
    return buffer.getvalue()


def write_group_table(
    output_dir: str | os.PathLike,
    bids_dir: str | os.PathLike | None = None,
    participant_label: str | Iterable[str] | None = None,
    bids_filter: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``group_volumes.tsv`` and its JSON sidecar to ``output_dir``; return the TSV path.

    Arguments as for :func:`build_group_table`. Both files are written atomically.
    """
    table = build_group_table(output_dir, bids_dir, participant_label, bids_filter)
    path = Path(output_dir).absolute() / GROUP_TABLE
    sidecar = group_table_sidecar(table, output_dir)
    atomic_write_text(path, _tsv_text(table))
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    if "session_id" in table and table.groupby("participant_id").size().max() > 1:
        longitudinal = path.with_name(LONGITUDINAL_TABLE)
        atomic_write_text(longitudinal, _tsv_text(longitudinal_table(table)))
        atomic_write_text(longitudinal.with_suffix(".json"), json.dumps(longitudinal_sidecar(), indent=2) + "\n")
        LOGGER.info("Wrote %s.", longitudinal)
    counts = table["status"].value_counts().to_dict()
    LOGGER.info(
        "Wrote %s: %d scan(s) (%s).",
        path,
        len(table),
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
    )
    return path
