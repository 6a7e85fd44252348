"""Visual reports: one self-contained HTML page per scan, and the group-level HTML summary.

Plain functions, independent of Nipype (the :class:`~ichseg.pipeline.interfaces.reports.ScanReport`
interface wraps them for the workflow); the figures come from :mod:`ichseg.pipeline.figures`:

* :func:`write_scan_report` -- one self-contained HTML page per scan;
* :func:`write_group_report` -- ``<output_dir>/group_report.html`` from ``group_volumes.tsv``.

These functions prepare the values (rows, cells, CSS classes); the jinja2 templates in
``pipeline/data/`` (``scan_report.html.j2``, ``group_report.html.j2``, both extending
``page.html.j2``) write and escape the HTML. Everything written into the output folder goes through :mod:`ichseg.pipeline.fileutils`
(atomic writes).
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from ichseg.pipeline import __version__
from ichseg.pipeline.figures import plot_courses, plot_group_volumes
from ichseg.pipeline.fileutils import atomic_write_text
from ichseg.pipeline.labels import (
    BRAIN_VOLUME_COLUMN,
    FOREGROUND_LABELS,
    HEMORRHAGE_INDICES,
    LABELS,
    TOTAL_HEMORRHAGE_COLUMN,
    VOLUME_COLUMNS,
)
from ichseg.pipeline.naming import GROUP_TABLE, derivative_relpath
from ichseg.pipeline.qc import (
    QC_FAIL,
    QC_PASS,
    QC_REVIEW,
    QC_RULE,
    qc_column_descriptions,
)
from ichseg.pipeline.templating import render
from ichseg.pipeline.tsv import MISSING, is_missing, is_true, read_tsv
from ichseg.pipeline.volumes import STATUS_FAILED, STATUS_OK

__all__ = [
    "FIGURE_CAPTIONS",
    "GROUP_REPORT",
    "write_group_report",
    "write_scan_report",
]

#: Name of the group report, at the top of the output folder.
GROUP_REPORT = "group_report.html"

#: Captions of the figures a scan report knows by name (others are captioned by their name).
FIGURE_CAPTIONS = {
    "segmentation": (
        "Segmentation. Axial slices of the CT on its own grid (brain window 0-80 HU), covering "
        "the brain and including the slices with the most hemorrhage. Labels are overlaid in "
        "colour; the cyan line is the brain (intracranial) mask used for the brain volume. "
        "Check that every coloured region is blood (or oedema) and that no hemorrhage is "
        "missed, especially next to the skull and in the ventricles."
    ),
    "registration": (
        "Registration to the CT template. The CT turned onto the template by the rigid "
        "registration that places the atlas regions (brain window), with the template's brain "
        "outline (red) and CSF/ventricle edges (yellow) drawn over it. The outline should follow "
        "the inner table of the skull and the yellow edges the ventricles; a shifted or rotated "
        "brain means the locations are wrong. With the default --transform translation the "
        "network saw the head as scanned, not turned (the space-scct CT of the derivatives)."
    ),
}


def _render_page(template: str, out_html: Path, title: str, nav: Sequence[tuple[str, str]], **context: Any) -> Path:
    """Render a page template (it extends ``page.html.j2``, style ``report.css``); write it atomically."""
    return atomic_write_text(out_html, render(template, title=title, nav=list(nav), version=__version__, **context))


_XML_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.IGNORECASE)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_SVG_UNSAFE = re.compile(r"<script\b|<[^>]*\son[a-z]+\s*=|<foreignObject\b", re.IGNORECASE)


def _inline_svg(text: str, prefix: str, where: str = "figure") -> str:
    """SVG text ready to be inlined in HTML: no XML prolog or metadata, ids made unique.

    matplotlib names elements ``figure_1``, ``axes_1``, ... in every SVG; with several SVGs in
    one page those ids would clash, so each id (and every reference to it) gets ``prefix``.
    """
    text = _SVG_METADATA.sub("", _XML_PROLOG.sub("", text, count=1), count=1)
    if _SVG_UNSAFE.search(text):
        raise ValueError(f"{where}: SVG with scripts or event handlers cannot be embedded.")
    text = re.sub(r'(\sid=")([^"]+")', lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", text)
    return re.sub(r'(xlink:href="#)([^"]+")', lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)


def _embed_figure(path: str | os.PathLike, alt: str, prefix: str = "fig") -> str:
    """Inline SVG text, or an <img> with a data URI for PNG/JPEG/GIF."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return _inline_svg(path.read_text(encoding="utf-8"), prefix, str(path))
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}.get(suffix)
    if mime is None:
        raise ValueError(f"{path}: figures must be SVG, PNG, JPEG or GIF.")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return str(Markup('<img alt="{}" src="data:{};base64,{}">').format(alt, mime, data))


