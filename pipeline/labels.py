"""The label table of the segmentation: the one place that names classes and volume columns.

BLAST-CT v1 predicts five classes on head CT. Everything that needs a class index, a name,
a colour or a volume-column name (label maps, ``_dseg.tsv``, volume tables, reports) reads it
from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ichseg.pipeline.fileutils import atomic_write_text


@dataclass(frozen=True)
class Label:
    """One class of the label map."""

    index: int
    name: str
    abbreviation: str
    color: str  # hex RGB, used in reports and the BIDS ``_dseg.tsv``
    is_hemorrhage: bool

    @property
    def volume_column(self) -> str:
        """Name of this class's volume column (mL) in volume tables."""
        return f"{self.abbreviation.lower()}_ml"


LABELS: tuple[Label, ...] = (
    Label(0, "background", "BG", "#000000", False),
    Label(1, "intraparenchymal hemorrhage", "IPH", "#e41a1c", True),
    Label(2, "extra-axial hemorrhage", "EAH", "#377eb8", True),
    Label(3, "perilesional oedema", "OED", "#4daf4a", False),
    Label(4, "intraventricular hemorrhage", "IVH", "#ff7f00", True),
)

#: Index of intraparenchymal hemorrhage, the class that ABC/2 and expansion rules measure.
IPH_INDEX: int = next(lab.index for lab in LABELS if lab.abbreviation == "IPH")
#: Index of extra-axial (subdural, epidural, subarachnoid) hemorrhage.
EAH_INDEX: int = next(lab.index for lab in LABELS if lab.abbreviation == "EAH")
#: Index of intraventricular hemorrhage.
IVH_INDEX: int = next(lab.index for lab in LABELS if lab.abbreviation == "IVH")
#: The bleeding classes that may be confined to where they can lie (IPH may lie anywhere).
CONFINED_INDICES: tuple[int, ...] = (IVH_INDEX, EAH_INDEX)
#: Index of perilesional oedema, the one class besides background that is not blood.
OEDEMA_INDEX: int = next(lab.index for lab in LABELS if lab.abbreviation == "OED")
#: Foreground classes, in index order (everything except background).
FOREGROUND_LABELS: tuple[Label, ...] = tuple(lab for lab in LABELS if lab.index != 0)
#: Class indices that count towards total hemorrhage (IPH + EAH + IVH).
HEMORRHAGE_INDICES: tuple[int, ...] = tuple(lab.index for lab in LABELS if lab.is_hemorrhage)


def total_hemorrhage_probability(probabilities):
    """The probability that a voxel is blood of any kind, P(IPH) + P(EAH) + P(IVH), from class
    probabilities with the classes on the first axis (a NumPy array)."""
    return probabilities[list(HEMORRHAGE_INDICES)].sum(axis=0)


#: Volume column of total hemorrhage and of the brain (intracranial) mask, in mL.
TOTAL_HEMORRHAGE_COLUMN = "hemorrhage_ml"
BRAIN_VOLUME_COLUMN = "brain_ml"
#: All volume columns of a per-scan or group table, in their fixed order.
VOLUME_COLUMNS: tuple[str, ...] = tuple(lab.volume_column for lab in FOREGROUND_LABELS) + (
    TOTAL_HEMORRHAGE_COLUMN,
    BRAIN_VOLUME_COLUMN,
)


def label_map_metadata() -> dict[str, dict[str, str]]:
    """``{"Labels": {index: name}}`` of a label map's JSON sidecar (with its ``_dseg.tsv``)."""
    return {"Labels": {str(lab.index): lab.name for lab in FOREGROUND_LABELS}}


def hemorrhage_probability_metadata() -> dict[str, object]:
    """JSON sidecar fields of the total hemorrhage probability map (``label-hemorrhage``)."""
    hemorrhage = [lab for lab in FOREGROUND_LABELS if lab.index in HEMORRHAGE_INDICES]
    return {
        "Labels": {str(lab.index): lab.name for lab in hemorrhage},
        "Description": "Probability of hemorrhage: the sum of the class probabilities of "
        + ", ".join(f"{lab.name} ({lab.abbreviation})" for lab in hemorrhage) + ".",
    }


def volume_column_descriptions() -> dict[str, dict[str, str]]:
    """BIDS column descriptions (``Description``, ``Units``) of the volume columns."""
    hemorrhage = [lab for lab in FOREGROUND_LABELS if lab.index in HEMORRHAGE_INDICES]
    out = {
        lab.volume_column: {
            "Description": f"Volume of {lab.name} ({lab.abbreviation}, label {lab.index} of "
            "the _dseg label map).",
            "Units": "mL",
        }
        for lab in FOREGROUND_LABELS
    }
    out[TOTAL_HEMORRHAGE_COLUMN] = {
        "Description": "Total hemorrhage volume: sum of "
        + ", ".join(f"{lab.name} ({lab.abbreviation})" for lab in hemorrhage)
        + ".",
        "Units": "mL",
    }
    out[BRAIN_VOLUME_COLUMN] = {
        "Description": "Volume of the brain (intracranial) mask.",
        "Units": "mL",
    }
    # Keep the order of VOLUME_COLUMNS; a column added there without a text here still
    # gets its unit.
    return {
        col: out.get(col, {"Description": f"Volume ({col}).", "Units": "mL"})
        for col in VOLUME_COLUMNS
    }


def dseg_tsv_text() -> str:
    """Content of the BIDS ``_dseg.tsv`` label table of ichseg's label maps.

    Columns ``index``, ``name``, ``abbreviation``, ``color`` (BIDS common derivatives,
    segmentations). Background (0) is left out, as BIDS reads 0 as "no label". There is no
    ``mapping`` column: the BIDS standard lookup table has no hemorrhage classes.
    """
    lines = ["index\tname\tabbreviation\tcolor"]
    lines += [
        f"{lab.index}\t{lab.name}\t{lab.abbreviation}\t{lab.color}" for lab in FOREGROUND_LABELS
    ]
    return "\n".join(lines) + "\n"


def write_dseg_tsv(path: str | os.PathLike) -> Path:
    """Write the ``_dseg.tsv`` label table (see :func:`dseg_tsv_text`) atomically to ``path``."""
    return atomic_write_text(path, dseg_tsv_text())
