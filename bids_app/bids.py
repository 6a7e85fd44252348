"""Input side of the BIDS-App: find the head CTs of a BIDS dataset.

Head CTs are ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_<entities>]_ct.nii[.gz]``.
CT is not in the BIDS specification yet (BEP024), so the dataset is indexed by pybids without
validation (``validate=False``), which indexes files of any suffix, ``ct`` included.
Entities are read from the file names by :func:`ichseg.pipeline.naming.entities_from_path`,
the parser that also names the outputs, so a scan's entities and its derivative names always
agree.

Nothing is ever written into the dataset: the pybids index lives in memory only.

Workaround for pybids <= 0.22 (bids-standard/pybids#1270, fixed by #1273): pybids matches
entity patterns against the *absolute* path of each file, so a dataset stored under, e.g.,
``/data/sub-pilot/bids`` or ``/projects/run-2024/bids`` gets ``subject="pilot"`` or
``run=2024`` for every file, and queries by subject or run go wrong. When the dataset path
contains such a folder name, the dataset is indexed through a symbolic link with a neutral
name in a temporary folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ichseg.pipeline.checks import folder_message
from ichseg.pipeline.naming import entities_from_path, entities_sort_key, scan_id

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CT_EXTENSIONS",
    "CT_PATTERN",
    "BIDSInputError",
    "CTImage",
    "check_output_dir",
    "collect_ct_images",
    "load_bids_filter",
]

#: Extensions of head CT images.
CT_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
#: Where ichseg looks for head CTs, as told to users in error messages.
CT_PATTERN = (
    "sub-<label>/[ses-<label>/]anat/"
    "sub-<label>[_ses-<label>][_acq-<label>][_ce-<label>][_rec-<label>][_run-<index>]_ct.nii[.gz]"
)
#: The only query name of a BIDS filter file (fMRIPrep has ``t1w``, ``bold``, ...).
FILTER_QUERIES = ("ct",)
_FILTER_EXAMPLE = '{"ct": {"acquisition": "axial", "reconstruction": "soft"}}'
# Query arguments a filter must not change: they define what a head CT is, or they are
# options of pybids' get() rather than filters.
_FORBIDDEN_FILTER_KEYS = frozenset(
    {"suffix", "datatype", "return_type", "target", "scope", "regex_search", "invalid_filters"}
)
_DESCRIPTION_EXAMPLE = '{"Name": "My head CT study", "BIDSVersion": "1.10.0"}'


class BIDSInputError(Exception):
    """The input dataset or the options that select from it cannot be used (message says why)."""


@dataclass(frozen=True)
class CTImage:
    """One head CT of the input dataset.

    ``entities`` holds the entities of the file name present (``subject``, ``session``,
    ``acquisition``, ``reconstruction``, ``run``, ...) as strings exactly as written, plus
    ``suffix`` (``"ct"``) and ``extension``. ``sidecar`` is the JSON metadata merged along
    the BIDS inheritance principle (``{}`` when there is none). ``problem`` says why the scan
    cannot be processed when that is known from the dataset alone (a sidecar that is not
    valid JSON, a folder in place of the image): the scan fails with it, the others run.
    """

    path: Path
    entities: dict[str, str]
    sidecar: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def __hash__(self) -> int:  # dict fields are not hashable; the path identifies the image
        return hash(self.path)

    @property
    def subject(self) -> str:
        """Participant label, without ``sub-``."""
        return self.entities["subject"]

    @property
    def session(self) -> str | None:
        """Session label without ``ses-``, or ``None``."""
        return self.entities.get("session")

    @property
    def scan_id(self) -> str:
        """Unique id of the scan, e.g. ``sub-01_ses-1_run-2`` (see ``naming.scan_id``)."""
        return scan_id(self.entities)


def normalize_labels(labels: str | Iterable[str] | None, prefix: str) -> list[str] | None:
    """Accept ``"01"``, ``"sub-01"`` or a list of them; return bare labels (``None`` = all)."""
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [labels]
    out = []
    for label in labels:
        label = str(label).strip()
        if label.startswith(prefix):
            label = label[len(prefix) :]
        if not label:
            raise BIDSInputError(f"Empty label given for '{prefix}<label>'.")
        if label not in out:
            out.append(label)
    return out or None


def _check_dataset(bids_dir: str | os.PathLike) -> Path:
    """Return the absolute dataset root, or raise if it is not a usable BIDS dataset."""
    root = Path(bids_dir).expanduser().absolute()
    if not root.exists():
        raise BIDSInputError(
            f"The BIDS dataset folder {root} does not exist. Check the path (with Docker or "
            "Apptainer, the folder must also be mounted into the container)."
        )
    if not root.is_dir():
        raise BIDSInputError(f"The BIDS dataset path {root} is a file; give the dataset's folder.")
    description = root / "dataset_description.json"
    if not description.is_file():
        raise BIDSInputError(
            f"{root} is not a BIDS dataset: {description.name} is missing. If this is the "
            f"right folder, add {description} with at least {_DESCRIPTION_EXAMPLE}."
        )
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BIDSInputError(
            f"{description} is not valid JSON ({err}). Fix it; a minimal one is "
            f"{_DESCRIPTION_EXAMPLE}."
        ) from None
    if not isinstance(content, dict):
        raise BIDSInputError(
            f"{description} must hold a JSON object, such as {_DESCRIPTION_EXAMPLE}."
        )
    return root


def _ancestor_entities(path: Path) -> dict:
    """Entities pybids would read from the folders of ``path`` itself (pybids#1270)."""
    from bids.layout import parse_file_entities

    return parse_file_entities(f"{path}/x", config=["bids", "derivatives"])


#: Folders pybids does not index (besides derivatives/ and dot-files), as relative paths.
_NOT_INDEXED = ("code", "models", "sourcedata", "stimuli", "derivatives")


@dataclass(frozen=True)
class _DatasetProblems:
    """What pybids cannot index: CT sidecars that are not valid JSON ``{relpath: message}``
    and folders named like CT images."""

    bad_sidecars: dict[str, str]
    ct_folders: list[str]


def _scan_dataset(root: Path) -> _DatasetProblems:
    """Find CT sidecars that are not valid JSON and folders named ``*_ct.nii[.gz]``."""
    bad, folders = {}, []
    for folder, dirnames, filenames in os.walk(root):
        rel = Path(folder).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in _NOT_INDEXED]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        folders += [(rel / d).as_posix() for d in dirnames if d.endswith(tuple(f"_ct{e}" for e in CT_EXTENSIONS))]
        for name in filenames:
            if not (name == "ct.json" or name.endswith("_ct.json")):
                continue
            path = Path(folder) / name
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
                problem = None if isinstance(content, dict) else "does not hold a JSON object"
            except json.JSONDecodeError as err:
                problem = f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
            except (OSError, UnicodeDecodeError) as err:
                problem = f"cannot be read as UTF-8 text ({err})"
            if problem:
                bad[(rel / name).as_posix()] = (
                    f"its JSON sidecar {path} {problem}. Fix the file (check it with "
                    f"`python -m json.tool {path}`) or remove it, then run this scan again."
                )
    return _DatasetProblems(bad, sorted(folders))


