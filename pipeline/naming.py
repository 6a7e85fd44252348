"""BIDS derivative naming: the one place that decides where every ichseg output goes.

Every output of a scan is named after its source CT: all entities of the source file name are
kept (``sub``, ``ses``, ``acq``, ``ce``, ``rec``, ``run``, ... in BIDS order), the source
suffix ``ct`` is dropped, and the entities, suffix and extension of the output *kind* are
added. The kinds are listed in :data:`DERIVATIVES`. For the source
``sub-01/ses-1/anat/sub-01_ses-1_run-2_ct.nii.gz``:

================== ==========================================================================
kind               path, relative to the output directory
================== ==========================================================================
brain_mask         ``sub-01/ses-1/anat/sub-01_ses-1_run-2_desc-brain_mask.nii.gz``
dseg               ``sub-01/ses-1/anat/sub-01_ses-1_run-2_dseg.nii.gz``
dseg_tsv           ``sub-01/ses-1/anat/sub-01_ses-1_run-2_dseg.tsv``
hemorrhage_probseg ``sub-01/ses-1/anat/sub-01_ses-1_run-2_label-hemorrhage_probseg.nii.gz``
template_ct        ``sub-01/ses-1/anat/sub-01_ses-1_run-2_space-scct_desc-preproc_ct.nii.gz``
template_dseg      ``sub-01/ses-1/anat/sub-01_ses-1_run-2_space-scct_dseg.nii.gz``
xfm                ``sub-01/ses-1/anat/sub-01_ses-1_run-2_from-ct_to-scct_mode-image_xfm.mat``
volumes            ``sub-01/ses-1/anat/sub-01_ses-1_run-2_volumes.tsv``
volumes_json       ``sub-01/ses-1/anat/sub-01_ses-1_run-2_volumes.json``
report             ``sub-01_ses-1_run-2.html``
figure             ``sub-01/figures/sub-01_ses-1_run-2_desc-<desc>_ct.svg`` (``desc`` required)
failure            ``sub-01/log/sub-01_ses-1_run-2_desc-failed_log.json``
================== ==========================================================================

Reports follow the nipreps convention (fMRIPrep writes ``<output_dir>/sub-XX.html`` and puts
its figures in ``<output_dir>/sub-XX/figures/``), with one report per scan instead of one per
subject: each head CT is an independent exam, and a per-scan report needs no step that
gathers the scans of a subject, so scans can run in parallel and be rerun one by one. The
HTML sits at the top of the output directory so that its links to ``sub-XX/figures/`` are
plain relative paths. Failure records (``failure``) go to ``sub-XX/log/`` like nipreps logs,
outside the ``anat`` folders that hold only images and tables.

``from``/``to``/``mode`` (transforms) are not in the BIDS schema yet; they follow the nipreps
usage (``sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``) and come after all
source entities. ``scct`` is the space of the CT template.

Entity dictionaries use the long entity names of pybids (``subject``, ``session``,
``acquisition``, ``ceagent``, ``reconstruction``, ``run``, ...) with string values exactly as
written in the file name (``run-02`` stays ``"02"``), so that derivative names reproduce the
source names character for character.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ichseg.pipeline.labels import hemorrhage_probability_metadata, label_map_metadata

__all__ = [
    "GROUP_TABLE",
    "LONGITUDINAL_TABLE",
    "DERIVATIVES",
    "ENTITIES",
    "DerivativeSpec",
    "Entity",
    "derivative_path",
    "derivative_relpath",
    "entities_from_path",
    "entities_sort_key",
    "find_derivatives",
    "sidecar_path",
    "source_uri",
    "output_scan_id",
    "scan_id",
    "scan_lock_path",
]


@dataclass(frozen=True)
class Entity:
    """One BIDS entity: pybids key, key in file names, and value format."""

    name: str  # long name, as used by pybids (``acquisition``)
    key: str  # short name, as written in file names (``acq``)
    format: str  # "label" (alphanumeric) or "index" (digits)


#: BIDS entities in the order of the BIDS schema (``rules.entities``). Names are those of
#: pybids where pybids knows the entity (``inv``, ``mt``, ``proc``, ``hemi``, ``res``,
#: ``den``, ``desc``, ``staining``), the schema names otherwise. ``from``, ``to`` and
#: ``mode`` are not in the schema: they are placed after the entities a source file can have.
ENTITIES: tuple[Entity, ...] = (
    Entity("subject", "sub", "label"),
    Entity("template", "tpl", "label"),
    Entity("session", "ses", "label"),
    Entity("cohort", "cohort", "label"),
    Entity("sample", "sample", "label"),
    Entity("task", "task", "label"),
    Entity("tracksys", "tracksys", "label"),
    Entity("acquisition", "acq", "label"),
    Entity("nucleus", "nuc", "label"),
    Entity("volume", "voi", "label"),
    Entity("ceagent", "ce", "label"),
    Entity("tracer", "trc", "label"),
    Entity("staining", "stain", "label"),
    Entity("reconstruction", "rec", "label"),
    Entity("direction", "dir", "label"),
    Entity("run", "run", "index"),
    Entity("modality", "mod", "label"),
    Entity("echo", "echo", "index"),
    Entity("flip", "flip", "index"),
    Entity("inv", "inv", "index"),
    Entity("mt", "mt", "label"),
    Entity("part", "part", "label"),
    Entity("proc", "proc", "label"),
    Entity("hemi", "hemi", "label"),
    Entity("space", "space", "label"),
    Entity("split", "split", "index"),
    Entity("recording", "recording", "label"),
    Entity("chunk", "chunk", "index"),
    Entity("from", "from", "label"),
    Entity("to", "to", "label"),
    Entity("mode", "mode", "label"),
    Entity("atlas", "atlas", "label"),
    Entity("segmentation", "seg", "label"),
    Entity("scale", "scale", "label"),
    Entity("res", "res", "label"),
    Entity("den", "den", "label"),
    Entity("label", "label", "label"),
    Entity("desc", "desc", "label"),
)

_BY_NAME: dict[str, Entity] = {ent.name: ent for ent in ENTITIES}
_BY_KEY: dict[str, Entity] = {ent.key: ent for ent in ENTITIES}
_ORDER: dict[str, int] = {ent.name: i for i, ent in enumerate(ENTITIES)}
_VALUE_PATTERNS = {"label": re.compile(r"[A-Za-z0-9]+"), "index": re.compile(r"[0-9]+")}
_SUFFIX_PATTERN = re.compile(r"[A-Za-z0-9]+")

#: Entities that only derivatives carry. A source CT never has them, so when a derivative
#: name is parsed back, they tell one kind from another (``_dseg`` vs ``_space-scct_dseg``).
DERIVATIVE_ENTITIES = frozenset(
    {"space", "from", "to", "mode", "atlas", "segmentation", "res", "den", "label", "desc"}
)

#: Keys of an entity dict that are not part of a scan's identity.
_NON_IDENTITY = frozenset({"suffix", "extension", "datatype"})

#: Name under which the input dataset is linked (``DatasetLinks``) in BIDS URIs.
SOURCE_DATASET = "raw"

#: The group level's tables, at the top of the output directory.
GROUP_TABLE = "group_volumes.tsv"
LONGITUDINAL_TABLE = "group_longitudinal.tsv"

#: Name of the CT template space in derivative names (``space-scct``).
TEMPLATE_SPACE = "scct"


@dataclass(frozen=True)
class DerivativeSpec:
    """How one kind of output is named.

    ``folder`` is ``"anat"`` (``sub-X/[ses-Y/]anat/``), ``"figures"`` (``sub-X/figures/``),
    ``"log"`` (``sub-X/log/``) or ``""`` (top of the output directory). ``suffix`` may be
    ``None`` for names made of entities only (the HTML report). ``required`` lists entities
    the caller must give (``desc`` of a figure).
    """

    suffix: str | None
    extension: str
    entities: Mapping[str, str] = field(default_factory=dict)
    folder: str = "anat"
    required: tuple[str, ...] = ()
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # Read-only, so that no caller can rename a kind for everyone else by accident.
        object.__setattr__(self, "entities", MappingProxyType(dict(self.entities)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def has_sidecar(self) -> bool:
        """NIfTI derivatives get a JSON sidecar (``Sources``, ``Description``, labels)."""
        return self.extension in (".nii", ".nii.gz")


#: Every kind of output of ichseg, by name. Use :func:`derivative_path` to get a path.
DERIVATIVES: Mapping[str, DerivativeSpec] = MappingProxyType(
    {
        "brain_mask": DerivativeSpec(
            "mask", ".nii.gz", {"desc": "brain"}, description="Brain (intracranial) mask.",
            metadata={"Type": "Brain"},
        ),
        "dseg": DerivativeSpec("dseg", ".nii.gz", description="Label map in the CT's space.",
                               metadata=label_map_metadata()),
        "dseg_tsv": DerivativeSpec("dseg", ".tsv", description="Label table of the dseg."),
        "hemorrhage_probseg": DerivativeSpec(
            "probseg", ".nii.gz", {"label": "hemorrhage"}, description="Hemorrhage probability.",
            metadata=hemorrhage_probability_metadata(),
        ),
        "template_ct": DerivativeSpec(
            "ct",
            ".nii.gz",
            {"space": TEMPLATE_SPACE, "desc": "preproc"},
            description="CT resampled to the CT template.",
        ),
        "template_dseg": DerivativeSpec(
            "dseg", ".nii.gz", {"space": TEMPLATE_SPACE}, description="Label map in template space.",
            metadata=label_map_metadata(),
        ),
        "xfm": DerivativeSpec(
            "xfm",
            ".mat",
            {"from": "ct", "to": TEMPLATE_SPACE, "mode": "image"},
            description="Affine transform from the CT to the template (ANTs).",
        ),
        "volumes": DerivativeSpec("volumes", ".tsv", description="Per-scan volume table (mL)."),
        "regions": DerivativeSpec(
            "regions", ".tsv", description="IPH and total hemorrhage (mL) per region of the atlas."
        ),
        "volumes_json": DerivativeSpec(
            "volumes", ".json", description="Sidecar of the per-scan volume table."
        ),
        "report": DerivativeSpec(None, ".html", folder="", description="Visual report."),
        "figure": DerivativeSpec(
            "ct", ".svg", folder="figures", required=("desc",), description="Report figure."
        ),
        "failure": DerivativeSpec(
            "log",
            ".json",
            {"desc": "failed"},
            folder="log",
            description='Failure record of a scan: {"error": "<message>"}.',
        ),
    }
)

EntitiesOrPath = Mapping[str, object] | str | os.PathLike


def entities_from_path(path: str | os.PathLike) -> dict[str, str]:
    """Parse the entities, suffix and extension of a BIDS file name.

    Only the file name is read, never the folders above it (pybids reads folder names too,
    so a dataset stored under ``/data/sub-pilot/`` would get ``subject="pilot"``). Values are
    strings as written (``run-02`` gives ``"02"``); keys follow :data:`ENTITIES`.

    >>> entities_from_path("sub-01/ses-1/anat/sub-01_ses-1_run-02_ct.nii.gz")
    {'subject': '01', 'session': '1', 'run': '02', 'suffix': 'ct', 'extension': '.nii.gz'}

    Raises
    ------
    ValueError
        If the name is not ``sub-<label>[_<key>-<value>...]_<suffix><extension>`` with known
        BIDS entities (the message names the file and the offending part).
    """
    name = Path(path).name
    base, dot, rest = name.partition(".")
    extension = dot + rest
    parts = base.split("_")
    suffix = parts.pop() if len(parts) > 1 or "-" not in base else ""
    where = f"{name!r} is not a valid BIDS file name"
    if not suffix or not _SUFFIX_PATTERN.fullmatch(suffix):
        raise ValueError(f"{where}: it must end with _<suffix><extension>, as in sub-01_ct.nii.gz.")
    found: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("-")
        entity = _BY_KEY.get(key)
        if not sep or entity is None:
            raise ValueError(
                f"{where}: {part!r} is not a BIDS entity (<key>-<value> with a known key "
                f"such as sub, ses, acq, ce, rec, run)."
            )
        if entity.name in found:
            raise ValueError(f"{where}: entity {key!r} appears twice.")
        _check_value(entity, value, where)
        found[entity.name] = value
    if "subject" not in found:
        raise ValueError(f"{where}: it must start with sub-<label>.")
    ordered = {k: found[k] for k in sorted(found, key=_ORDER.__getitem__)}
    ordered["suffix"] = suffix
    ordered["extension"] = extension
    return ordered


def _check_value(entity: Entity, value: str, where: str) -> None:
    if not _VALUE_PATTERNS[entity.format].fullmatch(value):
        kind = "digits" if entity.format == "index" else "letters and digits"
        raise ValueError(f"{where}: {entity.key}-{value!r} must be {kind} only.")


def _identity(source: EntitiesOrPath) -> dict[str, str]:
    """Entities that identify a scan (no suffix/extension/datatype), as strings, validated."""
    if not isinstance(source, Mapping):
        source = entities_from_path(source)
    found: dict[str, str] = {}
    for name, value in source.items():
        if name in _NON_IDENTITY or value is None:
            continue
        entity = _BY_NAME.get(name)
        if entity is None:
            raise ValueError(
                f"Unknown BIDS entity {name!r}; known entities are: "
                f"{', '.join(e.name for e in ENTITIES)}."
            )
        value = str(value)
        _check_value(entity, value, f"entities {dict(source)!r}")
        found[name] = value
    if "subject" not in found:
        raise ValueError(f"Entities {dict(source)!r} have no 'subject'.")
    return found


def _join(entities: Mapping[str, str]) -> str:
    names = sorted(entities, key=_ORDER.__getitem__)
    return "_".join(f"{_BY_NAME[n].key}-{entities[n]}" for n in names)


def scan_id(entities: EntitiesOrPath) -> str:
    """Unique, filesystem-safe id of a scan, e.g. ``sub-01_ses-1_run-2``.

    Made of the scan's entities in BIDS order (suffix and extension dropped), so it only
    contains letters, digits, ``-`` and ``_``: usable in file names, logs and nipype
    workflow names. Accepts an entity dict or a path.
    """
    return _join(_identity(entities))


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a derivative file (``x_dseg.nii.gz`` -> ``x_dseg.json``)."""
    path = Path(path)
    name = path.name
    for extension in (".nii.gz", ".nii"):
        if name.endswith(extension):
            return path.with_name(name[: -len(extension)] + ".json")
    return path.with_suffix(".json")