def _id_prefix(name: str) -> str:
    return "fig-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(name))


def _fmt_number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return MISSING
    return f"{number:.{digits}f}"


def _label_by_column() -> dict[str, Any]:
    return {lab.volume_column: lab for lab in FOREGROUND_LABELS}


def _volume_rows(volumes: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the scan report's volume table: class name and colour, column, value, unit."""
    by_column = _label_by_column()
    rows = []
    for column in (c for c in VOLUME_COLUMNS if c in volumes):
        value = volumes[column]
        lab = by_column.get(column)
        row = {"column": column, "color": None, "total": column == TOTAL_HEMORRHAGE_COLUMN}
        if lab is not None:
            row.update(name=f"{lab.name} ({lab.abbreviation})", color=lab.color)
        elif column == TOTAL_HEMORRHAGE_COLUMN:
            hem = " + ".join(lab.abbreviation for lab in LABELS if lab.index in HEMORRHAGE_INDICES)
            row["name"] = f"Total hemorrhage ({hem})"
        elif column == BRAIN_VOLUME_COLUMN:
            row["name"] = "Brain (intracranial mask)"
        else:
            row["name"] = column.replace("_", " ")
        desc = metadata.get(column) if isinstance(metadata.get(column), Mapping) else {}
        row["unit"] = desc.get("Units", "mL")
        row["numeric"] = _is_number(value)
        row["value"] = _fmt_number(value, 2) if row["numeric"] else value
        rows.append(row)
    return rows


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str) or not is_missing(value)


def _fmt_measure(value: Any) -> Any:
    """A QC measure or an "About" value as shown: 3 decimals (1 from 100 on), ``n/a`` for a
    missing value (None: the volume row passes values, not the table's cells); others as they are."""
    if value is None:
        return MISSING
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and not float(value).is_integer():
        return f"{float(value):.3f}" if abs(value) < 100 else f"{float(value):.1f}"
    return value


def _describe(key: str, metadata: Mapping[str, Any]) -> str:
    """Description of a table column: from the sidecar, else from ichseg.pipeline.qc."""
    for source in (metadata.get(key), qc_column_descriptions().get(key)):
        if isinstance(source, Mapping) and source.get("Description"):
            unit = source.get("Units")
            return str(source["Description"]) + (f" ({unit})" if unit else "")
    return ""


def _source_of(metadata: Mapping[str, Any]) -> str | None:
    sources = metadata.get("Sources")
    if isinstance(sources, (list, tuple)) and sources:
        return str(sources[0])
    if isinstance(sources, str):
        return sources
    return None


