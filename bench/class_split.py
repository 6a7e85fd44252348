#!/usr/bin/env python
"""Which bleeding class ichseg gives the truth set's intraparenchymal lesions, and where.

    python bench/class_split.py SPLIT_DIR DERIVATIVES [--out TABLE.tsv]

The total hemorrhage of a phantom can be right while its class is not: BLAST-CT labels parts
of some painted parenchymal lesions IVH or EAH, which moves them from ``iph_ml`` to ``ivh_ml``
or ``eah_ml``. For every phantom of SPLIT_DIR (``bench/make_truthset.py``, its reference
``_dseg`` on the scan's grid) and ichseg's label map of it in DERIVATIVES, this gives the share
of the lesion's reference voxels labelled each class, and for those labelled IVH or EAH the
share that lies where the label is anatomically possible: within :data:`NEAR_MM` of the host's
lateral ventricles (found by density before painting,
:func:`~ichseg.pipeline.lesion_insertion.find_ventricles`) for IVH, within :data:`NEAR_MM` of
the brain's edge for EAH. The reference's ignore mask is left out. Prints the table and the
totals over all lesion voxels; ``--out`` writes it as TSV.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.geometry import voxel_sizes, voxel_volume_ml
from ichseg.pipeline.labels import EAH_INDEX, IPH_INDEX, IVH_INDEX

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_truthset import prepare_hosts  # noqa: E402

#: How near a ventricle (IVH) or the brain's edge (EAH) a voxel must lie for its label to be
#: anatomically possible, mm: a margin for the ventricles' outline and partial voxels.
NEAR_MM = 3.0


def near(mask: np.ndarray, affine: np.ndarray, mm: float = NEAR_MM) -> np.ndarray:
    """Voxels within ``mm`` of ``mask`` (the mask included)."""
    return ndi.distance_transform_edt(~mask, sampling=voxel_sizes(affine)) <= mm


def split_of(lesion: np.ndarray, predicted: np.ndarray, ventricles: np.ndarray, brain: np.ndarray,
             affine: np.ndarray) -> dict:
    """Shares of ``lesion``'s voxels that ``predicted`` labels IPH, IVH, EAH or neither, and of
    the IVH (EAH) ones, the share near the ventricles (the brain's edge)."""
    n = int(lesion.sum())
    ivh, eah = lesion & (predicted == IVH_INDEX), lesion & (predicted == EAH_INDEX)
    edge = brain & ~ndi.binary_erosion(brain)
    return {
        "lesion_ml": n * voxel_volume_ml(affine),
        "iph_share": float((lesion & (predicted == IPH_INDEX)).sum() / n),
        "ivh_share": float(ivh.sum() / n),
        "eah_share": float(eah.sum() / n),
        "lesion_in_ventricles_share": float((lesion & ventricles).sum() / n),
        "ivh_near_ventricles_share": float((ivh & near(ventricles, affine)).sum() / ivh.sum()) if ivh.any() else float("nan"),
        "eah_near_brain_edge_share": float((eah & near(edge, affine)).sum() / eah.sum()) if eah.any() else float("nan"),
        "voxels": {"lesion": n, "ivh": int(ivh.sum()), "eah": int(eah.sum()),
                   "ivh_near": int((ivh & near(ventricles, affine)).sum()), "eah_near": int((eah & near(edge, affine)).sum())},
    }


def class_split(split_dir: Path, derivatives: Path) -> list[dict]:
    phantoms = list(csv.DictReader((split_dir / "phantoms.tsv").open(), delimiter="\t"))
    hosts, rows = {}, []
    for phantom in phantoms:
        sid, name = phantom["participant_id"], phantom["host"]
        if name not in hosts:
            hosts[name] = prepare_hosts([name])[0][0]
        host = hosts[name]
        anat = f"{sid}/anat/{sid}"
        reference = np.asanyarray(nib.load(str(split_dir / "reference" / f"{anat}_dseg.nii.gz")).dataobj)
        predicted = np.asanyarray(nib.load(str(derivatives / f"{anat}_dseg.nii.gz")).dataobj)
        ignore_path = split_dir / "reference" / f"{anat}_desc-ignore_mask.nii.gz"
        keep = ~(np.asanyarray(nib.load(str(ignore_path)).dataobj) > 0) if ignore_path.is_file() else True
        lesion = (reference == IPH_INDEX) & keep
        if reference.shape != host.ventricles.shape or not lesion.any():
            continue
        rows.append({"participant_id": sid, "host": name,
                     **split_of(lesion, predicted, host.ventricles, host.brain, host.affine)})
    return rows


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("derivatives", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the table as TSV")
    args = parser.parse_args(argv)
    rows = class_split(args.split_dir, args.derivatives)
    columns = ["participant_id", "host", "lesion_ml", "iph_share", "ivh_share", "eah_share",
               "lesion_in_ventricles_share", "ivh_near_ventricles_share", "eah_near_brain_edge_share"]
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row[c] if isinstance(row[c], str) else (f"{row[c]:.2f}" if c == "lesion_ml" else _fmt(row[c]))
                        for c in columns))
    total = {k: sum(r["voxels"][k] for r in rows) for k in rows[0]["voxels"]} if rows else {}
    if total:
        print(f"all lesion voxels: IVH {_fmt(total['ivh'] / total['lesion'])} (near the ventricles: "
              f"{_fmt(total['ivh_near'] / max(1, total['ivh']))}), EAH {_fmt(total['eah'] / total['lesion'])} "
              f"(near the brain's edge: {_fmt(total['eah_near'] / max(1, total['eah']))})")
    if args.out:
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("n/a" if isinstance(v, float) and v != v else round(v, 3) if isinstance(v, float) else v)
                              for k, v in row.items()} for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