def _short_entities(name: str) -> dict[str, str]:
    """``sub-01_ses-1_ct.json`` -> ``{"sub": "01", "ses": "1"}`` (key-value parts of a name).

    Not :func:`~ichseg.pipeline.naming.entities_from_path`: inherited sidecars such as a
    top-level ``ct.json`` or ``acq-axial_ct.json`` have no ``sub-`` and are refused there."""
    stem = name.split(".")[0]
    return dict(part.split("-", 1) for part in stem.split("_") if "-" in part)


def _sidecar_problem(ct_relpath: str, bad_sidecars: Mapping[str, str]) -> str | None:
    """The problem of a bad sidecar that applies to a CT by the BIDS inheritance principle:
    in the CT's folder or above it, with entities that the CT's name also has."""
    ct = Path(ct_relpath)
    ct_entities = _short_entities(ct.name).items()
    for relpath, problem in bad_sidecars.items():
        sidecar = Path(relpath)
        if sidecar.parent in (ct.parent, *ct.parent.parents) and _short_entities(sidecar.name).items() <= ct_entities:
            return problem
    return None


@contextmanager
def _layout(root: Path, skip: Iterable[str] = ()) -> Iterator[Any]:
    """Yield an in-memory pybids layout of ``root`` whose entities come from inside it only;
    ``skip`` lists files (relative paths) that pybids must not index."""
    import re

    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    tmpdir = None
    index_root = root
    polluted = _ancestor_entities(root)
    if polluted:
        LOGGER.debug("Indexing %s through a link: its path looks like %s", root, polluted)
        tmpdir = Path(tempfile.mkdtemp(prefix="ichsegbids"))
        index_root = tmpdir / "bids"
        os.symlink(root, index_root, target_is_directory=True)
    try:
        if tmpdir is not None and _ancestor_entities(index_root):
            raise BIDSInputError(
                f"pybids would read BIDS entities from the folder names of {root} and of the "
                f"temporary folder {tmpdir} ({polluted}). Set TMPDIR to a folder whose path "
                "has no BIDS-like names (sub-*, ses-*, run-*, anat, ...), or move the dataset."
            )
        # validate=False: CT is not in the BIDS schema, so validation would drop every CT.
        # Metadata are indexed for CT files only (the filter), which keeps large mixed
        # datasets fast. No database_path: the index stays in memory, nothing is written.
        ignore = [*DEFAULT_LOCATIONS_TO_IGNORE, *(re.compile(f"^/{re.escape(r)}$") for r in skip)]
        indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=True, suffix="ct")
        try:
            layout = BIDSLayout(str(index_root), validate=False, indexer=indexer)
        except OSError as err:  # pybids reports an unreadable JSON sidecar as an OSError
            raise BIDSInputError(
                f"pybids could not index {root}: {err}. Fix or remove the file it names."
            ) from err
        yield layout
    finally:
        if tmpdir is not None:
            index_root.unlink(missing_ok=True)
            tmpdir.rmdir()


