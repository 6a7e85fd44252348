#!/usr/bin/env python
"""Write the truth set: real hemorrhage shapes painted into real head CTs, with their truth.

    python bench/make_truthset.py OUT [--split heldout|tuning] [--n N] [--seed S]
        [--hosts ge-head mistie-0034 deepbleed-brain] [--kind iph|ivh|eah] [--ivh-hu LOW HIGH]
        [--volume-ml LOW HIGH]

The shapes are the HemSeg-500 masks (asset ``lesion-shapes/HemSeg-500.zip``): the *tuning*
set draws from its ``train`` and ``val`` splits, the *held-out* set from ``test`` only. Never
tune a method on the held-out set. ``--n`` shapes are chosen to spread over the range of
volumes (one from each of ``n`` equal-count volume bins, seeded; ``--volume-ml`` keeps the
shapes of that range only, for a set built like one of known make-up); phantom ``i`` puts shape
``i`` into the hosts in turn, each with its own seeded appearance (clot density, texture, oedema
rim; :mod:`ichseg.pipeline.lesion_insertion`); a shape that finds no room in a host tries the
next. The same arguments give the same files.

``--kind ivh`` paints intraventricular blood instead (no shapes: blood layered in the host's
lateral ventricles up to a seeded level, :func:`~ichseg.pipeline.lesion_insertion.insert_ventricular_blood`),
``--n`` phantoms (default 12) in the hosts in turn, into ``OUT/<split>-ivh/``; their
references label it IVH, so ``ichseg evaluate`` scores the class as well as the total.
``--ivh-hu`` sets the range of its density. ``--kind eah`` paints a subdural crescent along the
convexity's inner table (:func:`~ichseg.pipeline.lesion_insertion.insert_extra_axial_blood`),
labelled EAH, into ``OUT/<split>-eah/``. The split names only the seed's purpose for these
kinds (they use no shapes): tune on ``tuning`` and check on ``heldout`` all the same.

Writes, under ``OUT/<split>/``:

* ``bids/``: a BIDS dataset, ``sub-<h|t><NNN>/anat/sub-<...>_ct.nii.gz`` (and the host's
  JSON sidecar);
* ``reference/``: a BIDS derivatives dataset of the truth, ``..._dseg.nii.gz`` (1 IPH, 4
  IVH or 2 EAH, where the lesion covers at least half a voxel, 3 the oedema rim) and, where a patient's head has
  dense tissue of its own (mistie-0034's hematoma), ``..._desc-ignore_mask.nii.gz`` (a normal
  head, :data:`NORMAL_HOSTS`, is scored in full): the input of
  ``ichseg evaluate``; and ``..._label-IPH_desc-fraction_probseg.nii.gz`` (``label-IVH``, ``label-EAH``),
  the share of each voxel the lesion covers (``bench/accuracy.py`` scores the partial voxels apart);
* ``phantoms.tsv``: per phantom, the shape, host, true volume (sum of the partial-volume
  fractions) and appearance.

The real CTs and shapes are test data: keep the truth set out of the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.pipeline.assets import ASSETS, LESION_SHAPES, get_asset
from ichseg.pipeline.geometry import voxel_volume_ml
from ichseg.pipeline.labels import LABELS, write_dseg_tsv
from ichseg.pipeline.lesion_insertion import (
    EAH,
    IPH,
    IVH,
    VENTRICULAR_CLOT_HU,
    Appearance,
    NoRoom,
    fraction_entities,
    insert_extra_axial_blood,
    insert_lesion,
    insert_ventricular_blood,
    prepare_host,
    read_shapes,
)

SPLITS = {"heldout": ("test",), "tuning": ("train", "val")}
#: What a phantom holds (a real shape in the parenchyma, blood layered in the ventricles, or a
#: subdural crescent): its class, and the letter its participant labels add after the split's.
KINDS = {"iph": (IPH, ""), "ivh": (IVH, "v"), "eah": (EAH, "e")}
#: Phantoms of the kinds drawn without shapes (ivh, eah) when ``--n`` is not given.
DEFAULT_DRAWN_PHANTOMS = 12
DEFAULT_HOSTS = ["ge-head", "mistie-0034", "deepbleed-brain"]
#: Hosts known to hold no hemorrhage: scored in full, their dense regions included.
NORMAL_HOSTS = {"ge-head"}


def _save(data: np.ndarray, host_header: nib.Nifti1Header, affine: np.ndarray, path: Path, dtype) -> None:
    header = host_header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine, header)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _data_license(hosts: list[str]) -> str:
    """The terms of what the phantoms are made of (host CTs and shapes), for dataset_description's
    License: weights trained on the truth set derive from these data too."""
    parts = [f"{relpath}: {ASSETS[relpath].license}"
             for relpath in [f"ct/{name}_ct.nii.gz" for name in hosts] + [LESION_SHAPES]]
    return "made from " + "; ".join(parts)


def _description(path: Path, name: str, derivative: bool, license_text: str) -> None:
    text = {"Name": name, "BIDSVersion": "1.9.0", "License": license_text}
    if derivative:
        text.update(DatasetType="derivative",
                    GeneratedBy=[{"Name": "ichseg bench/make_truthset.py",
                                  "Description": "hemorrhage shapes painted into real head CTs"}])
    path.mkdir(parents=True, exist_ok=True)
    (path / "dataset_description.json").write_text(json.dumps(text, indent=2) + "\n")


def _size_spread(shapes, n: int | None, rng: np.random.Generator) -> list[int]:
    """Shape indices to use in turn: ``n`` shapes spread over the range of volumes (one at
    random from each of ``n`` equal-count volume bins), then the rest in random order as
    spares for shapes that find no room."""
    by_volume = np.argsort([s.volume_ml for s in shapes], kind="stable")
    if n is None or n >= len(shapes):
        return [int(i) for i in rng.permutation(len(shapes))]
    bins = np.array_split(by_volume, n)
    chosen = [int(b[rng.integers(len(b))]) for b in bins]
    rest = [int(i) for i in rng.permutation(len(shapes)) if int(i) not in set(chosen)]
    return [chosen[i] for i in rng.permutation(len(chosen))] + rest


def prepare_hosts(hosts: list[str]) -> list[tuple]:
    """``(host, sidecar or None)`` of each named host CT, prepared to receive lesions."""
    prepared = []
    for name in hosts:
        ct = get_asset(f"ct/{name}_ct.nii.gz")
        sidecar = ct.with_name(ct.name.replace(".nii.gz", ".json"))
        host = prepare_host(name, nib.load(str(ct)), normal=name in NORMAL_HOSTS)
        prepared.append((host, sidecar if sidecar.is_file() else None))
    return prepared


def _first_host(prepared: list[tuple], index: int, insert) -> tuple | None:
    """``(host, sidecar, inserted)`` of the first host, from phantom ``index``'s turn on, where
    ``insert(host)`` finds room; None when none does."""
    for k in range(len(prepared)):
        host, sidecar = prepared[(index + k) % len(prepared)]
        try:
            return host, sidecar, insert(host)
        except NoRoom as exc:
            print(f"  {exc}", flush=True)
    return None


def split_shapes(split: str, volume_ml: tuple[float, float] | None = None) -> list:
    """The shapes of a split, only those of ``volume_ml`` (low, high; mL) when given."""
    shapes = [s for part in SPLITS[split] for s in read_shapes(get_asset(LESION_SHAPES), part)]
    if volume_ml is None:
        return shapes
    return [s for s in shapes if volume_ml[0] <= s.volume_ml <= volume_ml[1]]


def _phantoms(kind: str, split: str, n: int | None, seed: int, prepared: list[tuple],
              ivh_hu: tuple[float, float] = VENTRICULAR_CLOT_HU, volume_ml: tuple[float, float] | None = None):
    """``(index, host, sidecar, inserted, details)`` of each phantom, in order: the next shape
    in the host that takes it, or the next host's ventricles or convexity."""
    if kind in ("ivh", "eah"):
        for index in range(DEFAULT_DRAWN_PHANTOMS if n is None else n):
            if kind == "ivh":
                rng = np.random.default_rng([seed, 2, index])
                placed = _first_host(prepared, index, lambda host: insert_ventricular_blood(
                    host, rng, Appearance.draw_ventricular(rng, ivh_hu)))
            else:
                rng = np.random.default_rng([seed, 3, index])
                placed = _first_host(prepared, index, lambda host: insert_extra_axial_blood(host, rng))
            if placed is not None:
                yield index, *placed, {}
        return
    shapes = split_shapes(split, volume_ml)
    order = _size_spread(shapes, n, np.random.default_rng([seed, 0]))
    target, index = len(shapes) if n is None else min(n, len(shapes)), 0
    for position in order:
        if index == target:
            break
        shape = shapes[position]
        rng = np.random.default_rng([seed, 1, int(position)])
        placed = _first_host(prepared, index, lambda host: insert_lesion(host, shape, rng))
        if placed is not None:
            yield index, *placed, {"shape": shape.name, "shape_ml": round(shape.volume_ml, 3)}
            index += 1


