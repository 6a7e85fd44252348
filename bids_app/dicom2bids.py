"""``ichseg dicom2bids``: DICOM head CT series into a BIDS dataset, with dcm2niix.

    ichseg dicom2bids DICOM_DIR BIDS_DIR --participant-label L [--session-label S]

dcm2niix (the PyPI package) converts every series of ``DICOM_DIR`` into a temporary folder,
with gzip and the full JSON sidecar (``-ba n``: acquisition dates are kept, because the
hours between scans need them). Series that are not CT, and CT series that fail ichseg's input
checks (localizers, contrast series, non-HU exports, ...), are left out with their reason. The
head CTs left are written as ``sub-L/[ses-S/]anat/sub-L[_ses-S][_run-N]_ct.nii.gz`` with their
sidecar: one file without ``run`` when there is one, ``run-1``, ``run-2``... in series-number
order when there are several. The gantry tilt stays as dcm2niix stores it (a sheared affine);
dcm2niix's extra tilt-corrected copies (``*_Tilt_*``, without sidecar) are not used. Nothing is
written when no series is a usable head CT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ichseg.bids_app.bids import normalize_labels
from ichseg.pipeline.checks import InputImageError, check_ct
from ichseg.pipeline.fileutils import atomic_write_text


class Dicom2BidsError(Exception):
    """The conversion cannot be done (the message says why and what to do)."""


@dataclass(frozen=True)
class Series:
    """One series converted by dcm2niix: its image, sidecar, and why it is left out (or None)."""

    image: Path
    sidecar: dict
    problem: str | None


def dcm2niix_executable() -> str:
    """The dcm2niix program (from the ``dcm2niix`` PyPI package, or the PATH)."""
    found = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=str(Path(sys.executable).parent))
    if not found:
        raise Dicom2BidsError("dcm2niix is not installed: pip install dcm2niix")
    return found


def convert_series(dicom_dir: Path, work: Path) -> list[Series]:
    """Run dcm2niix on ``dicom_dir`` into ``work``; return every series with its verdict."""
    result = subprocess.run(
        [dcm2niix_executable(), "-z", "y", "-b", "y", "-ba", "n", "-f", "%s_%d", "-o", str(work), str(dicom_dir)],
        capture_output=True, text=True, check=False,
    )
    series = []
    for sidecar_path in sorted(work.glob("*.json")):
        image = sidecar_path.with_suffix(".nii.gz")
        if not image.exists():
            continue
        sidecar = json.loads(sidecar_path.read_text())
        problem = None
        if str(sidecar.get("Modality", "")).upper() != "CT":
            problem = f"modality {sidecar.get('Modality', 'unknown')}, not CT"
        else:
            try:
                check_ct(image, sidecar)
            except InputImageError as err:
                problem = str(err).replace(str(image), "the series")
        series.append(Series(image, sidecar, problem))
    if not series and result.returncode not in (0, 2):  # dcm2niix: 2 = no DICOM found
        raise Dicom2BidsError(f"dcm2niix failed on {dicom_dir}: {result.stderr.strip() or result.stdout.strip()}")
    return series


def _describe(series: Series) -> str:
    sidecar = series.sidecar
    return f"series {sidecar.get('SeriesNumber', '?')} ({sidecar.get('SeriesDescription') or 'no description'})"


def dicom_to_bids(dicom_dir: Path, bids_dir: Path, participant: str, session: str | None = None) -> list[Path]:
    """Convert the head CT series of ``dicom_dir`` into ``bids_dir``; return the CTs written."""
    dicom_dir, bids_dir = Path(dicom_dir), Path(bids_dir)
    if not dicom_dir.is_dir():
        raise Dicom2BidsError(f"{dicom_dir} is not a folder; give the folder of the DICOM series.")
    [participant] = normalize_labels(participant, "sub-")
    session = normalize_labels(session, "ses-")[0] if session else None
    prefix = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    anat = bids_dir / f"sub-{participant}" / (f"ses-{session}" if session else "") / "anat"
    with tempfile.TemporaryDirectory(prefix="ichseg-dcm2niix-") as tmp:
        series = convert_series(dicom_dir, Path(tmp))
        usable = sorted((s for s in series if s.problem is None), key=lambda s: int(s.sidecar.get("SeriesNumber") or 0))
        for s in series:
            if s.problem:
                print(f"left out {_describe(s)}: {s.problem}", file=sys.stderr)
        if not usable:
            found = "; ".join(f"{_describe(s)}: {s.problem}" for s in series) or "no DICOM series"
            raise Dicom2BidsError(f"no usable head CT series in {dicom_dir} ({found}). Nothing was written.")
        existing = sorted(anat.glob(f"{prefix}*_ct.nii*")) if anat.is_dir() else []
        if existing:
            raise Dicom2BidsError(f"{anat} already holds {existing[0].name}; remove it or choose another "
                                  "participant or session label.")
        anat.mkdir(parents=True, exist_ok=True)
        description = bids_dir / "dataset_description.json"
        if not description.exists():
            atomic_write_text(description, json.dumps({"Name": "head CT (ichseg dicom2bids)", "BIDSVersion": "1.10.0",
                                                       "DatasetType": "raw"}, indent=2) + "\n")
        written = []
        for run, s in enumerate(usable, start=1):
            name = prefix + (f"_run-{run}" if len(usable) > 1 else "") + "_ct"
            shutil.copyfile(s.image, anat / f"{name}.nii.gz")
            atomic_write_text(anat / f"{name}.json", json.dumps(s.sidecar, indent=2) + "\n")
            written.append(anat / f"{name}.nii.gz")
            print(f"{_describe(s)} -> {written[-1]}")
    return written


def run_dicom2bids(argv: list[str] | None = None) -> int:
    """``ichseg dicom2bids``: returns the exit status."""
    parser = argparse.ArgumentParser(prog="ichseg dicom2bids", description=__doc__.split("\n\n")[0])
    parser.add_argument("dicom_dir", type=Path, help="folder with the DICOM files of one visit")
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset to add the CT to (created if needed)")
    parser.add_argument("--participant-label", required=True, metavar="LABEL")
    parser.add_argument("--session-label", metavar="LABEL")
    args = parser.parse_args(argv)
    try:
        dicom_to_bids(args.dicom_dir, args.bids_dir, args.participant_label, args.session_label)
    except Dicom2BidsError as err:
        print(f"ichseg dicom2bids: error: {err}", file=sys.stderr)
        return 2
    return 0
