"""Compare two ichseg output folders by value: did a change keep the results the same?

    python bench/compare_derivatives.py BEFORE_DIR AFTER_DIR [--allow-added GLOB ...]

NIfTI files must have equal voxel data, data type and affine; TSV tables equal cells; JSON
files equal content except the keys that record when, where or how fast a run happened;
other files (transforms) equal bytes. Reports and figures (HTML, SVG) and the logs are not
compared. A file in BEFORE that AFTER lacks is a difference; a file only in AFTER is one
unless it matches an ``--allow-added`` pattern (e.g. new sidecars). Exit status 0 when the
folders agree, 1 otherwise; every difference is printed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

#: JSON keys that differ between identical runs: timings, dates, the machine and its threads,
#: paths of the run.
VOLATILE_KEYS = {"inference_seconds", "roi_voxels_per_s", "torch_threads", "time", "machine", "Sources", "weights",
                 "GeneratedBy", "SourceDatasets", "DatasetLinks"}
NOT_COMPARED = ("*.html", "*.svg", "logs/*", "*/log/.*")


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
            and not any(fnmatch.fnmatch(p.relative_to(root).as_posix(), g) for g in NOT_COMPARED)}


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def compare_file(a: Path, b: Path) -> str | None:
    """None when equal by value, else what differs."""
    name = a.name
    if name.endswith((".nii", ".nii.gz")):
        ia, ib = nib.load(a), nib.load(b)
        if ia.get_data_dtype() != ib.get_data_dtype():
            return f"data type {ia.get_data_dtype()} -> {ib.get_data_dtype()}"
        if not np.array_equal(ia.affine, ib.affine):
            return "affine differs"
        da, db = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
        if da.shape != db.shape or not np.array_equal(da, db, equal_nan=True):
            n = int(np.count_nonzero(da != db)) if da.shape == db.shape else -1
            return f"voxel data differ ({n} voxels)"
        return None
    if name.endswith(".tsv"):
        ta = pd.read_csv(a, sep="\t", dtype=str, keep_default_na=False)
        tb = pd.read_csv(b, sep="\t", dtype=str, keep_default_na=False)
        if list(ta.columns) != list(tb.columns):
            return f"columns differ: {sorted(set(ta.columns) ^ set(tb.columns))}"
        if not ta.equals(tb):
            diff = (ta != tb).any()
            return f"cells differ in columns {list(diff[diff].index)}"
        return None
    if name.endswith(".json"):
        ja, jb = _strip(json.loads(a.read_text())), _strip(json.loads(b.read_text()))
        if ja != jb:
            keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else []
            return f"content differs (keys {keys})"
        return None
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def compare(before: Path, after: Path, allow_added: list[str]) -> list[str]:
    """The differences between two output folders, as lines of text."""
    files_a, files_b = _files(before), _files(after)
    problems = [f"missing in {after}: {rel}" for rel in sorted(files_a - files_b)]
    problems += [f"only in {after}: {rel}" for rel in sorted(files_b - files_a)
                 if not any(fnmatch.fnmatch(rel, g) for g in allow_added)]
    for rel in sorted(files_a & files_b):
        why = compare_file(before / rel, after / rel)
        if why:
            problems.append(f"{rel}: {why}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--allow-added", nargs="*", default=[], metavar="GLOB",
                        help="files only in AFTER that are expected, e.g. '*_dseg.json'")
    args = parser.parse_args(argv)
    problems = compare(args.before, args.after, args.allow_added)
    compared = len(_files(args.before) & _files(args.after))
    for line in problems:
        print(line)
    print(f"{compared} files compared by value; {len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