def write_scan_report(
    out_html: str | os.PathLike,
    scan_id: str,
    volumes: Mapping[str, Any],
    figures: Mapping[str, str | os.PathLike],
    warnings: Sequence[str] | None = None,
    qc: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the self-contained HTML report of one scan (atomically) and return its path.

    Parameters
    ----------
    out_html : path
        The ``.html`` to write.
    scan_id : str
        Scan name shown in the title (e.g. ``sub-01_ses-1``).
    volumes : dict
        Column -> value of the scan's volume table: the volume columns (mL) go to the volume
        table, ``status`` to the summary, every other column (QC measures, ``flag_*``,
        ``n_warnings``) to the QC table. A true ``flag_*`` is also shown with the warnings.
    figures : dict
        Figure name -> file (SVG inlined; PNG/JPEG embedded as data URIs). Names in
        :data:`FIGURE_CAPTIONS` get their caption, others are captioned by their name.
    warnings : list of str
        Messages shown highlighted at the top ("No warnings" when empty).
    qc : dict
        Quality-control values (e.g. ``registration_dice``); they win over the same columns
        of ``volumes``. Descriptions come from ``metadata``, then :mod:`ichseg.pipeline.qc`.
    metadata : dict
        The volume table's JSON sidecar: ``Sources``, ``Model`` (model name, weights and
        their sha256), ``SoftwareVersions``, ``Registration`` and the column descriptions.

    The page loads nothing from elsewhere (no CSS, scripts or fonts from the network), so it
    opens offline and can be archived or mailed as one file. All text is HTML-escaped.
    """
    warnings = [str(w) for w in (warnings or [])]
    metadata = dict(metadata or {})
    volumes = dict(volumes or {})
    source = _source_of(metadata)
    # QC: the measures and flags of the volume table, then those given (which win).
    measures = {k: v for k, v in volumes.items() if k not in VOLUME_COLUMNS and k != "status"}
    measures.update(qc or {})
    raised = [k for k, v in measures.items() if k.startswith("flag_") and is_true(v)]

    model = metadata.get("Model") if isinstance(metadata.get("Model"), Mapping) else {}
    total = volumes.get(TOTAL_HEMORRHAGE_COLUMN)
    measure_rows = []
    for key, value in measures.items():
        shown = _fmt_measure(value)
        if shown is value:
            shown = _fmt_number(value, 3) if _is_number(value) else value
        measure_rows.append({"key": key, "raised": key in raised, "description": _describe(key, metadata),
                             "value": "no" if key.startswith("flag_") else shown})
    figure_rows = []
    for name, path in figures.items():
        caption = FIGURE_CAPTIONS.get(name, name)
        title, _, rest = caption.partition(". ")
        figure_rows.append({"name": name, "html": Markup(_embed_figure(path, caption, _id_prefix(name))),
                            "title": f"{title}." if rest else caption, "caption": rest})
    versions = metadata.get("SoftwareVersions")
    nav = [("warnings", "Warnings"), ("volumes", "Volumes"), ("qc", "QC"), ("figures", "Figures"),
           ("about", "About")]
    return _render_page(
        "scan_report.html.j2", Path(out_html), f"ichseg: {scan_id}", nav,
        scan_id=scan_id, source=source, status=volumes.get("status"),
        total_ml=_fmt_number(total, 1) if _is_number(total) else None, model_name=model.get("model"),
        raised=[(key, _describe(key, metadata)) for key in raised], warnings=warnings,
        volume_rows=_volume_rows(volumes, metadata), measures=measure_rows, figures=figure_rows,
        about=_about(source, model, metadata), versions=versions if isinstance(versions, Mapping) else None,
    )


#: The model's fields shown first in a scan report's "About" table, with their names there.
_MODEL_FIELDS = {"model": "Model", "weights": "Weights", "weights_sha256": "Weights sha256",
                 "n_networks": "Networks (ensemble)", "network_input": "Network input",
                 "margin_mm": "Margin around brain (mm)", "grid_shifts": "Grid shifts averaged",
                 "device": "Device",
                 "inference_seconds": "Inference time (s)"}


def _about(source: str | None, model: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The "About" table of a scan report: source, model, the sidecar's other entries, when."""
    about: dict[str, Any] = {}
    if source:
        about["Source CT"] = source
    about.update({name: model[key] for key, name in _MODEL_FIELDS.items() if key in model})
    about.update({f"Model: {key}": value for key, value in model.items() if key not in _MODEL_FIELDS})
    for key, value in metadata.items():
        if key in ("Sources", "Model", "SoftwareVersions", "Warnings") or (
            isinstance(value, Mapping) and ("Description" in value or "Units" in value)
        ):
            continue  # column descriptions are shown with the volumes
        about[key] = value
    about["Report generated"] = f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} by ichseg {__version__}"
    return {key: _fmt_measure(value) for key, value in about.items()}


