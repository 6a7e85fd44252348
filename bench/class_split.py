#!/usr/bin/env python
"""Which bleeding class ichseg gives the truth set's intraparenchymal lesions, and where.

    python bench/class_split.py SPLIT_DIR DERIVATIVES [--work WORK] [--out TABLE.tsv]
    python bench/class_split.py --ivh DERIVATIVES --work WORK

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

With ``--work`` (the Nipype work folder of the ichseg run, ``.../work-NAME/ichseg_wf``), also
the share of the IVH-labelled voxels within :data:`NEAR_MM` of the atlas's ventricle region,
mapped onto the scan through the registration that turns the head onto the template (what a
rule "IVH only near the atlas's ventricles" would keep). ``--ivh DERIVATIVES --work WORK``
gives the same for every IVH voxel of any ichseg output, such as the real scans: what that
rule would take from real ventricular blood.
"""

from __future__ import annotations

import argparse
import csv
import sys
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline import assets
from ichseg.pipeline.geometry import ants_affine_to_ras, voxel_volume_ml, within_mm
from ichseg.pipeline.labels import EAH_INDEX, IPH_INDEX, IVH_INDEX
from ichseg.pipeline.location import atlas_on_scan, read_region_names, ventricle_region

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import atlas_transform  # noqa: E402
from make_truthset import prepare_hosts  # noqa: E402

#: How near a ventricle (IVH) or the brain's edge (EAH) a voxel must lie for its label to be
#: anatomically possible, mm: a margin for the ventricles' outline and partial voxels.
NEAR_MM = 3.0


def near(mask: np.ndarray, affine: np.ndarray, mm: float = NEAR_MM) -> np.ndarray:
    """Voxels within ``mm`` of ``mask`` (the mask included)."""
    return within_mm(mask, affine, mm)


@lru_cache(maxsize=1)
def _atlas() -> tuple:
    """The atlas image and its region names: read once for every scan."""
    return nib.load(str(assets.get_asset(assets.ATLAS))), read_region_names(assets.get_asset(assets.ATLAS_LABELS))


def atlas_ventricles(work: Path, sid: str, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The atlas's ventricle region on a scan's grid, through the transform that ichseg's run
    (its work folder ``work``) used for the atlas regions."""
    atlas, names = _atlas()
    transform = ants_affine_to_ras(str(atlas_transform(work / f"ct_{sid.replace('-', '_')}")))
    return ventricle_region(atlas_on_scan(atlas, shape, affine, transform)[0], names)


def share(selected: np.ndarray, within: np.ndarray) -> float:
    """Share of ``selected``'s voxels that lie in ``within`` (NaN if none)."""
    return float((selected & within).sum() / selected.sum()) if selected.any() else float("nan")


def split_of(lesion: np.ndarray, predicted: np.ndarray, ventricles: np.ndarray, brain: np.ndarray,
             affine: np.ndarray) -> dict:
    """Shares of ``lesion``'s voxels that ``predicted`` labels IPH, IVH, EAH or neither, and of
    the IVH (EAH) ones, the share near the ventricles (the brain's edge)."""
    n = int(lesion.sum())
    ivh, eah = lesion & (predicted == IVH_INDEX), lesion & (predicted == EAH_INDEX)
    near_ventricles, near_edge = near(ventricles, affine), near(brain & ~ndi.binary_erosion(brain), affine)
    return {
        "lesion_ml": n * voxel_volume_ml(affine),
        "iph_share": float((lesion & (predicted == IPH_INDEX)).sum() / n),
        "ivh_share": float(ivh.sum() / n),
        "eah_share": float(eah.sum() / n),
        "lesion_in_ventricles_share": float((lesion & ventricles).sum() / n),
        "ivh_near_ventricles_share": share(ivh, near_ventricles),
        "eah_near_brain_edge_share": share(eah, near_edge),
        "voxels": {"lesion": n, "ivh": int(ivh.sum()), "eah": int(eah.sum()),
                   "ivh_near": int((ivh & near_ventricles).sum()), "eah_near": int((eah & near_edge).sum())},
    }


def class_split(split_dir: Path, derivatives: Path, work: Path | None = None) -> list[dict]:
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
        row = {"participant_id": sid, "host": name,
               **split_of(lesion, predicted, host.ventricles, host.brain, host.affine)}
        if work is not None:
            ivh = lesion & (predicted == IVH_INDEX)
            near_atlas = near(atlas_ventricles(work, sid, predicted.shape, host.affine), host.affine)
            row["ivh_near_atlas_ventricles_share"] = share(ivh, near_atlas)
            row["voxels"]["ivh_near_atlas"] = int((ivh & near_atlas).sum())
        rows.append(row)
    return rows


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f} %"


