"""Hematoma expansion across sessions: acquisition times, session order and the longitudinal table.

The expansion definitions live in :data:`EXPANSION_DEFINITIONS`, one row each with its
citation; a site adds its own by appending an :class:`ExpansionDefinition`. They are applied
to the IPH volume (``iph_ml``: the hematoma that these definitions measure).

Acquisition times come from the CT's JSON sidecar (``AcquisitionDateTime``, or
``AcquisitionDate`` with ``AcquisitionTime``), else from the subject's ``*_scans.tsv``
(``acq_time``). Without either, sessions are ordered by label, with a warning, and the hours
are ``n/a``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichseg.pipeline.tsv import is_missing
from ichseg.pipeline.volumes import STATUS_OK

LOGGER = logging.getLogger(__name__)

#: Volume columns compared between baseline and follow-up.
COMPARED = ("hemorrhage_ml", "iph_ml", "ivh_ml")


@dataclass(frozen=True)
class ExpansionDefinition:
    """A named rule on the baseline and follow-up IPH volumes (mL)."""

    column: str
    description: str
    citation: str
    rule: Callable[[float, float], bool]


def _relative(baseline: float, followup: float) -> float:
    return (followup - baseline) / baseline if baseline > 0 else float("inf") if followup > baseline else 0.0


EXPANSION_DEFINITIONS: list[ExpansionDefinition] = [
    ExpansionDefinition(
        "expansion_6ml_33pct",
        "Hematoma expansion: IPH growth > 6 mL or > 33 % of the baseline volume.",
        "Brouwers HB et al. Predicting hematoma expansion after primary intracerebral hemorrhage. "
        "JAMA Neurol. 2014;71(2):158-164.",
        lambda b, f: (f - b) > 6.0 or _relative(b, f) > 0.33,
    ),
    ExpansionDefinition(
        "expansion_12p5ml_1p4x",
        "Hematoma enlargement: IPH growth >= 12.5 mL or follow-up >= 1.4 times the baseline volume.",
        "Kazui S et al. Enlargement of spontaneous intracerebral hemorrhage. Incidence and time "
        "course. Stroke. 1996;27(10):1783-1787.",
        lambda b, f: (f - b) >= 12.5 or (b > 0 and f / b >= 1.4) or (b == 0 and f > 0),
    ),
    ExpansionDefinition(
        "growth_le_35pct",
        "Hemostatic efficacy criterion: IPH growth of at most 35 % of the baseline volume.",
        "Connolly SJ et al. (ANNEXA-I). Andexanet for factor Xa inhibitor-associated acute "
        "intracerebral hemorrhage. N Engl J Med. 2024;390:1745-1755.",
        lambda b, f: _relative(b, f) <= 0.35,
    ),
]


def acquisition_time(sidecar: Mapping[str, Any], scans_tsv_time: str | None = None) -> datetime | None:
    """The acquisition time of a scan from its sidecar, else from ``scans.tsv``; None if unknown."""
    candidates = [sidecar.get("AcquisitionDateTime")]
    if sidecar.get("AcquisitionDate") and sidecar.get("AcquisitionTime"):
        candidates.append(f"{sidecar['AcquisitionDate']}T{sidecar['AcquisitionTime']}")
    candidates.append(scans_tsv_time)
    for value in candidates:
        if is_missing(value):
            continue
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).replace(tzinfo=None)
        except ValueError:
            LOGGER.warning("cannot read the acquisition time %r; ignoring it", value)
    return None


def scans_tsv_times(bids_dir: Path, relpath: str) -> str | None:
    """``acq_time`` of a file in its subject's or session's ``*_scans.tsv``, if listed."""
    parts = Path(relpath).parts
    for depth in (2, 1):  # sub-X/ses-Y/..._scans.tsv, then sub-X/..._scans.tsv
        folder = bids_dir.joinpath(*parts[:depth])
        if not folder.is_dir() or (depth == 2 and not parts[1].startswith("ses-")):
            continue
        for tsv in folder.glob("*_scans.tsv"):
            try:
                table = pd.read_csv(tsv, sep="\t", dtype=str)
            except (OSError, ValueError, pd.errors.ParserError):
                LOGGER.warning("cannot read %s; ignoring it", tsv)
                continue
            if {"filename", "acq_time"} <= set(table.columns):
                inside = Path(*parts[depth:]).as_posix()
                hit = table.loc[table["filename"] == inside, "acq_time"]
                if len(hit):
                    return hit.iloc[0]
    return None


def add_times(table: pd.DataFrame, times: Mapping[int, datetime | None]) -> pd.DataFrame:
    """Add ``acq_time`` and ``hours_since_first_scan`` (per subject) to a group table."""
    table = table.copy()
    at = list(table.columns).index("error") + 1 if "error" in table else len(table.columns)
    when = pd.to_datetime(pd.Series([times.get(i) for i in table.index], index=table.index, dtype=object))
    table.insert(at, "acq_time", [t.isoformat() if pd.notna(t) else None for t in when])
    first = when.groupby(table["participant_id"]).transform("min")
    table.insert(at + 1, "hours_since_first_scan", (when - first).dt.total_seconds() / 3600)
    return table


def longitudinal_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per subject and follow-up scan, compared with the subject's first scan.

    ``table`` is the group table with ``acq_time`` and ``hours_since_first_scan``. Scans are
    ordered by acquisition time, then by session label; a scan that failed or is missing
    gives ``n/a`` and a ``reason``, never a number.
    """
    if "acq_time" not in table:  # a group table made without the dataset: no times
        table = table.assign(acq_time=None, hours_since_first_scan=np.nan)
    rows = []
    for participant, scans in table.groupby("participant_id", sort=True):
        timed = scans["acq_time"].notna().all()
        if not timed and len(scans) > 1:
            LOGGER.warning("%s: no acquisition time for every scan; sessions ordered by label", participant)
        key = ["acq_time", "session_id"] if timed else ["session_id"]
        scans = scans.sort_values(key, na_position="last", kind="stable")
        baseline = scans.iloc[0]
        for _, followup in scans.iloc[1:].iterrows():
            rows.append(_compare(participant, baseline, followup, "acq_time" if timed else "session label"))
    columns = ["participant_id", "baseline_session_id", "followup_session_id", "order_by", "hours_between",
               *[f"{p}_{c}" for c in COMPARED for p in ("baseline", "followup")],
               *[f"{c.removesuffix('_ml')}_change_{u}" for c in COMPARED for u in ("ml", "pct")],
               *[d.column for d in EXPANSION_DEFINITIONS], "reason"]
    return pd.DataFrame(rows, columns=columns)