def source_uri(source_file: str | os.PathLike) -> str:
    """BIDS URI of a source CT in the input dataset, ``bids:raw:sub-01/anat/sub-01_ct.nii.gz``
    (``raw`` is a ``DatasetLinks`` key of the derivatives' ``dataset_description.json``)."""
    path = Path(source_file)
    subject = f"sub-{entities_from_path(path.name)['subject']}"
    folders = [i for i, part in enumerate(path.parts[:-1]) if part == subject]
    relative = Path(*path.parts[folders[-1]:]) if folders else Path(path.name)
    return f"bids:{SOURCE_DATASET}:{relative.as_posix()}"


def scan_lock_path(output_dir: str | os.PathLike, source_entities: EntitiesOrPath) -> Path:
    """Hidden lock file of one scan, ``sub-X/log/.<scan_id>.lock`` (see ``bids_app.scanlock``)."""
    ents = _identity(source_entities)
    return Path(output_dir).absolute() / f"sub-{ents['subject']}" / "log" / f".{_join(ents)}.lock"


def output_scan_id(name: str) -> str | None:
    """Scan id of the source of an output file name, or None when the name is not ichseg's.

    >>> output_scan_id("sub-01_ses-1_space-scct_desc-preproc_ct.nii.gz")
    'sub-01_ses-1'
    """
    if name.endswith(".html"):  # the report has entities only: give the parser a suffix
        name = name[: -len(".html")] + "_report.html"
    try:
        ents = entities_from_path(name)
    except ValueError:
        return None
    return _join({k: v for k, v in _identity(ents).items() if k not in DERIVATIVE_ENTITIES})


