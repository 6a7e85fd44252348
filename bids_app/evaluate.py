"""``ichseg evaluate``: ichseg's label maps against reference segmentations.

Reads the ``_dseg`` label maps of an ichseg derivatives folder and a BIDS derivatives
dataset of reference segmentations (manual tracings, or the truth of phantoms), pairs them
by scan, and writes, into the output folder:

* ``evaluation.tsv``: one row per scan with Dice, volumes, volume difference and HD95 per
  class and for all hemorrhage;
* ``evaluation.json``: the same rows and the dataset figures (mean and median Dice, Pearson r
  and ICC of the volumes, mean difference, RMSE, Bland-Altman limits);
* ``evaluation.html``: those figures with a scatter plot and a Bland-Altman plot.

A reference is ``sub-<label>[_ses-<label>...]_[desc-<label>_]dseg.nii[.gz]`` (labels as in
ichseg's ``_dseg.tsv``: 1 IPH, 2 EAH, 3 oedema, 4 IVH) or ``..._mask.nii[.gz]`` (any non-zero
voxel is hemorrhage; only the ``hemorrhage`` measures are then computed). An optional
``..._desc-ignore_mask.nii[.gz]`` marks voxels that count in neither map (for example a
hematoma that is not traced). Every map must be on the grid of its CT, as ichseg's are.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.pipeline import __version__
from ichseg.pipeline.fileutils import atomic_output
from ichseg.pipeline.metrics import (
    HEMORRHAGE,
    agreement,
    agreement_by_volume,
    class_masks,
    compare_labels,
)
from ichseg.pipeline.naming import (
    DERIVATIVE_ENTITIES,
    entities_from_path,
    find_derivatives,
    scan_id,
)
from ichseg.pipeline.tsv import MISSING, is_missing
from ichseg.pipeline.volumes import STATUS_MISSING, STATUS_OK

LOGGER = logging.getLogger("ichseg")

#: Reference entities that do not identify the scan.
_REFERENCE_ONLY = frozenset(DERIVATIVE_ENTITIES) | {"suffix", "extension"}


class EvaluationError(ValueError):
    """A problem with the folders given to ``ichseg evaluate`` that the user can fix."""


@dataclass
class Reference:
    """The reference of one scan: a label map or a hemorrhage mask, and an ignore mask."""

    path: Path
    is_mask: bool
    ignore: Path | None = None


def find_references(root: Path) -> dict[str, Reference]:
    """Reference segmentations under ``root``, by scan id."""
    found: dict[str, Reference] = {}
    ignores: dict[str, Path] = {}
    for path in sorted(root.glob("sub-*/**/sub-*")):
        if not path.is_file() or not path.name.endswith((".nii", ".nii.gz")):
            continue
        try:
            entities = entities_from_path(path)
        except ValueError:
            continue
        if entities["suffix"] not in ("dseg", "mask") or "space" in entities:
            continue
        desc = entities.get("desc")
        sid = scan_id({k: v for k, v in entities.items() if k not in _REFERENCE_ONLY})
        if entities["suffix"] == "mask" and desc == "ignore":
            ignores[sid] = path
            continue
        if entities["suffix"] == "mask" and desc == "brain":
            continue
        previous = found.get(sid)
        is_mask = entities["suffix"] == "mask"
        if previous is not None:
            if previous.is_mask and not is_mask:
                found[sid] = Reference(path, is_mask)
            elif previous.is_mask == is_mask:
                raise EvaluationError(
                    f"two references for {sid}: {previous.path} and {path}; keep one, or move the "
                    "other out of the reference folder"
                )
            continue
        found[sid] = Reference(path, is_mask)
    for sid, path in ignores.items():
        if sid in found:
            found[sid].ignore = path
    return found


def _load(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds
        raise EvaluationError(f"{path}: cannot be read as NIfTI ({exc})") from None


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, a_path: Path, b_path: Path) -> None:
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise EvaluationError(
            f"{b_path} is not on the grid of {a_path} (shape {b.shape[:3]} vs {a.shape[:3]}): "
            "the reference must be on its CT's own grid, as ichseg's _dseg is; resample it "
            "with nearest-neighbour interpolation onto the CT"
        )


def evaluate_scan(prediction: Path, reference: Reference) -> dict:
    """Measures of one scan (see :func:`ichseg.pipeline.metrics.compare_labels`)."""
    pred_img = _load(prediction)
    ref_img = _load(reference.path)
    _same_grid(pred_img, ref_img, prediction, reference.path)
    predicted = np.asanyarray(pred_img.dataobj).astype(np.int16)
    ref = np.asanyarray(ref_img.dataobj)
    ignore = None
    if reference.ignore is not None:
        ignore_img = _load(reference.ignore)
        _same_grid(pred_img, ignore_img, prediction, reference.ignore)
        ignore = np.asanyarray(ignore_img.dataobj) > 0
    if reference.is_mask:
        # a hemorrhage mask: any hemorrhage label of the prediction counts
        labels = np.where(ref > 0, 1, 0).astype(np.int16)
        merged = np.where(class_masks(predicted)[HEMORRHAGE], 1, 0).astype(np.int16)
        return compare_labels(merged, labels, pred_img.affine, ignore, classes=[HEMORRHAGE])
    return compare_labels(predicted, ref.astype(np.int16), pred_img.affine, ignore)


def evaluate(derivatives: Path, references: Path) -> dict:
    """Pair every reference with ichseg's label map of the same scan and measure them."""
    if not derivatives.is_dir():
        raise EvaluationError(f"{derivatives}: no such folder (give ichseg's output folder)")
    if not references.is_dir():
        raise EvaluationError(f"{references}: no such folder (give the folder of reference segmentations)")
    predictions = {scan_id(entities): path for entities, path in find_derivatives(derivatives, "dseg")}
    refs = find_references(references)
    if not refs:
        raise EvaluationError(
            f"{references}: no reference segmentations found (expected sub-*/[ses-*/]anat/"
            "sub-*_dseg.nii.gz or sub-*_mask.nii.gz)"
        )
    rows, missing = [], []
    for sid, reference in sorted(refs.items()):
        if sid not in predictions:
            missing.append(sid)
            rows.append({"scan": sid, "status": STATUS_MISSING, "reference": str(reference.path)})
            continue
        measures = evaluate_scan(predictions[sid], reference)
        rows.append({"scan": sid, "status": STATUS_OK, "reference": str(reference.path), **measures})
    ok = [r for r in rows if r["status"] == STATUS_OK]
    classes = sorted({k[: -len("_dice")] for r in ok for k in r if k.endswith("_dice")},
                     key=lambda c: (c != HEMORRHAGE, c))
    dataset, by_volume = {}, []
    for name in classes:
        scored = [r for r in ok if f"{name}_dice" in r]
        if not any(r[f"{name}_ref_ml"] > 0 for r in scored):
            continue
        volumes = ([r[f"{name}_ml"] for r in scored], [r[f"{name}_ref_ml"] for r in scored],
                   [r[f"{name}_dice"] for r in scored])
        dataset[name] = agreement(*volumes)
        if name == HEMORRHAGE:
            by_volume = agreement_by_volume(*volumes)
    return {"ichseg_version": __version__, "derivatives": str(derivatives), "references": str(references),
            "scans": rows, "dataset": dataset, f"{HEMORRHAGE}_by_volume": by_volume,
            "missing_predictions": missing,
            "without_reference": sorted(set(predictions) - set(refs))}