def _pybids_filter(query: Mapping[str, Any]) -> dict[str, Any]:
    """Translate fMRIPrep-style filter values: ``null`` -> Query.NONE, ``"*"`` -> Query.ANY."""
    from bids.layout import Query

    out = {}
    for key, value in query.items():
        if value is None:
            value = Query.NONE
        elif value == "*":
            value = Query.ANY
        out[key] = value
    return out


def _check_filter(bids_filter: Any, origin: str) -> dict[str, dict[str, Any]]:
    """Check the structure of a BIDS filter; return it as ``{"ct": {...}}``."""
    hint = f"A valid filter looks like {_FILTER_EXAMPLE}."
    if not isinstance(bids_filter, Mapping):
        raise BIDSInputError(f"{origin} must be a JSON object. {hint}")
    unknown = sorted(set(bids_filter) - set(FILTER_QUERIES))
    if unknown:
        raise BIDSInputError(
            f"{origin} has unknown key(s) {', '.join(map(repr, unknown))}; ichseg only reads "
            f"'ct' (filters for head CTs). {hint}"
        )
    query = bids_filter.get("ct", {})
    if not isinstance(query, Mapping):
        raise BIDSInputError(f"In {origin}, 'ct' must be a JSON object of entities. {hint}")
    forbidden = sorted(set(query) & _FORBIDDEN_FILTER_KEYS)
    if forbidden:
        raise BIDSInputError(
            f"In {origin}, 'ct' must not set {', '.join(map(repr, forbidden))}: head CTs are "
            f"always *_ct.nii[.gz] files in anat/. {hint}"
        )
    query = dict(query)
    if "extension" in query:
        exts = query["extension"]
        exts = [exts] if isinstance(exts, str) else list(exts)
        exts = [e if e.startswith(".") else f".{e}" for e in map(str, exts)]
        if not exts or set(exts) - set(CT_EXTENSIONS):
            raise BIDSInputError(
                f"In {origin}, 'extension' must be among {', '.join(CT_EXTENSIONS)}; got {exts}."
            )
        query["extension"] = exts
    return {"ct": query}