# --------------------------------------------------------------------------------------------
def write_group_report(output_dir: str | os.PathLike) -> Path:
    """Write ``<output_dir>/group_report.html`` from ``group_volumes.tsv``; return its path.

    The page holds the group table, a strip plot of the volumes, and the scans that need a
    look: those with a ``flag_*`` column that is true, and those that failed or are missing
    (with their error). Each scan links to its per-scan report (a relative link, so the
    output folder can be moved or archived). Self-contained, like the scan reports.

    Raises
    ------
    FileNotFoundError
        When there is no group table (run the group level first).
    """
    import pandas as pd

    root = Path(output_dir).absolute()
    table_path = root / GROUP_TABLE
    if not table_path.is_file():
        raise FileNotFoundError(
            f"No group table {table_path}: run the group level (it writes {GROUP_TABLE}) first."
        )
    table = read_tsv(table_path, as_text=True)
    columns = list(table.columns)
    for column in VOLUME_COLUMNS:
        if column in table:
            table[column] = pd.to_numeric(table[column].where(~table[column].map(is_missing)), errors="coerce")
    # Entity columns sit between session_id and source_file (see bids_app.group).
    if "session_id" in columns and "source_file" in columns:
        entity_columns = columns[columns.index("session_id") + 1 : columns.index("source_file")]
    else:
        entity_columns = []
    flag_columns = [c for c in columns if c.startswith("flag_")]

    rows, flagged, problems = [], [], []
    for _, row in table.iterrows():
        ents: dict[str, str] = {}
        participant = str(row.get("participant_id", "")).strip()
        if participant and not is_missing(participant):
            ents["subject"] = participant.removeprefix("sub-")
        session = row.get("session_id")
        if session is not None and not is_missing(session):
            ents["session"] = str(session).strip().removeprefix("ses-")
        for name in entity_columns:
            if not is_missing(row[name]):
                ents[name] = str(row[name]).strip()
        try:
            rel = derivative_relpath(ents, "report").as_posix()
            scan = {"id": rel[: -len(".html")], "link": rel, "has_report": (root / rel).is_file()}
        except ValueError:
            scan = {"id": participant or "unknown scan", "link": None, "has_report": False}
        rows.append({"scan": scan, "cells": [_group_cell(column, row[column]) for column in columns]})
        flags = [c for c in flag_columns if is_true(row[c])]
        flagged.append(bool(flags))
        status = str(row.get("status", "")).strip()
        if flags:
            problems.append(_problem("flagged", scan, ", ".join(flags), row.get("error", "")))
        elif str(row.get("qc", "")).strip() == QC_REVIEW:
            problems.append(_problem(QC_REVIEW, scan, f"{row.get('n_warnings', '?')} input warning(s)", ""))
        if status and status.lower() != STATUS_OK:
            problem = _problem(status, scan, "", row.get("error", ""))
            if status == STATUS_FAILED:
                problem["failure_record"] = _existing_relpath(root, ents, "failure")
            problems.append(problem)
    table["_flagged"] = flagged

    distribution, courses = io.StringIO(), io.StringIO()
    status_counts = table["status"].value_counts().to_dict() if "status" in table else {}
    qc_counts = table["qc"].value_counts() if "qc" in table else None
    nav = [("attention", "Needs a look"), ("distribution", "Distribution"), ("table", "Table")]
    return _render_page(
        "group_report.html.j2", root / GROUP_REPORT, "ichseg: group report", nav,
        n_scans=len(table), table_name=GROUP_TABLE,
        status_counts=[(s, int(c)) for s, c in sorted(status_counts.items())],
        qc_counts=None if qc_counts is None else
        [(level, int(qc_counts.get(level, 0))) for level in (QC_PASS, QC_REVIEW, QC_FAIL)],
        qc_rule=QC_RULE, problems=problems, n_problem_scans=len({p["scan"]["id"] for p in problems}),
        distribution=Markup(_inline_svg(distribution.getvalue(), "distribution"))
        if plot_group_volumes(table, distribution) else None,
        courses=Markup(_inline_svg(courses.getvalue(), "courses")) if plot_courses(table, courses) else None,
        columns=columns, rows=rows, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


#: CSS class of the "Why" cell of a scan that needs a look.
_PROBLEM_CSS = {STATUS_FAILED: "status-failed", "flagged": "status-flagged", QC_REVIEW: "status-flagged"}
#: CSS class of the group table's QC rating.
_QC_CSS = {QC_PASS: "status-ok", QC_REVIEW: "status-flagged", QC_FAIL: "status-failed"}


def _problem(why: str, scan: dict[str, Any], flags: str, error: Any) -> dict[str, Any]:
    """A row of the group report's "needs a look" table."""
    return {"why": why, "scan": scan, "css": _PROBLEM_CSS.get(why, "status-missing"),
            "detail": flags or ("" if is_missing(error) else error), "failure_record": None}


def _existing_relpath(root: Path, entities: Mapping[str, str], kind: str) -> str | None:
    """The relative path of a derivative of ``kind`` when it exists in ``root``."""
    try:
        rel = derivative_relpath(entities, kind).as_posix()
    except ValueError:
        return None
    return rel if (root / rel).is_file() else None


def _group_cell(column: str, value: Any) -> dict[str, Any]:
    """A cell of the group table: its text and CSS class."""
    if column in VOLUME_COLUMNS:
        return {"value": _fmt_number(value, 2), "css": "num"}
    if column == "status":
        return {"value": value, "css": f"status-{value}"}
    if column == "qc":
        return {"value": value, "css": _QC_CSS.get(value, "")}
    return {"value": value, "css": "error" if column == "error" else ""}