def entities_sort_key(entities: Mapping[str, object]) -> tuple:
    """Sort key for entity dicts: BIDS entity order, numbers compared as numbers.

    A missing entity sorts before any value, so ``sub-01_ct`` comes before ``sub-01_run-1_ct``.
    """
    key = []
    for entity in ENTITIES:
        value = entities.get(entity.name)
        if value is None:
            key.append((0, 0, ""))
        elif entity.format == "index" and str(value).isdigit():
            key.append((1, int(value), str(value)))
        else:
            key.append((1, 0, str(value)))
    return tuple(key)


def derivative_relpath(source_entities: EntitiesOrPath, kind: str, **entities: str | None) -> Path:
    """Path of output ``kind`` for a source CT, relative to the output directory.

    ``source_entities`` is an entity dict (as in ``CTImage.entities``) or the source path.
    Keyword ``entities`` add to or override those of the kind (``desc="overlay"`` for a
    figure); ``None`` removes one.
    """
    try:
        spec = DERIVATIVES[kind]
    except KeyError:
        raise ValueError(
            f"Unknown derivative kind {kind!r}; choose one of: {', '.join(DERIVATIVES)}."
        ) from None
    ents = _identity(source_entities)
    ents.update(spec.entities)
    ents.update(entities)
    ents = _identity({k: v for k, v in ents.items() if v is not None})
    missing = [name for name in spec.required if name not in ents]
    if missing:
        raise ValueError(f"Derivative kind {kind!r} needs the entities: {', '.join(missing)}.")

    name = _join(ents)
    if spec.suffix is not None:
        name += f"_{spec.suffix}"
    name += spec.extension

    subject = f"sub-{ents['subject']}"
    if spec.folder == "anat":
        folder = Path(subject)
        if "session" in ents:
            folder /= f"ses-{ents['session']}"
        folder /= "anat"
    elif spec.folder in ("figures", "log"):
        folder = Path(subject, spec.folder)
    else:
        folder = Path()
    return folder / name