# --------------------------------------------------------------------------- outputs


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _percent(value) -> str:
    if is_missing(value):
        return MISSING
    return f"{100 * value:.1f} %"


def write_table(result: dict, path: Path) -> None:
    columns = ["scan", "status"]
    for row in result["scans"]:
        columns += [k for k in row if k not in columns and k != "reference"]
    columns.append("reference")
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(c)) for c in columns) for row in result["scans"]]
    with atomic_output(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _plots(result: dict) -> dict[str, str]:
    """Scatter and Bland-Altman plots of the hemorrhage volumes, as inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["scans"] if r["status"] == STATUS_OK]
    if not ok:
        return {}
    ref = np.array([r[f"{HEMORRHAGE}_ref_ml"] for r in ok])
    pred = np.array([r[f"{HEMORRHAGE}_ml"] for r in ok])
    figures = {}
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    top = max(1.0, float(max(ref.max(), pred.max())) * 1.05)
    ax.plot([0, top], [0, top], color="0.6", lw=1, label="identity")
    ax.scatter(ref, pred, s=14, color="#e41a1c")
    ax.set_xlabel("reference hemorrhage (mL)")
    ax.set_ylabel("ichseg hemorrhage (mL)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", frameon=False)
    figures["scatter"] = _svg(fig)
    diff, mean = pred - ref, (pred + ref) / 2
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.scatter(mean, diff, s=14, color="#377eb8")
    stats = result["dataset"].get(HEMORRHAGE, {})
    for value, style in [(stats.get("mean_difference_ml"), "-")] + [
        (v, "--") for v in stats.get("limits_of_agreement_ml", [])
    ]:
        if value is not None and not math.isnan(value):
            ax.axhline(value, color="0.4", ls=style, lw=1)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel("mean of ichseg and reference (mL)")
    ax.set_ylabel("ichseg − reference (mL)")
    figures["bland_altman"] = _svg(fig)
    return figures


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def write_report(result: dict, path: Path) -> None:
    """The HTML page: dataset figures, plots and the per-scan table."""
    from ichseg.pipeline.templating import render

    rows = result["scans"]
    columns = [c for c in ("scan", "status", f"{HEMORRHAGE}_dice", f"{HEMORRHAGE}_ml", f"{HEMORRHAGE}_ref_ml",
                           f"{HEMORRHAGE}_diff_ml", f"{HEMORRHAGE}_hd95_mm")]
    html = render("evaluation.html.j2", filters={"num": _cell, "pct": _percent}, result=result,
                  plots=_plots(result), by_volume=result.get(f"{HEMORRHAGE}_by_volume", []),
                  columns=columns, rows=rows, hemorrhage=HEMORRHAGE, status_ok=STATUS_OK, title="ichseg evaluation",
                  nav=[("dataset", "Dataset"), ("plots", "Volumes"), ("scans", "Scans")], version=__version__)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(html)


def run_evaluate(argv: list[str] | None = None) -> int:
    """``ichseg evaluate``: returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="ichseg evaluate",
        description="Compare ichseg's label maps with reference segmentations (Dice, volumes, HD95, "
                    "Bland-Altman) and write evaluation.tsv, .json and .html.",
    )
    parser.add_argument("derivatives", type=Path, help="ichseg's output folder (with sub-*/anat/*_dseg.nii.gz)")
    parser.add_argument("references", type=Path,
                        help="BIDS derivatives folder of reference segmentations (_dseg or _mask)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="where to write the evaluation (default: DERIVATIVES/evaluation)")
    args = parser.parse_args(argv)
    out = args.output or args.derivatives / "evaluation"
    try:
        result = evaluate(args.derivatives.absolute(), args.references.absolute())
    except EvaluationError as exc:
        print(f"ichseg evaluate: error: {exc}", file=__import__("sys").stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_table(result, out / "evaluation.tsv")
    with atomic_output(out / "evaluation.json") as tmp:
        Path(tmp).write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    write_report(result, out / "evaluation.html")
    stats = result["dataset"].get(HEMORRHAGE)
    if stats:
        print(f"{stats['n_scans']} scans: Dice {stats['dice_mean']:.3f} (median {stats['dice_median']:.3f}), "
              f"volume r {stats['volume_pearson_r']:.3f}, ICC {stats['volume_icc']:.3f}, "
              f"mean difference {stats['mean_difference_ml']:+.2f} mL, RMSE {stats['rmse_ml']:.2f} mL")
    if result["missing_predictions"]:
        print(f"no ichseg label map for {len(result['missing_predictions'])} scan(s): "
              + ", ".join(result["missing_predictions"]))
    print(f"written: {out}/evaluation.tsv, .json, .html")
    return 0
