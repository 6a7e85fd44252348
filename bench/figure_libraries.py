"""Measure plotting libraries for ichseg's CT figures: matplotlib as ichseg draws it, nilearn, nireports.

    python bench/figure_libraries.py CT DSEG BRAIN_MASK [--repeats 3] [--out DIR]

Draws the same axial segmentation mosaic (the same slices, the brain window 0-80 HU, the
label colours of :mod:`ichseg.pipeline.labels`, radiological convention) with:

* ``ichseg``: :func:`ichseg.pipeline.figures.plot_segmentation_mosaic` (matplotlib, one JPEG
  raster per panel inside the SVG);
* ``nilearn``: :func:`nilearn.plotting.plot_anat` (``vmin``/``vmax`` for the window,
  ``display_mode="z"`` at ichseg's slices, ``radiological=True``), the label map with
  ``add_overlay`` and the brain mask with ``add_contours``;
* ``nireports``: :func:`nireports.reportlets.mosaic.plot_segs` (the reportlet fMRIPrep uses
  for segmentations: contours of each mask over the image).

and reports, for each: median time of ``--repeats`` runs, SVG size, and whether the output has
the CT window, filled label colours, its own slice selection and R/L markers (read from what
each function accepts; the figures are written to ``--out`` to be looked at). CPU model and
versions come first, as in every benchmark of ichseg.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _slices_mm(ct: nib.Nifti1Image, dseg: nib.Nifti1Image, mask: nib.Nifti1Image, n: int) -> list[float]:
    """ichseg's slice choice, as world z (mm) for the libraries that cut in world space."""
    from ichseg.pipeline.figures import select_slices
    from ichseg.pipeline.labels import HEMORRHAGE_INDICES

    labels = np.asanyarray(nib.as_closest_canonical(dseg).dataobj)
    brain = np.asanyarray(nib.as_closest_canonical(mask).dataobj) > 0
    chosen = select_slices(brain.sum(axis=(0, 1)), np.isin(labels, HEMORRHAGE_INDICES).sum(axis=(0, 1)), n)
    canonical = nib.as_closest_canonical(ct)
    centre = np.array(canonical.shape[:3]) / 2
    return [float((canonical.affine @ np.array([centre[0], centre[1], k, 1.0]))[2]) for k in chosen]


def _label_cmap():
    from matplotlib.colors import ListedColormap

    from ichseg.pipeline.labels import LABELS

    top = max(label.index for label in LABELS)
    colours = ["#00000000"] * (top + 1)
    for label in LABELS:
        if label.index:
            colours[label.index] = label.color
    return ListedColormap(colours)


def draw_ichseg(ct, dseg, mask, out, n):
    from ichseg.pipeline.figures import plot_segmentation_mosaic

    plot_segmentation_mosaic(ct, dseg, mask, out, n_slices=n)


def draw_nilearn(ct, dseg, mask, out, n):
    import matplotlib.pyplot as plt
    from nilearn import plotting

    cuts = sorted(_slices_mm(nib.load(ct), nib.load(dseg), nib.load(mask), n))
    figure = plt.figure(figsize=(1.75 * len(cuts), 2.2), facecolor="black")  # ichseg's panel width
    display = plotting.plot_anat(str(ct), display_mode="z", cut_coords=cuts, vmin=0.0, vmax=80.0, dim=0,
                                 black_bg=True, radiological=True, draw_cross=False, figure=figure,
                                 colorbar=False)
    display.add_overlay(str(dseg), cmap=_label_cmap(), vmin=0, vmax=_label_cmap().N - 1, alpha=0.5,
                        interpolation="nearest")
    display.add_contours(str(mask), levels=[0.5], colors=["#22d3ee"], linewidths=0.6)
    display.savefig(str(out))
    display.close()
    plt.close(figure)


def draw_nireports(ct, dseg, mask, out, n):
    from nireports.reportlets.mosaic import plot_segs

    hem = nib.load(dseg)
    masks = []
    tmp = Path(tempfile.mkdtemp())
    for index in (1, 2, 3, 4):
        data = (np.asanyarray(hem.dataobj) == index).astype(np.uint8)
        path = tmp / f"label{index}.nii.gz"
        nib.save(nib.Nifti1Image(data, hem.affine, hem.header), str(path))
        masks.append(str(path))
    masks.append(str(mask))
    from ichseg.pipeline.labels import LABELS

    colours = [label.color for label in sorted(LABELS, key=lambda label: label.index) if label.index] + ["#22d3ee"]
    # one SVG figure per display mode; the cuts are its own (7, evenly spaced in the mask's box)
    svgs = plot_segs(str(ct), masks, bbox_nii=str(mask), masked=False, colors=colours, compress=False,
                     vmin=0.0, vmax=80.0, dimensions=("z",))
    Path(out).write_text(svgs[0].to_str().decode() if isinstance(svgs[0].to_str(), bytes) else svgs[0].to_str())


CAPABILITIES = {
    # what each call accepts, from its signature and documentation
    "ichseg": {"CT window": "yes (BRAIN_WINDOW_HU)", "filled labels": "yes", "hemorrhage slices": "yes",
               "R/L markers": "yes, per panel", "own grid (tilt)": "yes", "raster": "JPEG"},
    "nilearn": {"CT window": "yes (vmin/vmax)", "filled labels": "yes (add_overlay)",
                "hemorrhage slices": "cut_coords in mm (ichseg chooses)", "R/L markers": "yes, once",
                "own grid (tilt)": "no, resampled to world axes", "raster": "PNG"},
    "nireports": {"CT window": "vmin/vmax (default: percentiles)", "filled labels": "no (contours)",
                  "hemorrhage slices": "no (7 evenly spaced cuts in a box)", "R/L markers": "no",
                  "own grid (tilt)": "no, resampled", "raster": "PNG"},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ct")
    p.add_argument("dseg")
    p.add_argument("brain_mask")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("figure-libraries"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import nilearn
    import nireports

    print(f"CPU: {_cpu_model()}; matplotlib {matplotlib.__version__}, nilearn {nilearn.__version__}, "
          f"nireports {nireports.__version__}")
    print("| library | median s | SVG kB | " + " | ".join(CAPABILITIES["ichseg"]) + " |")
    print("|---|---:|---:|" + "---|" * len(CAPABILITIES["ichseg"]))
    for name, draw in (("ichseg", draw_ichseg), ("nilearn", draw_nilearn), ("nireports", draw_nireports)):
        out = args.out / f"{name}.svg"
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            try:
                draw(args.ct, args.dseg, args.brain_mask, out, args.slices)
            except Exception as exc:  # a library that cannot draw this input is a finding, not a crash
                print(f"| {name} | failed: {type(exc).__name__}: {exc} |")
                break
            times.append(time.perf_counter() - began)
        else:
            caps = " | ".join(CAPABILITIES[name].values())
            print(f"| {name} | {statistics.median(times):.2f} | {out.stat().st_size / 1024:.0f} | {caps} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