def make_truthset(out: Path, split: str, n: int | None, seed: int, hosts: list[str], kind: str = "iph",
                  ivh_hu: tuple[float, float] = VENTRICULAR_CLOT_HU,
                  volume_ml: tuple[float, float] | None = None) -> list[dict]:
    prepared = prepare_hosts(hosts)
    root = out / (split if kind == "iph" else f"{split}-{kind}")
    bids, reference = root / "bids", root / "reference"
    license_text = _data_license(hosts)
    _description(bids, f"ichseg truth set ({root.name})", derivative=False, license_text=license_text)
    _description(reference, f"ichseg truth set ({root.name}): reference segmentations", derivative=True,
                 license_text=license_text)
    write_dseg_tsv(reference / "dseg.tsv")
    label_index, letter = KINDS[kind]
    abbreviation = next(lab.abbreviation for lab in LABELS if lab.index == label_index)
    rows, prefix = [], split[0] + letter
    for index, host, sidecar, inserted, details in _phantoms(kind, split, n, seed, prepared, ivh_hu, volume_ml):
        label = f"{prefix}{index + 1:03d}"
        anat = f"sub-{label}/anat/sub-{label}"
        _save(np.round(inserted.hu), host.header, host.affine, bids / f"{anat}_ct.nii.gz", np.int16)
        if sidecar is not None:
            shutil.copyfile(sidecar, bids / f"{anat}_ct.json")
        _save(inserted.labels, host.header, host.affine, reference / f"{anat}_dseg.nii.gz", np.uint8)
        # the share of each voxel the lesion covers: what the half-covered mask rounds off
        _save(inserted.fraction, host.header, host.affine,
              reference / f"{anat}_{fraction_entities(abbreviation)}.nii.gz", np.float32)
        if host.ignore.any():
            _save(host.ignore, host.header, host.affine, reference / f"{anat}_desc-ignore_mask.nii.gz", np.uint8)
        reference_ml = float((inserted.labels == label_index).sum()) * voxel_volume_ml(host.affine)
        row = {"participant_id": f"sub-{label}", **details, "host": host.name,
               f"{abbreviation.lower()}_reference_ml": round(reference_ml, 3), **inserted.record()}
        rows.append(row)
        print(f"sub-{label}: {details.get('shape', abbreviation)} in {host.name}, {inserted.volume_ml:.1f} mL",
              flush=True)
    columns = list(rows[0]) if rows else ["participant_id"]
    lines = ["\t".join(columns)] + ["\t".join(str(r[c]) for c in columns) for r in rows]
    (root / "phantoms.tsv").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", choices=sorted(SPLITS), default="heldout")
    parser.add_argument("--n", type=int, default=None, help="number of phantoms (default: every shape)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hosts", nargs="+", default=DEFAULT_HOSTS)
    parser.add_argument("--kind", choices=sorted(KINDS), default="iph",
                        help="iph: real shapes in the parenchyma (default); ivh: blood layered in the "
                             "ventricles; eah: a subdural crescent over the convexity")
    parser.add_argument("--ivh-hu", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="with --kind ivh: density range of the ventricular blood, HU "
                             f"(default: {VENTRICULAR_CLOT_HU[0]:g} {VENTRICULAR_CLOT_HU[1]:g})")
    parser.add_argument("--volume-ml", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="with --kind iph: only the shapes of LOW to HIGH mL (default: every size)")
    args = parser.parse_args(argv)
    if args.volume_ml is not None:
        if args.kind != "iph":
            parser.error(f"--volume-ml chooses the shapes of --kind iph; --kind {args.kind} uses none: "
                         "leave --volume-ml out")
        if args.volume_ml[0] > args.volume_ml[1]:
            parser.error(f"--volume-ml {args.volume_ml[0]:g} {args.volume_ml[1]:g}: give the lower volume first")
    if args.ivh_hu is None:
        args.ivh_hu = VENTRICULAR_CLOT_HU
    elif args.kind != "ivh":
        parser.error(f"--ivh-hu sets the ventricular blood of --kind ivh; --kind {args.kind} paints none: "
                     "leave --ivh-hu out or add --kind ivh")
    if args.ivh_hu[0] > args.ivh_hu[1]:
        parser.error(f"--ivh-hu {args.ivh_hu[0]:g} {args.ivh_hu[1]:g}: give the lower density first")
    rows = make_truthset(args.out, args.split, args.n, args.seed, args.hosts, args.kind, tuple(args.ivh_hu),
                         None if args.volume_ml is None else tuple(args.volume_ml))
    print(f"{len(rows)} phantoms written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
