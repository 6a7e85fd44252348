"""Visual reports: one self-contained HTML page per scan, and the group-level HTML summary.

Plain functions, independent of Nipype (the :class:`~ichseg.pipeline.interfaces.reports.ScanReport`
interface wraps them for the workflow); the figures come from :mod:`ichseg.pipeline.figures`:

* :func:`write_scan_report` -- one self-contained HTML page per scan;
* :func:`write_group_report` -- ``<output_dir>/group_report.html`` from ``group_volumes.tsv``.

Everything written into the output folder goes through :mod:`ichseg.pipeline.fileutils`
(atomic writes).
"""

from __future__ import annotations

import base64
import html
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
from ichseg.pipeline.qc import (
    QC_FAIL,
    QC_PASS,
    QC_REVIEW,
    QC_RULE,
    qc_column_descriptions,
)
from ichseg.pipeline.templating import render
from ichseg.pipeline.volumes import STATUS_OK

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
        "Registration to the CT template. The CT resampled to template space (brain window), "
        "with the template's brain outline (red) and CSF/ventricle edges (yellow) drawn over "
        "it. The outline should follow the inner table of the skull and the yellow edges the "
        "ventricles; a shifted or rotated brain means the segmentation ran on a misaligned "
        "image."
    ),
}

# HTML
# --------------------------------------------------------------------------------------------



_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_MISSING = frozenset({"", "n/a", "nan", "na", "none"})


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in _TRUE


def _missing(value: Any) -> bool:
    return value is None or str(value).strip().lower() in _MISSING


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, nav: Sequence[tuple[str, str]], body: str) -> str:
    """A whole page (template ``page.html.j2``, style ``report.css``) around ``body`` (HTML)."""
    return render("page.html.j2", title=title, nav=list(nav), body=Markup(body), version=__version__)


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
    return f'<img alt="{_e(alt)}" src="data:{mime};base64,{data}">'


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
        return "n/a"
    return f"{number:.{digits}f}"


def _label_by_column() -> dict[str, Any]:
    return {lab.volume_column: lab for lab in FOREGROUND_LABELS}