def derivative_path(
    output_dir: str | os.PathLike,
    source_entities: EntitiesOrPath,
    kind: str,
    **entities: str | None,
) -> Path:
    """Absolute path of output ``kind`` for a source CT (see :func:`derivative_relpath`)."""
    return Path(output_dir).absolute() / derivative_relpath(source_entities, kind, **entities)


def find_derivatives(output_dir: str | os.PathLike, kind: str) -> list[tuple[dict[str, str], Path]]:
    """Find the existing outputs of one kind in ``output_dir``.

    Returns ``(source_entities, path)`` pairs sorted by scan, where ``source_entities`` are
    the entities of the source CT (those of the kind removed; ``suffix``/``extension`` not
    included). Only files whose name :func:`derivative_path` would produce are returned, so
    ``_dseg`` never picks up ``_space-scct_dseg``; hidden (temporary) files are skipped.
    """
    spec = DERIVATIVES[kind]
    root = Path(output_dir).absolute()
    folder = {
        "anat": ("sub-*/anat", "sub-*/ses-*/anat"),
        "figures": ("sub-*/figures",),
        "log": ("sub-*/log",),
        "": (".",),
    }[spec.folder]
    ending = (f"_{spec.suffix}" if spec.suffix else "") + spec.extension
    found = []
    for pattern in folder:
        for path in root.glob(f"{pattern}/sub-*{ending}"):
            if not path.is_file():
                continue
            # The report has no suffix: parse it as if it had one so that the parser can tell
            # entities from suffix, then drop that placeholder.
            name = path.name if spec.suffix else path.name[: -len(ending)] + "_report" + ending
            try:
                ents = _identity(entities_from_path(name))
            except ValueError:
                continue
            if any(ents.get(k) != v for k, v in spec.entities.items()):
                continue
            source = {k: v for k, v in ents.items() if k not in spec.entities}
            extra = {k: source.pop(k) for k in list(source) if k in DERIVATIVE_ENTITIES}
            if set(extra) - set(spec.required):
                continue
            if derivative_path(root, source, kind, **extra) != path:
                continue
            found.append((source, path))
    found.sort(key=lambda pair: entities_sort_key(pair[0]))
    return found
