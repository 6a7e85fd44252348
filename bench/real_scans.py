#!/usr/bin/env python
"""The real CTs under several settings: volumes, agreement and the label maps side by side.

    python bench/real_scans.py OUT [--setting NAME "ICHSEG ARGS" ...]
        [--scans mistie-0034 ge-head deepbleed-brain] [--n-procs N] [--score-only]

The truth set (``bench/accuracy.py``) scores settings on painted lesions; the real scans have
no reference outline, so a setting must also keep their label maps plausible (issue 11): the
hematoma of mistie-0034 with its oedema rim, the normal GE head clean. Each setting runs
``ichseg OUT/bids OUT/<name> participant`` with its arguments (the first setting, by default
``default`` with none, is the one the others are compared with). Writes ``OUT/real_scans.md``
and ``OUT/real_scans.json`` (per scan and setting: the volume of each label, and the Dice of
the hemorrhage and of the oedema against the first setting) and, per scan,
``OUT/figures/<scan>_labelmaps.svg``: the label maps of every setting on the same slices (those
with the most hemorrhage and those where the settings disagree most). The figures show the
patients' scans: keep them out of the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy import run_setting  # noqa: E402
from compare_precision import VOLUMES, volumes  # noqa: E402
from run_benchmark import DEFAULT_SCANS, _cpu_line, dataset_subject, make_dataset  # noqa: E402

from ichseg.pipeline.cpu import machine_description  # noqa: E402
from ichseg.pipeline.figures import plot_label_map_comparison  # noqa: E402
from ichseg.pipeline.metrics import HEMORRHAGE, class_masks, dice  # noqa: E402
from ichseg.pipeline.naming import derivative_path  # noqa: E402

#: Classes whose agreement with the first setting is reported.
COMPARED = (HEMORRHAGE, "oed")


def agreement_with(first: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Dice of each class of :data:`COMPARED` between two label maps (NaN where both lack it)."""
    a, b = class_masks(first), class_masks(other)
    return {name: dice(a[name], b[name]) for name in COMPARED}


def compare_settings(outputs: dict[str, Path], files: list[tuple[str, Path]], figures: Path | None) -> list[dict]:
    """One row per scan: volumes of every setting, agreement of each with the first; with
    ``figures``, the label maps of every setting side by side."""
    first, *_ = outputs
    rows = []
    for name, source in files:
        maps = {setting: derivative_path(out, source, "dseg") for setting, out in outputs.items()}
        missing = [setting for setting, path in maps.items() if not path.is_file()]
        row = {"scan": name, "volumes": {}, "agreement": {}, "failed": missing}
        present = {setting: path for setting, path in maps.items() if setting not in missing}
        for setting in present:
            row["volumes"][setting] = volumes(outputs[setting], source)
        if first in present:
            reference = np.asanyarray(nib.load(str(present[first])).dataobj)
            for setting, path in present.items():
                if setting != first:
                    row["agreement"][setting] = agreement_with(reference, np.asanyarray(nib.load(str(path)).dataobj))
        if figures is not None and present:
            captions = {s: f"hemorrhage {v['hemorrhage_ml']:.2f} mL, oedema {v['oed_ml']:.2f} mL"
                        for s, v in row["volumes"].items()}
            figures.mkdir(parents=True, exist_ok=True)
            row["figure"] = str(plot_label_map_comparison(source, present, figures / f"{name}_labelmaps.svg",
                                                          captions=captions))
        rows.append(row)
    return rows


def render(data: dict) -> str:
    settings = data["settings"]
    first = settings[0][0]
    lines = ["# The real CTs under several settings", "", _cpu_line(data["machine"]), "",
             "Settings: " + "; ".join(f"`{name}`: `ichseg BIDS OUT participant{' ' + args if args else ''}`"
                                      for name, args in settings),
             "", f"Volumes in mL from each run's `_volumes.tsv`; Dice against `{first}` (the hemorrhage, IPH + EAH + "
             "IVH, and the oedema) on the scan's grid.", "",
             "| scan | setting | " + " | ".join(VOLUMES) + " | Dice hemorrhage | Dice oedema |",
             "|---|---|" + "---:|" * (len(VOLUMES) + 2)]
    for row in data["rows"]:
        for name, _ in settings:
            if name in row["failed"]:
                lines.append(f"| {row['scan']} | {name} | failed |" + " |" * (len(VOLUMES) + 1))
                continue
            v = row["volumes"][name]
            agree = row["agreement"].get(name, {})
            cells = [f"{agree[c]:.3f}" if c in agree and agree[c] == agree[c] else "" for c in COMPARED]
            lines.append(f"| {row['scan']} | {name} | " + " | ".join(f"{v[c]:.2f}" for c in VOLUMES)
                         + " | " + " | ".join(cells) + " |")
    figures = [row["figure"] for row in data["rows"] if row.get("figure")]
    if figures:
        lines += ["", "Label maps side by side (a row per setting): "
                  + ", ".join(f"`{Path(f).name}`" for f in figures) + " in the output folder's `figures/`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--setting", nargs=2, action="append", metavar=("NAME", "ARGS"),
                        help="a named setting and its ichseg arguments (repeatable; the first is the reference)")
    parser.add_argument("--scans", nargs="+", default=DEFAULT_SCANS)
    parser.add_argument("--n-procs", type=int, default=2)
    parser.add_argument("--score-only", action="store_true",
                        help="compare the outputs already in OUT/NAME, without running ichseg")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    settings = args.setting or [("default", "")]
    bids = args.out / "bids"
    if bids.is_dir():
        files = [(name, next((bids / dataset_subject(name)).glob("anat/*_ct.nii.gz"))) for name in args.scans]
    else:
        files = make_dataset(bids, args.scans)
    outputs = {name: (args.out / name if args.score_only else run_setting(args.out, args.out, name, extra, args.n_procs))
               for name, extra in settings}
    data = {"machine": machine_description(), "settings": settings,
            "rows": compare_settings(outputs, files, None if args.no_figures else args.out / "figures")}
    (args.out / "real_scans.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    (args.out / "real_scans.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