def _compare(participant: str, baseline: pd.Series, followup: pd.Series, order_by: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "participant_id": participant,
        "baseline_session_id": baseline.get("session_id"),
        "followup_session_id": followup.get("session_id"),
        "order_by": order_by,
    }
    hours = followup.get("hours_since_first_scan", np.nan) - baseline.get("hours_since_first_scan", np.nan)
    row["hours_between"] = None if pd.isna(hours) else round(float(hours), 2)
    bad = [f"{which} scan {s.get('source_file') or s.get('session_id')} is {s['status']}"
           for which, s in (("baseline", baseline), ("follow-up", followup)) if s["status"] != STATUS_OK]
    for column in COMPARED:
        row[f"baseline_{column}"] = baseline.get(column) if not bad else None
        row[f"followup_{column}"] = followup.get(column) if not bad else None
        stem = column.removesuffix("_ml")
        if bad:
            row[f"{stem}_change_ml"] = row[f"{stem}_change_pct"] = None
            continue
        b, f = float(baseline[column]), float(followup[column])
        row[f"{stem}_change_ml"] = round(f - b, 4)
        row[f"{stem}_change_pct"] = round(100 * (f - b) / b, 2) if b > 0 else None
    for definition in EXPANSION_DEFINITIONS:
        row[definition.column] = (
            None if bad else bool(definition.rule(float(baseline["iph_ml"]), float(followup["iph_ml"]))))
    row["reason"] = "; ".join(bad) or None
    return row


def longitudinal_sidecar() -> dict[str, dict[str, str]]:
    """BIDS-style descriptions of every column of the longitudinal table."""
    sidecar = {
        "participant_id": {"Description": "Participant (sub-<label>)."},
        "baseline_session_id": {"Description": "The subject's first scan (by acquisition time, else session label)."},
        "followup_session_id": {"Description": "The later scan compared with the baseline."},
        "order_by": {"Description": "What ordered the scans: acq_time (sidecar AcquisitionDateTime or scans.tsv) or session label (no time known: hours are n/a)."},
        "hours_between": {"Description": "Hours from the baseline to the follow-up acquisition.", "Units": "h"},
        "reason": {"Description": "Why the comparison is n/a (a failed or missing scan); n/a otherwise."},
    }
    for column in COMPARED:
        stem = column.removesuffix("_ml")
        for which in ("baseline", "followup"):
            sidecar[f"{which}_{column}"] = {"Description": f"{column} of the {which} scan.", "Units": "mL"}
        sidecar[f"{stem}_change_ml"] = {"Description": f"Follow-up minus baseline {column}.", "Units": "mL"}
        sidecar[f"{stem}_change_pct"] = {"Description": f"Change of {column} relative to the baseline; n/a when the baseline is 0.", "Units": "%"}
    for definition in EXPANSION_DEFINITIONS:
        sidecar[definition.column] = {"Description": definition.description, "Citation": definition.citation}
    return sidecar
