"""Write the default demo BIDS dataset: synthetic head CTs with known hematoma volumes.

``python -m ichseg.bids_app.demo OUT_DIR`` gives a small, valid BIDS dataset that ichseg can
run on without any real (and licence-restricted) patient data: one ``anat/*_ct.nii.gz`` per
subject, made by :func:`ichseg.pipeline.phantom.make_head_phantom`. Subject 01 has a ~20 mL
left basal-ganglia hematoma, subject 02 none; further subjects cycle through other volumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.pipeline import __version__
from ichseg.pipeline.phantom import make_head_phantom

GENERATOR = "ichseg-demo"
BIDS_VERSION = "1.10.0"
# Hematoma volume (mL) of subject i is HEMORRHAGE_ML[(i - 1) % len(HEMORRHAGE_ML)].
HEMORRHAGE_ML = (20.0, 0.0, 45.0, 8.0)
_TOP_LEVEL_FILES = ("dataset_description.json", "participants.tsv", "participants.json", "README")


class DemoDatasetError(RuntimeError):
    """The output folder cannot receive the demo dataset."""


def write_demo_dataset(bids_dir: Path, n_subjects: int = 2) -> Path:
    """Write the synthetic demo BIDS dataset into ``bids_dir`` and return its path.

    The folder may be missing, empty, or an earlier demo dataset (which is replaced); any
    other non-empty folder is refused with :class:`DemoDatasetError`, so user data is never
    overwritten.
    """
    if n_subjects < 1:
        raise ValueError("n_subjects must be at least 1")
    bids_dir = Path(bids_dir).expanduser().absolute()
    _check_target(bids_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_demo(bids_dir)

    subjects = [f"{i:02d}" for i in range(1, n_subjects + 1)]
    volumes = [HEMORRHAGE_ML[(i - 1) % len(HEMORRHAGE_ML)] for i in range(1, n_subjects + 1)]
    _write_json(bids_dir / "dataset_description.json", _description())
    _write_participants(bids_dir, subjects, volumes)
    (bids_dir / "README").write_text(_readme(subjects, volumes), encoding="utf-8")
    for i, (label, ml) in enumerate(zip(subjects, volumes), start=1):
        _write_subject(bids_dir, label, ml, seed=i)
    return bids_dir


def _is_demo(bids_dir: Path) -> bool:
    """True when bids_dir holds a dataset written by this module."""
    try:
        desc = json.loads((bids_dir / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    generated = desc.get("GeneratedBy") if isinstance(desc, dict) else None
    return isinstance(generated, list) and any(
        isinstance(g, dict) and g.get("Name") == GENERATOR for g in generated
    )


def _check_target(bids_dir: Path) -> None:
    if bids_dir.exists() and not bids_dir.is_dir():
        raise DemoDatasetError(f"{bids_dir} is a file; give a folder for the demo dataset.")
    if bids_dir.is_dir() and any(bids_dir.iterdir()) and not _is_demo(bids_dir):
        raise DemoDatasetError(
            f"{bids_dir} is not empty and is not an ichseg demo dataset; refusing to write "
            "into it. Give a new or empty folder (or an earlier demo dataset to replace)."
        )


def _remove_previous_demo(bids_dir: Path) -> None:
    """Delete what an earlier demo wrote (only called on a folder _check_target accepted)."""
    for name in _TOP_LEVEL_FILES:
        (bids_dir / name).unlink(missing_ok=True)
    for sub in bids_dir.glob("sub-*"):
        if sub.is_dir():
            shutil.rmtree(sub)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _description() -> dict:
    return {
        "Name": "ichseg demo: synthetic head CT phantoms",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["ichseg developers"],
        "GeneratedBy": [
            {
                "Name": GENERATOR,
                "Version": __version__,
                "Description": "ichseg.pipeline.phantom.make_head_phantom",
            }
        ],
    }


def _write_participants(bids_dir: Path, subjects: list[str], volumes: list[float]) -> None:
    rows = ["participant_id\themorrhage_ml"]
    rows += [f"sub-{s}\t{ml:.1f}" for s, ml in zip(subjects, volumes)]
    (bids_dir / "participants.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    _write_json(
        bids_dir / "participants.json",
        {
            "hemorrhage_ml": {
                "Description": "True volume of the synthetic hematoma (known by construction)",
                "Units": "mL",
            }
        },
    )


def _readme(subjects: list[str], volumes: list[float]) -> str:
    lines = [
        "ichseg demo dataset",
        "===================",
        "",
        "Synthetic non-contrast head CTs (digital phantoms, no patient data) written by",
        f"`python -m ichseg.bids_app.demo` (ichseg {__version__}). Each scan is an adult-sized",
        "head (skull, scalp, brain with grey/white texture, ventricles, orbits, neck) in",
        "Hounsfield units, 0.9 x 0.9 x 5 mm, LAS orientation. The hematoma is a hyperdense",
        "(~70 HU) blob in the left basal ganglia whose true volume is in participants.tsv:",
        "",
    ]
    lines += [f"- sub-{s}: {ml:.1f} mL" for s, ml in zip(subjects, volumes)]
    lines += ["", "Use it to try ichseg without real data; it is not for validation.", ""]
    return "\n".join(lines)


def _write_subject(bids_dir: Path, label: str, hemorrhage_ml: float, seed: int) -> None:
    ph = make_head_phantom(hemorrhage_ml=hemorrhage_ml, seed=seed)
    anat = bids_dir / f"sub-{label}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(ph.data, ph.affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(ph.affine, code=1)  # scanner coordinates, like dcm2niix writes
    img.set_sform(ph.affine, code=1)
    stem = anat / f"sub-{label}_ct"
    nib.save(img, f"{stem}.nii.gz")
    _write_json(
        Path(f"{stem}.json"),
        {
            "Modality": "CT",
            "Manufacturer": "ichseg",
            "ManufacturersModelName": "synthetic head phantom",
            "BodyPart": "HEAD",
            "ImageType": ["DERIVED", "SECONDARY", "SYNTHETIC"],
            "SliceThickness": float(ph.voxel_size[2]),
            "ConversionSoftware": GENERATOR,
            "ConversionSoftwareVersion": __version__,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m ichseg.bids_app.demo OUT_DIR [--n-subjects N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ichseg.bids_app.demo",
        description="Write a small synthetic head-CT BIDS dataset to try ichseg on.",
    )
    parser.add_argument("out_dir", type=Path, help="new or empty folder (or an earlier demo)")
    parser.add_argument("--n-subjects", type=int, default=2, help="number of subjects (default 2)")
    args = parser.parse_args(argv)
    if args.n_subjects < 1:
        parser.error("--n-subjects must be at least 1")
    try:
        root = write_demo_dataset(args.out_dir, n_subjects=args.n_subjects)
    except DemoDatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote the ichseg demo BIDS dataset to {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