def ivh_near_atlas(derivatives: Path, work: Path) -> list[dict]:
    """For every label map in ``derivatives``: its IVH (mL) and the share of it within
    :data:`NEAR_MM` of the atlas's ventricles."""
    rows = []
    for dseg in sorted(derivatives.glob("sub-*/**/anat/sub-*_dseg.nii.gz")):
        if "_space-" in dseg.name:
            continue
        img = nib.load(str(dseg))
        labels = np.asanyarray(img.dataobj)
        sid = dseg.name[: -len("_dseg.nii.gz")]
        ivh = labels == IVH_INDEX
        near_atlas = near(atlas_ventricles(work, sid, labels.shape, img.affine), img.affine)
        rows.append({"scan": sid, "ivh_ml": float(ivh.sum()) * voxel_volume_ml(img.affine),
                     "ivh_near_atlas_ventricles_share": share(ivh, near_atlas)})
    return rows


def _tsv_cell(value):
    return "n/a" if isinstance(value, float) and value != value else round(value, 3) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split_dir", type=Path, nargs="?", help="the truth set (not with --ivh)")
    parser.add_argument("derivatives", type=Path, nargs="?")
    parser.add_argument("--work", type=Path, default=None,
                        help="Nipype work folder of the ichseg run (.../ichseg_wf): adds the atlas's ventricles")
    parser.add_argument("--ivh", type=Path, default=None, metavar="DERIVATIVES",
                        help="every IVH voxel of these ichseg outputs against the atlas's ventricles (needs --work)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as TSV")
    args = parser.parse_args(argv)
    if args.ivh is not None:
        if args.work is None:
            parser.error("--ivh needs --work, the work folder of the same ichseg run")
        for row in ivh_near_atlas(args.ivh, args.work):
            print(f"{row['scan']}: IVH {row['ivh_ml']:.2f} mL, within {NEAR_MM:g} mm of the atlas's ventricles "
                  f"{_fmt(row['ivh_near_atlas_ventricles_share'])}")
        return 0
    if args.split_dir is None or args.derivatives is None:
        parser.error("give SPLIT_DIR and DERIVATIVES (or --ivh DERIVATIVES --work WORK)")
    rows = class_split(args.split_dir, args.derivatives, args.work)
    columns = ["participant_id", "host", "lesion_ml", "iph_share", "ivh_share", "eah_share",
               "lesion_in_ventricles_share", "ivh_near_ventricles_share", "eah_near_brain_edge_share"]
    if args.work is not None:
        columns.append("ivh_near_atlas_ventricles_share")
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row[c] if isinstance(row[c], str) else (f"{row[c]:.2f}" if c == "lesion_ml" else _fmt(row[c]))
                        for c in columns))
    total = {k: sum(r["voxels"][k] for r in rows) for k in rows[0]["voxels"]} if rows else {}
    if total:
        atlas = (f"; near the atlas's ventricles: {_fmt(total['ivh_near_atlas'] / max(1, total['ivh']))}"
                 if "ivh_near_atlas" in total else "")
        print(f"all lesion voxels: IVH {_fmt(total['ivh'] / total['lesion'])} (near the ventricles: "
              f"{_fmt(total['ivh_near'] / max(1, total['ivh']))}{atlas}), EAH {_fmt(total['eah'] / total['lesion'])} "
              f"(near the brain's edge: {_fmt(total['eah_near'] / max(1, total['eah']))})")
    if args.out:
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _tsv_cell(v) for k, v in row.items()} for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
