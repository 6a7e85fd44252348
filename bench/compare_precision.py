#!/usr/bin/env python
"""Does bf16 give the same results as float32? Volumes and label maps, scan by scan.

    python bench/compare_precision.py [--precisions fp32 bf16] [--out bench/results/precision]

Runs ``ichseg ... participant`` once per precision on two datasets: the real CTs
(mistie-0034, ge-head, deepbleed-brain, from the asset lookup) and the four demo phantoms
(known hematomas of 20, 0, 45 and 8 mL). Registration is deterministic, so the runs differ
only in the network's precision. For every scan it reports each volume under both
precisions, and the agreement of the label maps on hemorrhage voxels: the share of voxels
labelled IPH, EAH or IVH in either map that carry the same label in both. Writes
``precision.json`` and ``precision.md``.

Acceptance (issue 8): hemorrhage volumes within 1 % of float32 (or within one voxel of the
CT's grid where a volume is too small for 1 % to be a voxel), and at least 99 % agreement on
hemorrhage voxels, on every scan.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmark import DEFAULT_SCANS, _cpu_line, make_dataset  # noqa: E402

from ichseg.bids_app.demo import write_demo_dataset  # noqa: E402
from ichseg.pipeline.cpu import machine_description  # noqa: E402
from ichseg.pipeline.geometry import voxel_volume_ml  # noqa: E402
from ichseg.pipeline.labels import HEMORRHAGE_INDICES  # noqa: E402
from ichseg.pipeline.naming import derivative_path  # noqa: E402

VOLUMES = ("iph_ml", "eah_ml", "ivh_ml", "oed_ml", "hemorrhage_ml")
MAX_RELATIVE = 0.01
MIN_AGREEMENT = 0.99


def run(bids: Path, out: Path, work: Path, precision: str, n_procs: int) -> None:
    cmd = [sys.executable, "-m", "ichseg.bids_app.cli", str(bids), str(out), "participant", "-w", str(work),
           "--n-procs", str(n_procs), "--precision", precision, "-q"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def volumes(out: Path, source: Path) -> dict:
    path = derivative_path(out, source, "volumes")
    header, row = path.read_text().splitlines()[:2]
    table = dict(zip(header.split("\t"), row.split("\t")))
    return {k: float(table[k]) for k in VOLUMES}


def agreement(first: Path, second: Path) -> dict:
    a = np.asanyarray(nib.load(str(first)).dataobj)
    b = np.asanyarray(nib.load(str(second)).dataobj)
    blood = np.isin(a, HEMORRHAGE_INDICES) | np.isin(b, HEMORRHAGE_INDICES)
    n = int(blood.sum())
    return {"hemorrhage_voxels_either": n,
            "hemorrhage_agreement": float((a[blood] == b[blood]).mean()) if n else 1.0,
            "voxels_differing": int((a != b).sum())}


def compare(args) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="ichseg-precision-", dir=args.tmp_dir))
    datasets = {}
    real = scratch / "real"
    datasets["real"] = [(name, path) for name, path in make_dataset(real, args.scans)]
    phantoms = write_demo_dataset(scratch / "phantoms", n_subjects=4)
    datasets["phantoms"] = [(p.parent.parent.name, p) for p in sorted(phantoms.glob("sub-*/anat/*_ct.nii.gz"))]
    roots = {"real": real, "phantoms": phantoms}
    rows = []
    for kind, files in datasets.items():
        outs = {}
        for precision in args.precisions:
            outs[precision] = scratch / f"out-{kind}-{precision}"
            run(roots[kind], outs[precision], scratch / f"work-{kind}-{precision}", precision, args.n_procs)
        ref, *others = args.precisions
        for name, source in files:
            row = {"dataset": kind, "scan": name, "volumes": {}, "agreement": {}}
            for precision in args.precisions:
                row["volumes"][precision] = volumes(outs[precision], source)
            voxel_ml = voxel_volume_ml(nib.load(str(source)).affine)
            row["voxel_ml"] = voxel_ml
            for precision in others:
                row["agreement"][precision] = agreement(
                    derivative_path(outs[ref], source, "dseg"), derivative_path(outs[precision], source, "dseg"))
                a, b = row["volumes"][ref]["hemorrhage_ml"], row["volumes"][precision]["hemorrhage_ml"]
                row.setdefault("pass", {})[precision] = bool(
                    (abs(b - a) <= MAX_RELATIVE * a or abs(b - a) <= voxel_ml + 1e-9)
                    and row["agreement"][precision]["hemorrhage_agreement"] >= MIN_AGREEMENT)
            rows.append(row)
    return {"machine": machine_description(), "precisions": args.precisions, "rows": rows}


def render(data: dict) -> str:
    ref, *others = data["precisions"]
    lines = ["# Network precision: " + " vs ".join(data["precisions"]), "", _cpu_line(data["machine"]), "",
             "Volumes in mL from the `_volumes.tsv` of each run; agreement: share of the voxels labelled "
             "IPH, EAH or IVH in either label map that have the same label in both.", ""]
    for precision in others:
        lines += [f"## {precision} against {ref}", "",
                  "| dataset | scan | " + " | ".join(f"{v} {ref} / {precision}" for v in VOLUMES)
                  + " | hemorrhage Δ | hemorrhage voxels | agreement | passes |",
                  "|---|---|" + "---:|" * (len(VOLUMES) + 3) + ":-:|"]
        for row in data["rows"]:
            va, vb = row["volumes"][ref], row["volumes"][precision]
            a, b = va["hemorrhage_ml"], vb["hemorrhage_ml"]
            rel = f"{(b - a) / a * 100:+.2f} %" if a else f"{b - a:+.3f} mL"
            agree = row["agreement"][precision]
            lines.append(
                f"| {row['dataset']} | {row['scan']} | " + " | ".join(f"{va[v]:.2f} / {vb[v]:.2f}" for v in VOLUMES)
                + f" | {rel} | {agree['hemorrhage_voxels_either']} | {agree['hemorrhage_agreement'] * 100:.2f} % "
                f"| {'yes' if row['pass'][precision] else '**no**'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="the first is the reference")
    parser.add_argument("--scans", nargs="+", default=DEFAULT_SCANS)
    parser.add_argument("--n-procs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "precision")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    data = compare(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(data, indent=1))
    (args.out / "precision.md").write_text(render(data))
    print(render(data))
    return 0 if all(all(r["pass"].values()) for r in data["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
