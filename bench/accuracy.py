#!/usr/bin/env python
"""Accuracy of ichseg on a truth set, for one or several settings (the levers of issue 11).

    python bench/accuracy.py TRUTHSET_SPLIT_DIR OUT [--setting NAME "ICHSEG ARGS" ...]
        [--relabel [--thresholds T ...] [--seeds S ...] [--resamplings MODE ...]
         [--sources SOURCE ...] [--density-edge] [--ivh-margins MM ...] [--eah-margins MM ...]]
        [--n-procs N] [--score-only] [--reference DIR]

``TRUTHSET_SPLIT_DIR`` is one split written by ``bench/make_truthset.py`` (``bids/``,
``reference/``, ``phantoms.tsv``). Each setting runs ``ichseg BIDS OUT/<name> participant``
with its arguments (default: one setting, ``default``, with no extra arguments), then
``ichseg evaluate`` against the reference, and prints the dataset figures. ``--relabel``
also scores the ways of turning the same class probabilities into a label map (argmax, a
threshold on the total hemorrhage probability, with hysteresis seeds, sampled at the scan's
voxel centres or averaged over its voxels, the CT-density refinement, the bleeding classes
confined to where they can lie) without running the network again: it reads the template-space probabilities and transform from the work
directory.

Writes ``OUT/accuracy.json`` and ``OUT/accuracy.md`` (one row per setting and labelling:
the figures of the DeepBleed paper and the issue's targets; then the volumes against the
painted volumes of ``phantoms.tsv``; the JSON also has every scan), and ``OUT/<name>/evaluation/``.
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

from ichseg.bids_app.evaluate import evaluate, find_references
from ichseg.pipeline.labels import HEMORRHAGE_INDICES, LABELS, OEDEMA_INDEX
from ichseg.pipeline.lesion_insertion import crescent_thickness, fraction_entities
from ichseg.pipeline.metrics import (
    HEMORRHAGE,
    agreement,
    agreement_by_volume,
    class_masks,
    compare_labels,
    dice,
)
from ichseg.pipeline.naming import find_derivatives, scan_id

#: The bleeding classes, by the abbreviation that names their measures and fraction maps.
BLEEDING = [lab for lab in LABELS if lab.index in HEMORRHAGE_INDICES]
#: The classes scored one by one where a reference holds them: the bleeding classes and the
#: oedema rim that the generator paints around some lesions.
SCORED_CLASSES = BLEEDING + [lab for lab in LABELS if lab.index == OEDEMA_INDEX]

#: Voxels the lesion covers by more than the first and less than the second share are its
#: partial voxels: the mask rounds them to 0 or 1, where a reader could fairly go either way.
PARTIAL_BAND = (0.2, 0.8)

#: Bins (mm) of a subdural crescent's local thickness, over which its voxels found are counted.
LAYER_BINS_MM = (0.0, 2.0, 4.0, 6.0, 10.0, float("inf"))
LAYER_LABELS = [f"{a:g}-{b:g} mm" if b != float("inf") else f"≥ {a:g} mm" for a, b in zip(LAYER_BINS_MM, LAYER_BINS_MM[1:])]

TARGETS = "mean Dice ≥ 0.91, r ≥ 0.99, |mean difference| ≤ 1 mL, RMSE ≤ 3 mL, no lesion > 15 mL off by > 8 %"


def read_phantoms(split_dir: Path) -> dict[str, dict[str, str]]:
    """The rows of a truth-set split's ``phantoms.tsv``, by participant."""
    lines = (split_dir / "phantoms.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row.split("\t")[0]: dict(zip(header, row.split("\t"))) for row in lines[1:]}


def run_setting(split_dir: Path, out: Path, name: str, args: str, n_procs: int) -> Path:
    derivatives = out / name
    cmd = [sys.executable, "-m", "ichseg.bids_app.cli", str(split_dir / "bids"), str(derivatives), "participant",
           "-w", str(out / f"work-{name}"), "--n-procs", str(n_procs), "-q", *shlex.split(args)]
    print("$", " ".join(cmd), flush=True)
    # A failed scan is scored as failed; a run that stops before any scan must not pass as
    # a table of 0 scans.
    done = subprocess.run(cmd, check=False)
    if done.returncode and not any(derivatives.glob("sub-*")):
        sys.exit(f"ichseg stopped (exit {done.returncode}) before it wrote any scan of {name}: see above")
    return derivatives


def partial_voxel_scores(predicted: np.ndarray, reference: np.ndarray, fraction: np.ndarray,
                         band: tuple[float, float] = PARTIAL_BAND) -> dict:
    """Where two hemorrhage masks disagree: the Dice without the lesion's partial voxels (left
    out of both masks; NaN when nothing is left) and the share of the disagreeing voxels that
    are partial (NaN when none disagree)."""
    partial = (fraction > band[0]) & (fraction < band[1])
    disagree = predicted ^ reference
    n = int(disagree.sum())
    return {"dice_without_partial": dice(predicted & ~partial, reference & ~partial),
            "disagreement_in_partial": float((disagree & partial).sum()) / n if n else float("nan")}


def class_confusion(predicted: np.ndarray, reference: np.ndarray) -> dict[str, dict[str, float]]:
    """Where each class of the reference went (:data:`SCORED_CLASSES`): for every one it holds,
    the share of its voxels that ``predicted`` labels as each class (``bg`` for background)."""
    out = {}
    for lab in SCORED_CLASSES:
        inside = reference == lab.index
        if inside.any():
            shares = np.bincount(predicted[inside].astype(np.int64), minlength=len(LABELS)) / inside.sum()
            out[lab.abbreviation.lower()] = {other.abbreviation.lower(): float(shares[other.index]) for other in LABELS}
    return out


def layer_counts(predicted: np.ndarray, reference: np.ndarray, affine: np.ndarray, phantom: dict) -> dict | None:
    """For a subdural phantom (its ``phantoms.tsv`` row gives the crescent): per bin of
    :data:`LAYER_BINS_MM` of the crescent's local thickness at the reference's voxels, ``[found,
    voxels]``: how many of them ``predicted`` holds (both blood masks). None for other phantoms."""
    if "thickness_mm" not in phantom:
        return None
    ijk = np.argwhere(reference)
    world = affine[:3, :3] @ ijk.T + affine[:3, 3:4]
    local = crescent_thickness(world, json.loads(phantom["centre_ras"]), float(phantom["thickness_mm"]),
                               float(phantom["radius_mm"]), float(phantom["floor_z_mm"]))
    found = predicted[tuple(ijk.T)]
    bins = np.digitize(local, LAYER_BINS_MM[1:-1])
    return {label: [int(found[bins == k].sum()), int((bins == k).sum())] for k, label in enumerate(LAYER_LABELS)}


def partial_voxel_table(derivatives: Path, reference: Path, phantoms: dict | None = None) -> dict[str, dict]:
    """For every scan whose reference is a truth set's ``_dseg``: :func:`class_confusion`,
    :func:`layer_counts` for a subdural phantom and, where the reference has a map of lesion
    fractions beside it (``bench/make_truthset.py`` writes one), :func:`partial_voxel_scores`;
    the reference's ignore mask left out."""
    out = {}
    references = find_references(reference)
    for entities, dseg in find_derivatives(derivatives, "dseg"):
        sid = scan_id(entities)
        ref = references.get(sid)
        if ref is None or ref.is_mask:  # a truth set's reference is a _dseg, its fractions beside it
            continue
        keep = True if ref.ignore is None else np.asanyarray(nib.load(str(ref.ignore)).dataobj) == 0
        maps = [np.where(keep, np.asanyarray(nib.load(str(path)).dataobj), 0) for path in (dseg, ref.path)]
        out[sid] = {"confusion": class_confusion(*maps)}
        blood = [class_masks(m)[HEMORRHAGE] for m in maps]
        layers = layer_counts(*blood, nib.load(str(ref.path)).affine, (phantoms or {}).get(sid, {}))
        if layers is not None:
            out[sid]["layers"] = layers
        fractions = [ref.path.with_name(ref.path.name.replace("dseg.nii", f"{fraction_entities(lab.abbreviation)}.nii"))
                     for lab in BLEEDING]
        fraction_path = next((f for f in fractions if f.is_file()), None)
        if fraction_path is not None:
            out[sid].update(partial_voxel_scores(*blood, np.asanyarray(nib.load(str(fraction_path)).dataobj)))
    return out


def class_figures(rows: list[dict], partial: dict[str, dict]) -> dict[str, dict]:
    """Per class of :data:`SCORED_CLASSES`, over the scans whose reference holds it: the dataset
    figures of the class (Dice, volumes) and the mean share of its reference voxels that ichseg
    labels as each class."""
    out = {}
    for lab in SCORED_CLASSES:
        key = lab.abbreviation.lower()
        held = [r for r in rows if r.get(f"{key}_ref_ml", 0.0) > 0]
        if not held:
            continue
        volumes = ([r[f"{key}_ml"] for r in held], [r[f"{key}_ref_ml"] for r in held],
                   [r[f"{key}_dice"] for r in held])
        figures = agreement(*volumes)
        large = agreement_by_volume(*volumes, edges=(15.0,))[1]
        figures["worst_relative_error_over_15ml"] = large.get("largest_relative_error", float("nan"))
        shares = [partial[r["scan"]]["confusion"][key] for r in held
                  if key in partial.get(r["scan"], {}).get("confusion", {})]
        if shares:
            figures["labelled_as"] = {other: float(np.mean([s[other] for s in shares])) for other in shares[0]}
        out[key] = figures
    return out


def summarise(rows: list[dict], phantoms: dict[str, dict], partial: dict[str, dict] | None = None) -> dict:
    partial = partial or {}
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    volumes = ([r[f"{HEMORRHAGE}_ml"] for r in ok], [r[f"{HEMORRHAGE}_ref_ml"] for r in ok],
               [r[f"{HEMORRHAGE}_dice"] for r in ok])
    stats = agreement(*volumes)
    small, large = agreement_by_volume(*volumes, edges=(15.0,))  # the 15 mL line
    stats["worst_relative_error_over_15ml"] = large.get("largest_relative_error", float("nan"))
    stats["mean_difference_small_ml"] = small.get("mean_difference_ml")
    stats["mean_relative_difference_large"] = large.get("mean_relative_difference")
    stats["by_volume"] = agreement_by_volume(*volumes)
    hosts = {}
    for r in ok:
        host = phantoms.get(r["scan"], {}).get("host", "?")
        hosts.setdefault(host, []).append(r[f"{HEMORRHAGE}_dice"])
    stats["dice_by_host"] = {h: float(np.nanmean(v)) for h, v in sorted(hosts.items())}
    stats["painted"] = painted_agreement(ok, phantoms)
    stats["scans"] = [{"scan": r["scan"], "host": phantoms.get(r["scan"], {}).get("host", "?"),
                       "dice": r[f"{HEMORRHAGE}_dice"], "ichseg_ml": r[f"{HEMORRHAGE}_ml"],
                       "reference_ml": r[f"{HEMORRHAGE}_ref_ml"],
                       "painted_ml": float(phantoms.get(r["scan"], {}).get("true_volume_ml", "nan")),
                       **{k: v for k, v in partial.get(r["scan"], {}).items() if k not in ("confusion", "layers")}}
                      for r in ok]
    stats["by_class"] = class_figures(ok, partial)
    layered = [partial[r["scan"]]["layers"] for r in ok if "layers" in partial.get(r["scan"], {})]
    if layered:
        totals = {label: np.sum([scan[label] for scan in layered], axis=0) for label in LAYER_LABELS}
        stats["by_layer_thickness"] = {label: {"found": float(f / n) if n else float("nan"), "voxels": int(n)}
                                       for label, (f, n) in totals.items()}
    scored = [partial[r["scan"]] for r in ok if "dice_without_partial" in partial.get(r["scan"], {})]
    stats["partial_voxels"] = {"n_scans": len(scored)} | ({
        "band": list(PARTIAL_BAND),
        "dice_mean_without_partial": float(np.nanmean([p["dice_without_partial"] for p in scored])),
        "disagreement_in_partial_median": float(np.nanmedian([p["disagreement_in_partial"] for p in scored])),
    } if scored else {})
    return stats


def _volume_figures(predicted, truth) -> dict:
    overall = agreement(predicted, truth, [])
    _, large = agreement_by_volume(predicted, truth, [float("nan")] * len(truth), edges=(15.0,))
    return {key: overall[key] for key in ("volume_pearson_r", "mean_difference_ml", "rmse_ml",
                                          "limits_of_agreement_ml", "largest_error_ml")} | {
        "n_over_15ml": large["n_scans"],
        "worst_relative_error_over_15ml": large.get("largest_relative_error", float("nan")),
        "mean_relative_difference_large": large.get("mean_relative_difference", float("nan")),
    }


def painted_agreement(rows: list[dict], phantoms: dict[str, dict]) -> dict:
    """Volumes against the painted volume (``true_volume_ml``: the sum of the voxel fractions
    the lesion covers), for ichseg and for the reference mask itself.

    The reference mask holds the voxels at least half covered; on 5-6 mm slices its volume
    differs from the painted one by a few percent (more on thin lesions), and a perfect
    segmenter of the mask would carry that error. Comparing both with the painted volume
    tells the model's error from the mask's. Phantoms with a reference mask only (no painted
    volume) are left out."""
    scored = [r for r in rows if "true_volume_ml" in phantoms.get(r["scan"], {})]
    truth = [float(phantoms[r["scan"]]["true_volume_ml"]) for r in scored]
    if not scored:
        return {"n_scans": 0}
    return {"n_scans": len(scored),
            "ichseg": _volume_figures([r[f"{HEMORRHAGE}_ml"] for r in scored], truth),
            "reference_mask": _volume_figures([r[f"{HEMORRHAGE}_ref_ml"] for r in scored], truth)}


#: ``ensemble-near`` runs the ensemble where the single model's hemorrhage probability reaches
#: this, grown by :data:`NEAR_MM`, and keeps the single model's probabilities elsewhere.
NEAR_PROBABILITY = 0.1
NEAR_MM = 3.0


def atlas_transform(node: Path) -> Path:
    """The transform that a scan's run (its work folder ``node``) used for the atlas: the
    separate rigid registration of a translation run, else the registration's own."""
    return next(p for p in (node / "register_atlas" / "template_to_ct_atlas.mat",
                            node / "register" / "template_to_ct_atlas.mat") if p.is_file())


def _recomputed(node: Path, source: str, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """Template-space probabilities (C, ...) and affine of another way of running the network
    on the registered CT of the work directory: ``flip`` (mean with the left-right mirror),
    ``shifts`` (mean over the image moved by each of ``GRID_SHIFTS``, :mod:`ichseg.pipeline.segmentation`),
    ``ensemble`` (the 12 BLAST-CT networks) or ``ensemble-near`` (the 12 networks only near
    what the single model calls blood, :data:`NEAR_PROBABILITY`; the single model elsewhere)."""
    from scipy import ndimage as ndi

    from ichseg.pipeline.inference import IntensityWindow, load_networks, segment
    from ichseg.pipeline.labels import total_hemorrhage_probability
    from ichseg.pipeline.models import resolve_model
    from ichseg.pipeline.segmentation import (
        DEFAULT_MARGIN_MM,
        GRID_SHIFTS,
        region_of_interest,
    )

    ct_img = nib.load(str(node / "register" / "ct_space-template.nii"))
    hu = np.asanyarray(ct_img.dataobj, dtype=np.float32)
    brain = np.asanyarray(nib.load(str(node / "register" / "brain_mask_space-template.nii")).dataobj) > 0
    roi = region_of_interest(brain, ct_img.affine, DEFAULT_MARGIN_MM)
    model = "blastct-v1-ensemble" if source.startswith("ensemble") else "blastct-v1"
    if model not in cache:
        resolved = resolve_model(model)
        cache[model] = load_networks(resolved.weight_paths, resolved.config)
    networks = cache[model]
    single = None
    if source == "ensemble-near":
        # the run's probabilities cover a box of the template grid: put them on the whole grid
        prob_img = nib.load(str(node / "segment" / "probabilities_space-template.nii"))
        offset = np.rint(np.linalg.solve(ct_img.affine, prob_img.affine)[:3, 3]).astype(int)
        box = tuple(slice(o, o + n) for o, n in zip(offset, prob_img.shape[:3]))
        single = np.zeros((prob_img.shape[3], *hu.shape), np.float32)
        single[(slice(None), *box)] = np.moveaxis(np.asanyarray(prob_img.dataobj, dtype=np.float32), -1, 0)
        near = total_hemorrhage_probability(single) >= NEAR_PROBABILITY
        reach = int(np.ceil(NEAR_MM))  # 1 mm template grid
        ball = np.linalg.norm(np.indices((2 * reach + 1,) * 3) - reach, axis=0) <= reach
        roi &= ndi.binary_dilation(near, structure=ball)
        if not roi.any():
            return single, ct_img.affine
    probs, _ = segment(hu, roi, networks, IntensityWindow(),
                       shifts=GRID_SHIFTS if source == "shifts" else GRID_SHIFTS[:1])
    if source == "flip":
        mirrored, _ = segment(hu[::-1].copy(), roi[::-1].copy(), networks, IntensityWindow())
        probs = (probs + mirrored[:, ::-1]) / 2
    if single is not None:
        probs = np.where(roi, probs, single)
    return probs, ct_img.affine


def _cached_recomputed(node: Path, source: str, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_recomputed`, kept in the work directory (``recomputed-<source>.npz``), so that
    scoring the same run against other references does not run the networks again."""
    saved = node / f"recomputed-{source}.npz"
    # remade when the run behind it was: its registered CT or its probabilities changed
    inputs = np.array([(node / "register" / "ct_space-template.nii").stat().st_mtime_ns,
                       (node / "segment" / "probabilities_space-template.nii").stat().st_mtime_ns])
    if saved.is_file():
        with np.load(saved) as data:
            if np.array_equal(data["inputs"], inputs):
                return data["probabilities"], data["affine"]
    probs, affine = _recomputed(node, source, cache)
    np.savez_compressed(saved, probabilities=probs.astype(np.float32), affine=affine, inputs=inputs)
    return probs, affine


def relabel_scores(split_dir: Path, reference: Path, out: Path, name: str, phantoms: dict, thresholds,
                   sources=("network",), resamplings=("centre",), seeds=(), density_edge=False,
                   partial_margins=(), ivh_margins=(), eah_margins=()) -> dict:
    """Score labellings of the setting's probabilities, and of probabilities recomputed from
    its registered CTs (``sources``: ``network``, ``flip``, ``shifts``, ``ensemble``), each brought onto
    the scan by sampling at the voxel centres or by the mean over each voxel
    (``resamplings``: ``centre``, ``voxel-mean``); with ``seeds``, also each threshold with
    hysteresis (a blood region is kept only where it reaches the seed probability); with
    ``density_edge``, each of them also refined along the CT's clot edge; with
    ``partial_margins``, each of them also with its edges decided by partial volume where the
    clot share of a voxel's density is that far from one half; with ``ivh_margins``, each of
    them also with intraventricular blood only within that many mm of the atlas's ventricles
    (mapped through the run's atlas registration), by connected region and by voxel; with
    ``eah_margins``, also with extra-axial blood only in regions within that many mm of the
    intracranial surface, the falx or the tentorium, alone and after the first IVH margin
    (both rules only on the labellings with seeds, where ``seeds`` are given)."""
    from ichseg.pipeline import assets
    from ichseg.pipeline.geometry import ants_affine_to_ras, within_mm
    from ichseg.pipeline.labels import EAH_INDEX, IVH_INDEX
    from ichseg.pipeline.location import (
        atlas_on_scan,
        extra_axial_zone,
        read_region_names,
        ventricle_region,
    )
    from ichseg.pipeline.refine import refine_hemorrhage, refine_partial_volume
    from ichseg.pipeline.registration import warp_to_scan
    from ichseg.pipeline.segmentation import (
        confine_bleeding_classes,
        keep_seeded_blood,
        label_map,
        threshold_labels,
    )

    references = find_references(reference)
    brains = {scan_id(e): p for e, p in find_derivatives(out / name, "brain_mask")}
    work = out / f"work-{name}" / "ichseg_wf"
    results: dict[str, list[dict]] = {}
    extra: dict[str, dict] = {}  # per labelling and scan: layer_counts of a subdural phantom
    networks: dict = {}
    atlas = nib.load(str(assets.get_asset(assets.ATLAS)))
    region_names = read_region_names(assets.get_asset(assets.ATLAS_LABELS))
    for entities, dseg in find_derivatives(out / name, "dseg"):
        sid = scan_id(entities)
        if sid not in references:
            continue
        node = work / f"ct_{sid.replace('-', '_')}"
        source = nib.load(str(split_dir / "bids" / f"sub-{entities['subject']}" / "anat"
                              / f"sub-{entities['subject']}_ct.nii.gz"))
        transform = ants_affine_to_ras(str(node / "register" / "template_to_ct.mat"))
        hu = np.asanyarray(source.dataobj, dtype=np.float32)
        brain = np.asanyarray(nib.load(str(brains[sid])).dataobj) > 0
        reference = references[sid]
        ref = np.asanyarray(nib.load(str(reference.path)).dataobj).astype(np.int16)
        ignore = (np.asanyarray(nib.load(str(reference.ignore)).dataobj) > 0) if reference.ignore else None
        # every bleeding class the reference holds: a class can be wrong where the total is right
        classes = [HEMORRHAGE] + [lab.abbreviation.lower() for lab in BLEEDING if (ref == lab.index).any()]
        if ivh_margins or eah_margins:
            # the zones depend on the scan only: once here, not for every labelling
            regions, sides = atlas_on_scan(atlas, source.shape, source.affine,
                                           ants_affine_to_ras(str(atlas_transform(node))))
            ventricles = ventricle_region(regions, region_names)
            ivh_zones = {m: within_mm(ventricles, source.affine, m) for m in ivh_margins}
            eah_zones = {m: extra_axial_zone(brain, regions, sides, region_names, source.affine, m)
                         for m in eah_margins}
        for kind in sources:
            if kind == "network":
                prob_img = nib.load(str(node / "segment" / "probabilities_space-template.nii"))
                probs = np.moveaxis(np.asanyarray(prob_img.dataobj, dtype=np.float32), -1, 0)
                affine = prob_img.affine
            else:
                probs, affine = _cached_recomputed(node, kind, networks)
            for mode in resamplings:
                scan = warp_to_scan(probs, affine, source.shape[:3], source.affine, transform,
                                    voxel_mean=mode == "voxel-mean")
                scan[0] += np.clip(1.0 - scan.sum(axis=0), 0.0, 1.0)
                variants = {"argmax": label_map(scan, None)}
                for t in thresholds:
                    variants[f"threshold {t:g}"] = threshold_labels(scan, t)
                    for seed in seeds:
                        variants[f"threshold {t:g}, seeds {seed:g}"] = keep_seeded_blood(
                            variants[f"threshold {t:g}"], scan, seed)
                for label in list(variants) if density_edge else ():
                    variants[f"{label} + density edge"] = refine_hemorrhage(variants[label], hu, brain,
                                                                            source.affine)
                for label in list(variants) if partial_margins else ():
                    if "density edge" in label:
                        continue
                    for margin in partial_margins:
                        variants[f"{label} + partial volume {margin:g}"] = refine_partial_volume(
                            variants[label], scan, hu, brain, source.affine, margin=margin)
                # the class rules on the labellings with seeds, where there are (the default's kind)
                ruled = [v for v in variants if "seeds" in v] or list(variants)
                for label in ruled if ivh_margins or eah_margins else ():
                    for margin, zone in ivh_zones.items():
                        for by, whole in (("regions", True), ("voxels", False)):
                            variants[f"{label} + IVH within {margin:g} mm ({by})"] = confine_bleeding_classes(
                                variants[label], scan, {IVH_INDEX: zone}, whole_regions=whole)
                    for margin, zone in eah_zones.items():
                        variants[f"{label} + EAH within {margin:g} mm"] = confine_bleeding_classes(
                            variants[label], scan, {EAH_INDEX: zone})
                        if ivh_margins:
                            first = ivh_margins[0]
                            variants[f"{label} + IVH within {first:g} mm + EAH within {margin:g} mm"] = (
                                confine_bleeding_classes(variants[label], scan,
                                                         {IVH_INDEX: ivh_zones[first], EAH_INDEX: zone}))
                prefix = kind if mode == "centre" else f"{kind}, {mode}"
                for label, labels in variants.items():
                    row = compare_labels(labels.astype(np.int16), ref, source.affine, ignore, classes=classes)
                    results.setdefault(f"{prefix}, {label}", []).append({"scan": sid, **row})
                    layers = layer_counts(*[class_masks(np.where(ignore, 0, m) if ignore is not None else m)[HEMORRHAGE]
                                            for m in (labels, ref)], source.affine, phantoms.get(sid, {}))
                    if layers is not None:
                        extra.setdefault(f"{prefix}, {label}", {})[sid] = {"layers": layers}
        print(f"  relabelled {sid}", flush=True)
    return {label: summarise(rows, phantoms, extra.get(label)) for label, rows in results.items()}


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def render(summary: dict) -> str:
    lines = ["# Accuracy on the truth set", "", f"Targets (issue 11): {TARGETS}.", "",
             "| setting | scans | mean / median Dice | r | ICC | mean diff mL | RMSE mL | limits of agreement mL "
             "| worst error > 15 mL | mean diff ≤ 15 mL | mean rel. diff > 15 mL | Dice by host |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in summary.items():
        loa = s["limits_of_agreement_ml"]
        hosts = ", ".join(f"{h} {_fmt(d)}" for h, d in s["dice_by_host"].items())
        lines.append(
            f"| {name} | {s['n_scans']} | {_fmt(s['dice_mean'])} / {_fmt(s['dice_median'])} "
            f"| {_fmt(s['volume_pearson_r'])} | {_fmt(s['volume_icc'])} | {_fmt(s['mean_difference_ml'], 2)} "
            f"| {_fmt(s['rmse_ml'], 2)} | {_fmt(loa[0], 1)} to {_fmt(loa[1], 1)} "
            f"| {_fmt(100 * s['worst_relative_error_over_15ml'], 0)} % | {_fmt(s['mean_difference_small_ml'], 2)} "
            f"| {_fmt(100 * s['mean_relative_difference_large'] if s['mean_relative_difference_large'] is not None else None, 1)} % "
            f"| {hosts} |")
    return "\n".join(lines + _painted_table(summary) + _partial_table(summary) + _class_table(summary)
                     + _layer_table(summary)) + "\n"


def _layer_table(summary: dict) -> list[str]:
    """Subdural phantoms: the share of the reference's voxels labelled blood, by layer thickness."""
    scored = [(name, s["by_layer_thickness"]) for name, s in summary.items() if "by_layer_thickness" in s]
    if not scored:
        return []
    return ["", "Subdural crescents: share of the reference's voxels labelled blood (any class), by the local "
            "thickness of the layer (the last row: the reference's voxels in each bin):", "",
            "| setting | " + " | ".join(LAYER_LABELS) + " |", "|---|" + "---:|" * len(LAYER_LABELS),
            *[f"| {name} | " + " | ".join(f"{_fmt(100 * v[label]['found'], 0)} %" for label in LAYER_LABELS) + " |"
              for name, v in scored],
            "| (voxels) | " + " | ".join(str(scored[0][1][label]["voxels"]) for label in LAYER_LABELS) + " |"]


def _class_table(summary: dict) -> list[str]:
    """Per class that a truth set holds: the class volumes can be wrong where the total is right
    (blood of one lesion split between classes)."""
    rows = []
    names = [lab.abbreviation.lower() for lab in LABELS]
    for name, s in summary.items():
        by_class = s.get("by_class", {})
        for key, v in by_class.items():
            shares = v.get("labelled_as", {})
            worst = v.get("worst_relative_error_over_15ml", float("nan"))
            rows.append(f"| {name} | {key.upper()} | {v['n_scans']} | {_fmt(v['dice_mean'])} / {_fmt(v['dice_median'])} "
                        f"| {_fmt(v['volume_pearson_r'])} | {_fmt(v['mean_difference_ml'], 2)} | {_fmt(v['rmse_ml'], 2)} "
                        f"| {_fmt(100 * worst, 1)} | "
                        + " / ".join(_fmt(100 * shares[n], 0) if n in shares else "–" for n in names) + " |")
    if not rows:
        return []
    return ["", "By class, over the scans whose reference holds it; where its reference voxels went (mean share, %):",
            "", "| setting | class | scans | mean / median Dice | r | mean diff mL | RMSE mL | worst > 15 mL % | labelled "
            + " / ".join(lab.abbreviation for lab in LABELS) + " % |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|", *rows]


def _painted_table(summary: dict) -> list[str]:
    rows = []
    for name, s in summary.items():
        painted = s.get("painted", {})
        for source in ("ichseg", "reference_mask"):
            if source not in painted:
                continue
            v = painted[source]
            loa = v["limits_of_agreement_ml"]
            rows.append(
                f"| {name} | {source.replace('_', ' ')} | {painted['n_scans']} | {_fmt(v['volume_pearson_r'])} "
                f"| {_fmt(v['mean_difference_ml'], 2)} | {_fmt(v['rmse_ml'], 2)} | {_fmt(loa[0], 1)} to {_fmt(loa[1], 1)} "
                f"| {_fmt(100 * v['worst_relative_error_over_15ml'], 1)} % "
                f"| {_fmt(100 * v['mean_relative_difference_large'], 1)} % |")
    if not rows:
        return []
    return ["", "Volumes against the painted volume (the sum of the voxel fractions each lesion covers), "
            "for ichseg and for the reference mask (the voxels at least half covered):", "",
            "| setting | volumes of | scans | r | mean diff mL | RMSE mL | limits of agreement mL "
            "| worst error > 15 mL | mean rel. diff > 15 mL |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows]


def _partial_table(summary: dict) -> list[str]:
    scored = [(name, s["partial_voxels"]) for name, s in summary.items() if s.get("partial_voxels", {}).get("n_scans")]
    if not scored:
        return []
    low, high = scored[0][1]["band"]
    return ["", f"Partial voxels (the lesion covers more than {low:.0%} and less than {high:.0%} of them):", "",
            "| setting | scans | share of the disagreeing voxels that are partial (median) | mean Dice without them |",
            "|---|---:|---:|---:|",
            *[f"| {name} | {p['n_scans']} | {_fmt(100 * p['disagreement_in_partial_median'], 0)} % "
              f"| {_fmt(p['dice_mean_without_partial'])} |" for name, p in scored]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--setting", nargs=2, action="append", metavar=("NAME", "ARGS"),
                        help="a named setting and its ichseg arguments (repeatable)")
    parser.add_argument("--relabel", action="store_true", help="also score labellings of the same probabilities")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.4, 0.5])
    parser.add_argument("--sources", nargs="+", default=["network"], choices=["network", "flip", "shifts", "ensemble", "ensemble-near"],
                        help="with --relabel: probabilities of the run, or recomputed with flips, the image moved by "
                             "each grid shift (shifts), the ensemble, or the ensemble near what the run calls blood "
                             "(ensemble-near)")
    parser.add_argument("--resamplings", nargs="+", default=["centre"], choices=["centre", "voxel-mean"],
                        help="with --relabel: probabilities sampled at the scan's voxel centres or averaged over its voxels")
    parser.add_argument("--seeds", nargs="*", type=float, default=[],
                        help="with --relabel: also each threshold with these hysteresis seed probabilities")
    parser.add_argument("--density-edge", action="store_true",
                        help="with --relabel: also each labelling refined along the CT's clot edge (pipeline/refine.py)")
    parser.add_argument("--partial-volume", nargs="*", type=float, default=[], metavar="MARGIN",
                        help="with --relabel: also each labelling with its edges decided by partial volume "
                             "(pipeline/refine.py) where a voxel's clot share is MARGIN or more from one half")
    parser.add_argument("--ivh-margins", nargs="*", type=float, default=[], metavar="MM",
                        help="with --relabel: also each labelling with intraventricular blood only within MM "
                             "of the atlas's ventricles (by connected region and by voxel)")
    parser.add_argument("--eah-margins", nargs="*", type=float, default=[], metavar="MM",
                        help="with --relabel: also each labelling with extra-axial blood only in regions within MM "
                             "of the intracranial surface, the falx or the tentorium (alone and after the first "
                             "--ivh-margins)")
    parser.add_argument("--n-procs", type=int, default=2)
    parser.add_argument("--score-only", action="store_true",
                        help="score the derivatives already in OUT/NAME, without running ichseg")
    parser.add_argument("--reference", type=Path, default=None,
                        help="reference folder to score against (default: SPLIT_DIR/reference)")
    args = parser.parse_args(argv)
    reference = args.reference or args.split_dir / "reference"
    settings = args.setting or [("default", "")]
    phantoms = read_phantoms(args.split_dir)
    summary = {}
    for name, extra in settings:
        derivatives = (args.out / name if args.score_only
                       else run_setting(args.split_dir, args.out, name, extra, args.n_procs))
        result = evaluate(derivatives, reference)
        summary[name] = summarise(result["scans"], phantoms, partial_voxel_table(derivatives, reference, phantoms))
        print(render({name: summary[name]}), flush=True)
        if args.relabel:
            for label, stats in relabel_scores(args.split_dir, reference, args.out, name, phantoms, args.thresholds,
                                               args.sources, args.resamplings, args.seeds,
                                               args.density_edge, args.partial_volume,
                                               args.ivh_margins, args.eah_margins).items():
                summary[f"{name}, {label}"] = stats
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (args.out / "accuracy.md").write_text(render(summary))
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
