"""The ``dataset_description.json`` of ichseg's derivatives (BIDS derivative dataset)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ichseg.pipeline.fileutils import atomic_write_text
from ichseg.pipeline.naming import SOURCE_DATASET

LOGGER = logging.getLogger(__name__)

__all__ = [
    "BIDS_VERSION",
    "HOW_TO_ACKNOWLEDGE",
    "derivatives_description",
    "write_derivatives_description",
]

#: Version of the BIDS specification the derivatives follow.
BIDS_VERSION = "1.10.0"
#: Environment variable a container image sets to its own name, e.g.
#: ``docker://ichseg/ichseg:0.1.0`` (``<type>://<tag>``) or just ``ichseg/ichseg:0.1.0``.
CONTAINER_ENV = "ICHSEG_CONTAINER"

HOW_TO_ACKNOWLEDGE = (
    "Please cite the segmentation models ichseg uses: "
    "(1) Monteiro M, Newcombe VFJ, Mathieu F, et al. Multiclass semantic segmentation and "
    "quantification of traumatic brain injury lesions on head CT using deep learning: an "
    "algorithm development and multicentre validation study. Lancet Digit Health. "
    "2020;2(6):e314-e322. doi:10.1016/S2589-7500(20)30085-6 (BLAST-CT). "
    "(2) Sharrock MF, Mould WA, Ali H, et al. 3D deep neural network segmentation of "
    "intracerebral hemorrhage: development and validation for clinical trials. "
    "Neuroinformatics. 2021;19(3):403-415. doi:10.1007/s12021-020-09493-5 (DeepBleed). "
    "Also give the ichseg version, found in GeneratedBy."
)


def _container() -> dict[str, str] | None:
    """Describe the container from ``$ICHSEG_CONTAINER`` (BIDS ``GeneratedBy.Container``)."""
    value = os.environ.get(CONTAINER_ENV, "").strip()
    if not value:
        return None
    kind, sep, tag = value.partition("://")
    if sep:
        return {"Type": kind, "Tag": tag, "URI": value}
    return {"Tag": value}


def _source_dataset(bids_dir: Path) -> dict[str, str]:
    """``SourceDatasets`` entry: the DOI of the input when it has one, else its file:// URI."""
    description = bids_dir / "dataset_description.json"
    try:
        source = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        # The input side reports a broken description; here it only means "no DOI".
        source = {}
    doi = source.get("DatasetDOI") if isinstance(source, dict) else None
    if isinstance(doi, str) and doi.strip():
        doi = doi.strip()
        # BIDS asks for the "doi:" URI form (DatasetDOI may be written as a bare DOI or URL).
        for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/"):
            if doi.lower().startswith(prefix):
                doi = doi[len(prefix) :]
        if not doi.lower().startswith("doi:"):
            doi = f"doi:{doi}"
        return {"DOI": doi}
    return {"URL": bids_dir.as_uri()}


def derivatives_description(bids_dir: str | os.PathLike, version: str) -> dict[str, Any]:
    """Content of the derivatives' ``dataset_description.json`` (see the write function)."""
    generated_by: dict[str, Any] = {"Name": "ichseg", "Version": version}
    source = _source_dataset(Path(bids_dir).expanduser().absolute())
    container = _container()
    if container:
        generated_by["Container"] = container
    return {
        "Name": "ichseg",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        # BIDS URIs in the derivatives' sidecars ("Sources": ["bids:raw:sub-01/..."]) resolve here.
        "DatasetLinks": {SOURCE_DATASET: source.get("DOI") or source["URL"]},
        "HowToAcknowledge": HOW_TO_ACKNOWLEDGE,
    }


def write_derivatives_description(
    output_dir: str | os.PathLike, bids_dir: str | os.PathLike, version: str
) -> Path:
    """Write ``output_dir/dataset_description.json`` atomically and return its path.

    Idempotent: an identical existing file is left untouched (so parallel participant jobs
    can all call this). A different one is replaced, with a warning when it was written by
    another ichseg version, since the folder then mixes outputs of two versions.
    """
    path = Path(output_dir) / "dataset_description.json"
    content = derivatives_description(bids_dir, version)
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        previous = None
    if previous == content:
        return path
    if isinstance(previous, dict):
        versions = {
            g.get("Version")
            for g in previous.get("GeneratedBy", [])
            if isinstance(g, dict) and g.get("Name") == "ichseg"
        }
        if versions and versions != {version}:
            LOGGER.warning(
                "%s was written by ichseg %s; this is ichseg %s. The folder now holds outputs "
                "of more than one version; use a fresh output folder to avoid that.",
                path,
                ", ".join(sorted(map(str, versions))),
                version,
            )
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")
    return path