def _volume_table(volumes: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    by_column = _label_by_column()
    rows = []
    columns = [c for c in VOLUME_COLUMNS if c in volumes]
    for column in columns:
        value = volumes[column]
        lab = by_column.get(column)
        css = ""
        if lab is not None:
            swatch = f'<span class="swatch" style="background:{_e(lab.color)}"></span>'
            name = f"{swatch}{_e(lab.name)} ({_e(lab.abbreviation)})"
        elif column == TOTAL_HEMORRHAGE_COLUMN:
            hem = " + ".join(lab.abbreviation for lab in LABELS if lab.index in HEMORRHAGE_INDICES)
            name = f"Total hemorrhage ({_e(hem)})"
            css = ' class="total"'
        elif column == BRAIN_VOLUME_COLUMN:
            name = "Brain (intracranial mask)"
        else:
            name = _e(column.replace("_", " "))
        desc = metadata.get(column, {}) if isinstance(metadata.get(column), Mapping) else {}
        unit = desc.get("Units", "mL" if column in VOLUME_COLUMNS else "")
        is_num = _is_number(value)
        shown = _e(_fmt_number(value, 2)) if is_num else _e(value)
        cell = '<td class="num">' if is_num else "<td>"
        rows.append(
            f"<tr{css}><td>{name}</td><td><code>{_e(column)}</code></td>"
            f"{cell}{shown}</td><td>{_e(unit)}</td></tr>"
        )
    if not rows:
        return '<p class="muted">No volumes were given.</p>'
    return (
        "<table><thead><tr><th>Class</th><th>Column</th><th>Value</th><th>Unit</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str) or value.strip().lower() not in ("", "n/a", "nan")


def _kv_table(items: Mapping[str, Any], descriptions: Mapping[str, str] | None = None) -> str:
    descriptions = descriptions or {}
    rows = []
    for key, value in items.items():
        if isinstance(value, (list, tuple)):
            shown = "<br>".join(f"<code>{_e(v)}</code>" for v in value) or "&ndash;"
        elif isinstance(value, Mapping):
            shown = "<br>".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in value.items()) or "&ndash;"
        elif isinstance(value, (float, np.floating)) and not float(value).is_integer():
            shown = _e(_fmt_number(value, 3) if abs(value) < 100 else _fmt_number(value, 1))
        else:
            shown = _e(value)
        desc = descriptions.get(key)
        desc_cell = f'<td class="muted">{_e(desc)}</td>' if descriptions else ""
        rows.append(f"<tr><th>{_e(key)}</th><td>{shown}</td>{desc_cell}</tr>")
    return f"<table><tbody>{''.join(rows)}</tbody></table>"


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
    raised = [k for k, v in measures.items() if k.startswith("flag_") and _truthy(v)]

    parts = [f"<h1>Hemorrhage segmentation report: {_e(scan_id)}</h1>"]
    if source:
        parts.append(f'<p class="sub">Source CT: <code>{_e(source)}</code></p>')
    model = metadata.get("Model") if isinstance(metadata.get("Model"), Mapping) else {}
    status = volumes.get("status")
    summary = []
    if status is not None:
        summary.append(f"status <b>{_e(status)}</b>")
    total = volumes.get(TOTAL_HEMORRHAGE_COLUMN)
    if _is_number(total):
        summary.append(f"total hemorrhage <b>{_e(_fmt_number(total, 1))} mL</b>")
    if model.get("model"):
        summary.append(f"model <code>{_e(model['model'])}</code>")
    summary.append(
        f'<b class="status-failed">{len(raised)} QC flag{"s" if len(raised) != 1 else ""}</b>'
        if raised else "no QC flag"
    )
    summary.append(f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}")
    if summary:
        parts.append(f'<p class="sub">{" &middot; ".join(summary)}</p>')

    parts.append('<h2 id="warnings">Warnings</h2>')
    if raised:
        items = "".join(
            f"<li><code>{_e(k)}</code>: {_e(_describe(k, metadata) or 'raised')}</li>" for k in raised
        )
        parts.append(
            f'<div class="box bad"><b>{len(raised)} QC flag{"s" if len(raised) != 1 else ""} '
            f'raised</b><ul class="warnings">{items}</ul></div>'
        )
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        parts.append(
            f'<div class="box warning"><b>{len(warnings)} warning{"s" if len(warnings) != 1 else ""}'
            f'</b><ul class="warnings">{items}</ul></div>'
        )
    else:
        parts.append('<div class="box ok">No warnings.</div>')

    parts.append('<h2 id="volumes">Volumes</h2>')
    parts.append(_volume_table(volumes, metadata))
    parts.append(
        '<p class="muted">Volumes are computed on the scan\'s own grid. Total hemorrhage '
        "excludes perilesional oedema.</p>"
    )

    parts.append('<h2 id="qc">Quality control</h2>')
    if measures:
        rows = []
        for key, value in measures.items():
            if key.startswith("flag_"):
                shown = '<b class="status-failed">yes</b>' if _truthy(value) else "no"
            elif isinstance(value, (float, np.floating)) and math.isfinite(value) and not float(value).is_integer():
                shown = _e(f"{float(value):.3f}" if abs(value) < 100 else f"{float(value):.1f}")
            else:
                shown = _e(_fmt_number(value, 3) if _is_number(value) else value)
            rows.append(
                f"<tr><th><code>{_e(key)}</code></th><td class=\"num\">{shown}</td>"
                f'<td class="muted">{_e(_describe(key, metadata))}</td></tr>'
            )
        parts.append(f"<table><tbody>{''.join(rows)}</tbody></table>")
    else:
        parts.append('<p class="muted">No quality-control values were given.</p>')

    parts.append('<h2 id="figures">Figures</h2>')
    if not figures:
        parts.append('<p class="muted">No figures.</p>')
    for name, path in figures.items():
        caption = FIGURE_CAPTIONS.get(name, name)
        title, _, rest = caption.partition(". ")
        caption_html = f"<b>{_e(title)}.</b> {_e(rest)}" if rest else f"<b>{_e(caption)}</b>"
        parts.append(
            f'<figure id="figure-{_e(name)}">{_embed_figure(path, caption, _id_prefix(name))}'
            f"<figcaption>{caption_html}</figcaption></figure>"
        )

    parts.append('<h2 id="about">About</h2>')
    about: dict[str, Any] = {}
    if source:
        about["Source CT"] = source
    for key in ("model", "weights", "weights_sha256", "n_networks", "network_input", "margin_mm", "device",
                "inference_seconds"):
        if key in model:
            about[{"model": "Model", "weights": "Weights", "weights_sha256": "Weights sha256",
                   "n_networks": "Networks (ensemble)", "network_input": "Network input",
                   "margin_mm": "Margin around brain (mm)", "device": "Device",
                   "inference_seconds": "Inference time (s)"}[key]] = model[key]
    for key, value in model.items():
        if key not in ("model", "weights", "weights_sha256", "n_networks", "network_input", "margin_mm",
                       "device", "inference_seconds"):
            about[f"Model: {key}"] = value
    for key, value in metadata.items():
        if key in ("Sources", "Model", "SoftwareVersions", "Warnings") or (
            isinstance(value, Mapping) and ("Description" in value or "Units" in value)
        ):
            continue  # column descriptions are shown with the volumes
        about[key] = value
    about["Report generated"] = (
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} by ichseg {__version__}"
    )
    parts.append(_kv_table(about))
    versions = metadata.get("SoftwareVersions")
    if isinstance(versions, Mapping) and versions:
        parts.append("<h3>Software versions</h3>")
        parts.append(_kv_table(versions))

    nav = [("warnings", "Warnings"), ("volumes", "Volumes"), ("qc", "QC"), ("figures", "Figures"),
           ("about", "About")]
    text = _page(f"ichseg: {scan_id}", nav, "\n".join(parts))
    return atomic_write_text(out_html, text)


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

    from ichseg.pipeline.naming import GROUP_TABLE, derivative_relpath

    root = Path(output_dir).absolute()
    table_path = root / GROUP_TABLE
    if not table_path.is_file():
        raise FileNotFoundError(
            f"No group table {table_path}: run the group level (it writes {GROUP_TABLE}) first."
        )
    table = pd.read_csv(table_path, sep="\t", dtype=str, keep_default_na=False)
    columns = list(table.columns)
    for column in VOLUME_COLUMNS:
        if column in table:
            table[column] = pd.to_numeric(table[column].where(~table[column].map(_missing)), errors="coerce")
    # Entity columns sit between session_id and source_file (see bids_app.group).
    if "session_id" in columns and "source_file" in columns:
        entity_columns = columns[columns.index("session_id") + 1 : columns.index("source_file")]
    else:
        entity_columns = []
    flag_columns = [c for c in columns if c.startswith("flag_")]

    scans, links, flagged, problems = [], [], [], []
    for _, row in table.iterrows():  # problems: (why, scan id, report link, flags, error, entities)
        ents: dict[str, str] = {}
        participant = str(row.get("participant_id", "")).strip()
        if participant and not _missing(participant):
            ents["subject"] = participant.removeprefix("sub-")
        session = row.get("session_id")
        if session is not None and not _missing(session):
            ents["session"] = str(session).strip().removeprefix("ses-")
        for name in entity_columns:
            if not _missing(row[name]):
                ents[name] = str(row[name]).strip()
        try:
            rel = derivative_relpath(ents, "report").as_posix()
            sid = rel[: -len(".html")]
        except ValueError:
            rel, sid = None, participant or "unknown scan"
        scans.append(sid)
        links.append(rel)
        flags = [c for c in flag_columns if _truthy(row[c])]
        flagged.append(bool(flags))
        status = str(row.get("status", "")).strip()
        if flags:
            problems.append(("flagged", sid, rel, ", ".join(flags), row.get("error", ""), ents))
        elif str(row.get("qc", "")).strip() == QC_REVIEW:
            problems.append((QC_REVIEW, sid, rel, f"{row.get('n_warnings', '?')} input warning(s)", "", ents))
        if status and status.lower() != STATUS_OK:
            problems.append((status, sid, rel, "", row.get("error", ""), ents))
    table["_flagged"] = flagged

    def link(sid: str, rel: str | None) -> str:
        if rel is None:
            return _e(sid)
        note = "" if (root / rel).is_file() else ' <span class="muted">(no report)</span>'
        return f'<a href="{_e(rel)}">{_e(sid)}</a>{note}'

    n = len(table)
    status_counts = table["status"].value_counts().to_dict() if "status" in table else {}
    parts = ["<h1>Hemorrhage segmentation: group report</h1>"]
    parts.append(
        f'<p class="sub">{n} scan{"s" if n != 1 else ""} in <code>{_e(table_path.name)}</code>: '
        + ", ".join(f'<span class="status-{_e(s)}">{int(c)} {_e(s)}</span>' for s, c in sorted(status_counts.items()))
        + "</p>"
    )
    if "qc" in table:
        qc_counts = table["qc"].value_counts()
        parts.append(
            '<p class="sub">QC rating (column <code>qc</code>): '
            + ", ".join(f"{int(qc_counts.get(level, 0))} {level}" for level in (QC_PASS, QC_REVIEW, QC_FAIL))
            + f'. <span class="muted">{_e(QC_RULE)}</span></p>'
        )

    parts.append('<h2 id="attention">Scans that need a look</h2>')
    if problems:
        rows = []
        for kind, sid, rel, flags, error, ents in problems:
            css = {"failed": "status-failed", "flagged": "status-flagged", QC_REVIEW: "status-flagged"}.get(kind, "status-missing")
            detail = _e(flags) if flags else ("" if _missing(error) else _e(error))
            failure = ""
            if kind == "failed":
                try:
                    log = derivative_relpath(ents, "failure").as_posix()
                    if (root / log).is_file():
                        failure = f' <a href="{_e(log)}">failure record</a>'
                except ValueError:
                    pass
            rows.append(
                f'<tr><td>{link(sid, rel)}</td><td class="{css}">{_e(kind)}</td>'
                f"<td>{detail}{failure}</td></tr>"
            )
        parts.append(
            '<div class="box bad"><b>' + str(len({p[1] for p in problems}))
            + " scan(s) flagged, failed or missing.</b></div>"
            "<table><thead><tr><th>Scan</th><th>Why</th><th>Details</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    else:
        parts.append('<div class="box ok">No scan is flagged, failed or missing.</div>')

    parts.append('<h2 id="distribution">Volume distribution</h2>')
    buffer = io.StringIO()
    if plot_group_volumes(table, buffer):
        svg = _inline_svg(buffer.getvalue(), "distribution")
        parts.append(
            f'<figure id="figure-distribution" class="plot">{svg}<figcaption><b>Volumes of the scans '
            "with results.</b> One dot per scan (jittered vertically); the grey bar spans the "
            "quartiles and the black tick marks the median (5 scans or more). Red rings: scans "
            "with a QC flag.</figcaption></figure>"
        )
    else:
        parts.append('<p class="muted">No scan has volumes yet.</p>')

    buffer = io.StringIO()
    if plot_courses(table, buffer):
        parts.append('<h2 id="courses">Volumes across sessions</h2>')
        svg = _inline_svg(buffer.getvalue(), "courses")
        parts.append(
            f'<figure id="figure-courses" class="plot">{svg}<figcaption><b>Each subject with more '
            "than one scan:</b> total hemorrhage, IPH and IVH over the hours since the first scan "
            "(by session order where the times are unknown). Expansion by the named definitions is "
            "in <code>group_longitudinal.tsv</code>.</figcaption></figure>"
        )

    parts.append('<h2 id="table">Group table</h2>')
    head = "".join(f"<th>{_e(c)}</th>" for c in ["scan", *columns])
    body_rows = []
    for i, (_, row) in enumerate(table.iterrows()):
        cells = [f"<td>{link(scans[i], links[i])}</td>"]
        for column in columns:
            value = row[column]
            if column in VOLUME_COLUMNS:
                cells.append(f'<td class="num">{_e(_fmt_number(value, 2))}</td>')
            elif column == "status":
                cells.append(f'<td class="status-{_e(value)}">{_e(value)}</td>')
            elif column == "qc":
                css = {QC_PASS: "status-ok", QC_REVIEW: "status-flagged", QC_FAIL: "status-failed"}.get(value, "")
                cells.append(f'<td class="{css}">{_e(value)}</td>')
            elif column == "error":
                cells.append(f'<td class="error">{_e(value)}</td>')
            else:
                cells.append(f"<td>{_e(value)}</td>")
        body_rows.append(f"<tr>{''.join(cells)}</tr>")
    parts.append(
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body_rows)}'
        "</tbody></table></div>"
    )
    parts.append(
        f'<p class="muted">Generated {_e(datetime.now(timezone.utc).isoformat(timespec="seconds"))} '
        f"by ichseg {_e(__version__)} from <code>{_e(GROUP_TABLE)}</code>.</p>"
    )
    nav = [("attention", "Needs a look"), ("distribution", "Distribution"), ("table", "Table")]
    text = _page("ichseg: group report", nav, "\n".join(parts))
    return atomic_write_text(root / GROUP_REPORT, text)