def load_bids_filter(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a BIDS filter file (fMRIPrep's ``--bids-filter-file``) and check its structure.

    The file holds ``{"ct": {<entity>: <value>, ...}}``: extra pybids query arguments for the
    head CTs. ``null`` selects files without the entity, ``"*"`` files with any value.
    """
    path = Path(path)
    if not path.is_file():
        raise BIDSInputError(f"The BIDS filter file {path} does not exist or is not a file.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BIDSInputError(
            f"The BIDS filter file {path} is not valid JSON: {err.msg} at line {err.lineno}, "
            f"column {err.colno}. A valid filter looks like {_FILTER_EXAMPLE}."
        ) from None
    except UnicodeDecodeError as err:
        raise BIDSInputError(f"The BIDS filter file {path} is not UTF-8 text ({err}).") from None
    return _check_filter(content, f"The BIDS filter file {path}")


def collect_ct_images(
    bids_dir: str | os.PathLike,
    participant_label: str | Iterable[str] | None = None,
    session_label: str | Iterable[str] | None = None,
    bids_filter: Mapping[str, Any] | None = None,
) -> list[CTImage]:
    """Find the head CTs of a BIDS dataset, sorted by participant, session and entities.

    Parameters
    ----------
    bids_dir
        Root of the BIDS dataset (with ``dataset_description.json``).
    participant_label, session_label
        Labels to keep, with or without ``sub-``/``ses-``; a string or a list; ``None`` keeps
        all. They take precedence over ``subject``/``session`` in ``bids_filter``.
    bids_filter
        ``{"ct": {...}}`` extra pybids query arguments (see :func:`load_bids_filter`).

    Raises
    ------
    BIDSInputError
        The dataset is missing or not BIDS, a label is unknown, the filter is invalid, a CT
        file name is invalid or ambiguous, or no CT matches.
    """
    root = _check_dataset(bids_dir)
    subjects = normalize_labels(participant_label, "sub-")
    sessions = normalize_labels(session_label, "ses-")
    ct_filter = _check_filter(bids_filter or {}, "bids_filter")["ct"]

    query: dict[str, Any] = {"datatype": "anat", "suffix": "ct", "extension": list(CT_EXTENSIONS)}
    query.update(_pybids_filter(ct_filter))
    problems = _scan_dataset(root)
    for relpath in problems.bad_sidecars:
        LOGGER.warning("%s is not valid JSON: the CTs it describes will fail", root / relpath)
    with _layout(root, problems.bad_sidecars) as layout:
        if subjects is not None:
            _check_known(subjects, layout.get_subjects(), "participant", root)
            query["subject"] = subjects
        if sessions is not None:
            scope = {"subject": subjects} if subjects else {}
            _check_known(sessions, layout.get_sessions(**scope), "session", root)
            query["session"] = sessions
        try:
            files = layout.get(return_type="object", **query)
        except ValueError as err:  # pybids: unknown entity in the filter
            raise BIDSInputError(f"Invalid bids_filter {ct_filter!r}: {err}") from None
        images = [_ct_image(root, bf.relpath, layout.get_metadata(bf.path), problems.bad_sidecars)
                  for bf in files]
        images += _folder_images(root, problems.ct_folders, subjects, sessions, ct_filter)
        if not images:
            others = layout.get(suffix="ct", return_type="object")
            raise BIDSInputError(_no_ct_message(root, subjects, sessions, ct_filter, others))
    images.sort(key=lambda img: entities_sort_key(img.entities))
    _check_unique(images, root)
    images = [
        # a DataLad/git-annex link whose content is not there
        replace(img, problem=f"{img.path} is a broken link. If this is a DataLad dataset, fetch the "
                f"images first (datalad get {img.path.relative_to(root).parent}).")
        if not img.path.exists() and img.problem is None else img
        for img in images
    ]
    LOGGER.info("Found %d head CT image(s) in %s.", len(images), root)
    return images


def _ct_image(root: Path, relpath: str, metadata: Mapping, bad_sidecars: Mapping[str, str]) -> CTImage:
    problem = _sidecar_problem(relpath, bad_sidecars)
    path = root / relpath
    return CTImage(path=path, entities=_entities_of(root, Path(relpath)),
                   sidecar={} if problem else dict(metadata),
                   problem=f"{path}: {problem}" if problem else None)


def _folder_images(root: Path, folders: list[str], subjects, sessions, ct_filter: Mapping) -> list[CTImage]:
    """Folders named like CT images, as scans that fail with that message (same selection
    by participant, session and the filter's plain entity values as the CT files)."""
    images = []
    for relpath in folders:
        try:
            entities = _entities_of(root, Path(relpath))
        except BIDSInputError as err:
            LOGGER.warning("ignoring the folder %s: %s", root / relpath, err)
            continue
        wanted = [(subjects, entities.get("subject")), (sessions, entities.get("session"))]
        wanted += [([v] if isinstance(v, str) else None, entities.get(k)) for k, v in ct_filter.items()]
        if any(labels is not None and value not in labels for labels, value in wanted):
            continue
        path = root / relpath
        images.append(CTImage(path=path, entities=entities, problem=folder_message(path)))
    return images


def _check_known(labels: list[str], available: list[str], what: str, root: Path) -> None:
    prefix = "sub-" if what == "participant" else "ses-"
    unknown = [label for label in labels if label not in available]
    if unknown:
        listing = ", ".join(sorted(available)) if available else "none"
        raise BIDSInputError(
            f"Unknown {what} label(s) {', '.join(unknown)}: {root} has no "
            f"{prefix}{unknown[0]}. Available {what}s: {listing}."
        )


def _entities_of(root: Path, relpath: Path) -> dict[str, str]:
    """Entities of a CT file name, checked against its folders (``sub-X/[ses-Y/]anat``)."""
    try:
        entities = entities_from_path(relpath)
    except ValueError as err:
        raise BIDSInputError(
            f"Cannot use {root / relpath}: {err} Rename the file or remove it."
        ) from None
    expected = Path(f"sub-{entities['subject']}")
    if "session" in entities:
        expected /= f"ses-{entities['session']}"
    if relpath.parent != expected / "anat":
        raise BIDSInputError(
            f"{root / relpath} is in the wrong folder for its name: it should be in "
            f"{expected / 'anat'}/. Move or rename it."
        )
    return entities


def _check_unique(images: list[CTImage], root: Path) -> None:
    """Two CTs with the same entities (``.nii`` and ``.nii.gz``) would share their outputs."""
    seen: dict[str, CTImage] = {}
    for img in images:
        other = seen.setdefault(img.scan_id, img)
        if other is not img:
            raise BIDSInputError(
                f"{other.path.relative_to(root)} and {img.path.relative_to(root)} are the same "
                "scan for BIDS (same entities) and would write the same outputs. Remove one, "
                'or select one with a BIDS filter such as {"ct": {"extension": ".nii.gz"}}.'
            )


def _no_ct_message(root, subjects, sessions, ct_filter, others) -> str:
    selection = []
    if subjects:
        selection.append(f"participant(s) {', '.join(subjects)}")
    if sessions:
        selection.append(f"session(s) {', '.join(sessions)}")
    if ct_filter:
        selection.append(f"bids_filter {ct_filter!r}")
    msg = f"No head CT images found in {root}"
    msg += f" for {', '.join(selection)}" if selection else ""
    msg += f". ichseg looks for {CT_PATTERN}."
    if others:
        names = sorted(bf.relpath for bf in others)
        msg += (
            " These files have the 'ct' suffix but are not where or what ichseg expects: "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}."
        )
    return msg


def check_output_dir(bids_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Refuse an output folder that would write into the input dataset; return it absolute.

    ``output_dir`` may not be ``bids_dir`` nor lie inside it, except in a subfolder of
    ``bids_dir/derivatives/`` (the BIDS place for derivatives, which pybids skips when
    indexing the inputs).
    """
    bids = Path(bids_dir).expanduser().absolute()
    out = Path(output_dir).expanduser().absolute()
    # Resolve symbolic links so that a link cannot hide that both are the same folder.
    bids_real, out_real = bids.resolve(), out.resolve()
    derivatives = bids_real / "derivatives"
    if out_real == bids_real or bids_real in out_real.parents:
        if derivatives not in out_real.parents:
            raise BIDSInputError(
                f"The output folder {out} is {'the' if out_real == bids_real else 'inside the'} "
                f"input BIDS dataset {bids}. ichseg never writes into its input: choose a "
                f"folder outside the dataset, or {bids / 'derivatives' / 'ichseg'}."
            )
    if out.exists() and not out.is_dir():
        raise BIDSInputError(f"The output path {out} exists and is not a folder.")
    return out
