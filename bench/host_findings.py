#!/usr/bin/env python
"""Leave the host scans' own findings out of the truth set's scoring.

    python bench/host_findings.py SPLIT_DIR [SPLIT_DIR ...] --work WORK [--hosts mistie-0034 deepbleed-brain]
                                  [--all-labels] [--ichseg-args "--model DIR"]

Two hosts of the truth set are scans of patients: mistie-0034 has its hematoma, and
deepbleed-brain has small hyperdense foci that nobody has verified. Their own blood has no
reference outline, so whatever ichseg labels there would count as false positives of every
phantom built on them. ``make_truthset`` already leaves out the dense core of such findings
(above 55 HU); this adds what ichseg's default model labels as hemorrhage on the unmodified
host (its lower-density margins, IVH layering), grown by 3 mm, to each phantom's
``desc-ignore`` mask. The normal GE head is not listed by default: its false positives count.

``--all-labels`` leaves out every label the default model gives on the host (its oedema as
well), for a set that ``ichseg train`` learns from: the phantom's reference says nothing about
the host's own oedema, and without it the network is taught that this oedema is background.
Scoring sets keep the default (hemorrhage only), so their figures stay comparable.

``--ichseg-args`` runs the hosts with other options (for example ``--model DIR``). Run on a
copy of a scoring set that already has the default model's findings, it leaves out the union
of both models' findings: a fair ground for comparing the two, since each would otherwise be
charged for what it, and not the other, calls blood on the unmodified host.

Writes ``WORK/bids`` (the canonical hosts), ``WORK/derivatives`` (ichseg's outputs on them)
and ``SPLIT_DIR/host_findings.tsv`` (the volume left out per host); updates the ignore masks
of ``SPLIT_DIR/reference``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import read_phantoms  # noqa: E402

from ichseg.pipeline.assets import get_asset  # noqa: E402
from ichseg.pipeline.geometry import voxel_sizes, voxel_volume_ml  # noqa: E402
from ichseg.pipeline.labels import HEMORRHAGE_INDICES  # noqa: E402

GROW_MM = 3.0


def host_findings(hosts: list[str], work: Path, all_labels: bool = False,
                  ichseg_args: str = "") -> dict[str, nib.Nifti1Image]:
    """Run ichseg on each host as the truth set stores it (closest canonical); return the
    hemorrhage it finds (every label with ``all_labels``), grown by GROW_MM, on that grid."""
    bids = work / "bids"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "truth-set hosts", "BIDSVersion": "1.10.0"}))
    for name in hosts:
        label = name.replace("-", "")
        target = bids / f"sub-{label}" / "anat" / f"sub-{label}_ct.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.as_closest_canonical(nib.load(str(get_asset(f"ct/{name}_ct.nii.gz")))), str(target))
    out = work / "derivatives"
    subprocess.run([sys.executable, "-m", "ichseg.bids_app.cli", str(bids), str(out), "participant",
                    "-w", str(work / "work"), "--n-procs", "2", "-q", *shlex.split(ichseg_args)], check=True)
    found = {}
    for name in hosts:
        label = name.replace("-", "")
        dseg = nib.load(str(out / f"sub-{label}" / "anat" / f"sub-{label}_dseg.nii.gz"))
        labels = np.asanyarray(dseg.dataobj)
        blood = np.isin(labels, HEMORRHAGE_INDICES)
        left_out = labels > 0 if all_labels else blood
        far = ndimage.distance_transform_edt(~left_out, sampling=voxel_sizes(dseg.affine))
        found[name] = nib.Nifti1Image((far <= GROW_MM).astype(np.uint8), dseg.affine)
        ml = voxel_volume_ml(dseg.affine)
        print(f"{name}: {blood.sum() * ml:.2f} mL of its own hemorrhage found"
              + (f", {left_out.sum() * ml:.2f} mL of any label" if all_labels else ""), flush=True)
    return found


def update_split(split_dir: Path, found: dict[str, nib.Nifti1Image]) -> None:
    rows = read_phantoms(split_dir).values()
    report = ["participant_id\thost\tignored_ml_before\tignored_ml_after"]
    for row in rows:
        if row["host"] not in found:
            continue
        sid = row["participant_id"]
        anat = split_dir / "reference" / sid / "anat"
        reference = nib.load(str(anat / f"{sid}_dseg.nii.gz"))
        extra = np.asanyarray(found[row["host"]].dataobj) > 0
        if extra.shape != reference.shape or not np.allclose(found[row["host"]].affine, reference.affine, atol=1e-3):
            raise SystemExit(f"{sid}: the host {row['host']} is not on the phantom's grid")
        path = anat / f"{sid}_desc-ignore_mask.nii.gz"
        before = np.asanyarray(nib.load(str(path)).dataobj) > 0 if path.exists() else np.zeros(extra.shape, bool)
        # never over the painted lesion itself: it is scored
        after = (before | extra) & (np.asanyarray(reference.dataobj) == 0)
        nib.save(nib.Nifti1Image(after.astype(np.uint8), reference.affine, reference.header), str(path))
        ml = voxel_volume_ml(reference.affine)
        report.append(f"{sid}\t{row['host']}\t{before.sum() * ml:.2f}\t{after.sum() * ml:.2f}")
    (split_dir / "host_findings.tsv").write_text("\n".join(report) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("splits", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--hosts", nargs="+", default=["mistie-0034", "deepbleed-brain"])
    parser.add_argument("--all-labels", action="store_true",
                        help="leave out every label found on the host, oedema too (for training sets)")
    parser.add_argument("--ichseg-args", default="", help="options for ichseg's run on the hosts (e.g. --model DIR)")
    args = parser.parse_args(argv)
    found = host_findings(args.hosts, args.work, args.all_labels, args.ichseg_args)
    for split in args.splits:
        update_split(split, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
