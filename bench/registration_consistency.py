#!/usr/bin/env python
"""Time ANTs registration schedules on the real CTs and measure how consistent they are.

    python bench/registration_consistency.py [--scans mistie-0034 ge-head deepbleed-brain]
        [--settings current previous s3_sampled20 s4] [--out bench/results/registration]

There is no ground-truth transform for a real scan, so each schedule is judged by
**motion consistency**: the scan is registered as it is (transform T) and again after its
affine has been moved by a known rigid motion M (transform T'). A registration that finds the
same anatomy returns T' = M o T; the error is the mean distance (mm) between T'(p) and M(T(p))
over the template's brain voxels p, averaged over the motions. Each schedule is also compared
with the previous default schedule (mean distance of the same points under both transforms).
Timings are of the ``register_to_template`` call alone (one ITK thread), one run each; run on a
quiet machine. Writes ``registration.json`` and ``registration.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from run_benchmark import _cpu_line  # noqa: E402

from ichseg.pipeline.assets import TEMPLATE_CT, TEMPLATE_MASK, get_asset  # noqa: E402
from ichseg.pipeline.brain import extract_brain  # noqa: E402
from ichseg.pipeline.cpu import machine_description  # noqa: E402
from ichseg.pipeline.geometry import voxel_sizes  # noqa: E402
from ichseg.pipeline.registration import (  # noqa: E402
    DEFAULT_REGISTRATION,
    PREVIOUS_REGISTRATION,
    register_to_template,
)

SCANS = {
    "mistie-0034": "ct/mistie-0034_ct.nii.gz",
    "ge-head": "ct/ge-head_ct.nii.gz",
    "deepbleed-brain": "ct/deepbleed-brain_ct.nii.gz",
}

SETTINGS = {
    "current": DEFAULT_REGISTRATION,
    "previous": PREVIOUS_REGISTRATION,
    "uncapped": replace(DEFAULT_REGISTRATION, iterations=PREVIOUS_REGISTRATION.iterations),
    "masked_dense": replace(DEFAULT_REGISTRATION, sampling_rate=1.0, iterations=PREVIOUS_REGISTRATION.iterations),
    "dense": replace(DEFAULT_REGISTRATION, sampling_rate=1.0, metric_margin_mm=None,
                     iterations=PREVIOUS_REGISTRATION.iterations),
    "sampled20": replace(DEFAULT_REGISTRATION, sampling_rate=0.2, metric_margin_mm=None,
                         iterations=PREVIOUS_REGISTRATION.iterations),
    "masked_sampled25": replace(DEFAULT_REGISTRATION, sampling_rate=0.25),
}

#: Rigid motions applied to the scan's world coordinates: (rotation axis, degrees, shift mm).
MOTIONS = (((1.0, 0.0, 0.0), 8.0, (5.0, -4.0, 3.0)), ((0.3, 1.0, 0.5), -7.0, (-3.0, 6.0, -4.0)))


def rigid(axis, degrees, shift) -> np.ndarray:
    """4x4 RAS rigid motion (Rodrigues rotation about ``axis`` through the origin, then shift)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx
    m[:3, 3] = shift
    return m


def template_brain_points(step: int = 2) -> np.ndarray:
    """World (RAS) coordinates of every ``step``-th template brain voxel, homogeneous (4, N)."""
    img = nib.load(str(get_asset(TEMPLATE_MASK)))
    ijk = np.argwhere(np.asanyarray(img.dataobj)[::step, ::step, ::step] > 0.5) * step
    return img.affine @ np.c_[ijk, np.ones(len(ijk))].T


def mean_distance(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    return float(np.linalg.norm((a @ points - b @ points)[:3], axis=0).mean())


def register(ct, affine, mask, settings, workdir) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = register_to_template(ct, affine, mask, get_asset(TEMPLATE_CT), Path(workdir) / "t.mat",
                               "Rigid", seed=1, settings=settings)
    return out["template_to_scan"], time.perf_counter() - start


def measure(scans, names, out_dir: Path) -> dict:
    points = template_brain_points()
    results = {"machine": machine_description(), "settings": {n: asdict(SETTINGS[n]) for n in names},
               "motions": [list(map(list, (a, [d], s))) for a, d, s in MOTIONS], "runs": []}
    with tempfile.TemporaryDirectory() as workdir:
        for scan in scans:
            img = nib.as_closest_canonical(nib.load(str(get_asset(SCANS[scan]))))
            ct = np.asanyarray(img.dataobj, dtype=np.float32)
            mask = extract_brain(ct, voxel_sizes(img.affine))
            base = {}
            for name in names:
                t0, seconds = register(ct, img.affine, mask, SETTINGS[name], workdir)
                base[name] = t0
                errors = []
                for motion in MOTIONS:
                    m = rigid(*motion)
                    moved, _ = register(ct, m @ img.affine, mask, SETTINGS[name], workdir)
                    errors.append(mean_distance(moved, m @ t0, points))
                row = {"scan": scan, "setting": name, "seconds": round(seconds, 2),
                       "motion_error_mm": round(float(np.mean(errors)), 2),
                       "motion_errors_mm": [round(e, 2) for e in errors]}
                if "previous" in base:
                    row["vs_previous_mm"] = round(mean_distance(t0, base["previous"], points), 2)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "registration.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "registration.md").write_text(render(results))
    return results


def render(results: dict) -> str:
    lines = [
        "# Registration schedules: time and motion consistency", "",
        _cpu_line(results["machine"]),
        "One ITK thread; seconds of one `register_to_template` call; motion error: mean distance (mm)",
        "of the template's brain points between T' and M o T over the motions (lower is better).", "",
        "| scan | setting | spacing mm | sampling | metric margin mm | iterations | seconds | motion error mm | vs previous mm |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in results["runs"]:
        s = results["settings"][row["setting"]]
        lines.append(
            f"| {row['scan']} | {row['setting']} | {s['spacing_mm']:g} | {s['sampling_rate']:g} | "
            f"{'box' if s['metric_margin_mm'] is None else format(s['metric_margin_mm'], 'g')} | "
            f"{'x'.join(map(str, s['iterations']))} | {row['seconds']:.1f} | {row['motion_error_mm']:.2f} | "
            f"{row.get('vs_previous_mm', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", nargs="+", default=list(SCANS), choices=list(SCANS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "registration")
    args = parser.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    names = sorted(set(args.settings), key=lambda n: (n != "previous", list(SETTINGS).index(n)))
    measure(args.scans, names, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
