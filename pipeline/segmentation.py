"""Hemorrhage segmentation in template space: region of interest, model run, provenance."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from ichseg.pipeline.geometry import (
    bounding_box,
    box_affine,
    voxel_sizes,
    voxel_volume_ml,
)
from ichseg.pipeline.labels import (
    CONFINED_INDICES,
    HEMORRHAGE_INDICES,
    total_hemorrhage_probability,
)
from ichseg.pipeline.models import resolve_model, weights_sha256
from ichseg.pipeline.qc import segmentation_qc

#: Margin (mm) around the brain mask inside which the network runs. The ROI is the scan's own
#: (warped) intracranial mask, which reaches the inner table of the skull, so the margin only
#: absorbs resampling of the mask: with 5 mm, 0.8-1.1 % of mistie-0034's hemorrhage probability
#: lay outside the brain mask, and its volumes matched a 10 mm margin within 0.5 %.
DEFAULT_MARGIN_MM = 5.0

#: Moves of the template-space CT (voxels along each axis) over which ``grid_shifts`` > 1
#: averages the network (:func:`ichseg.pipeline.inference.predict_probabilities`): the first
#: ``n`` put DeepMedic's subsampled grids (every 3rd and 5th voxel) at phases 0, 1, 2, 0 of 3
#: and 0, 4, 3, 2 of 5 along every axis.
GRID_SHIFTS = ((0, 0, 0), (4, 4, 4), (8, 8, 8), (12, 12, 12))
DEFAULT_GRID_SHIFTS = 1


#: Total hemorrhage probability (IPH + EAH + IVH) from which a voxel is labelled as blood, as
#: its most likely bleeding class; below it, the most likely of background and oedema. Chosen,
#: with the seed below, on the tuning half of the truth set and confirmed on the held-out half
#: (docs/method.md, section 7). ``None`` labels every voxel with its most likely class (arg-max).
DEFAULT_HEMORRHAGE_THRESHOLD: float | None = 0.40

#: Hysteresis: a connected region of blood is kept only if its total hemorrhage probability
#: reaches this value somewhere; fainter regions take their best non-blood class. It removes
#: small, faint false positives (the dural sinuses of a normal head) without trimming the
#: lesions that a confident core anchors. Chosen on the tuning half of the truth set
#: (docs/method.md, section 7). ``None`` keeps every region.
DEFAULT_HEMORRHAGE_SEED: float | None = 0.8

#: Intraventricular blood lies in the ventricles: a connected region labelled IVH keeps its
#: class only if it comes within this many mm of the atlas's ventricles mapped onto the scan
#: (:func:`confine_bleeding_classes`); the others take their next bleeding class. Chosen on the
#: tuning half of the truth set (docs/method.md, section 7). ``None`` keeps the network's class.
DEFAULT_IVH_MARGIN_MM: float | None = 1.0

#: Extra-axial blood lies against the skull, the falx or the tentorium: a connected region
#: labelled EAH keeps its class only if it comes within this many mm of the intracranial
#: surface, the midline or the infratentorial regions' outline (the atlas mapped onto the
#: scan). Chosen with the IVH margin (docs/method.md, section 7). ``None`` keeps the network's class.
DEFAULT_EAH_MARGIN_MM: float | None = 6.0


def label_map(probabilities: np.ndarray, hemorrhage_threshold: float | None = DEFAULT_HEMORRHAGE_THRESHOLD,
              hemorrhage_seed: float | None = None) -> np.ndarray:
    """Label map (uint8) from class probabilities (C, ...): arg-max, or blood wherever the total
    hemorrhage probability reaches ``hemorrhage_threshold``.

    With ``hemorrhage_seed`` (hysteresis), a connected region of blood (26-neighbourhood) is
    kept only if its total hemorrhage probability reaches ``hemorrhage_seed`` somewhere; the
    others take their best non-blood class.
    """
    return keep_seeded_blood(threshold_labels(probabilities, hemorrhage_threshold), probabilities,
                             hemorrhage_seed)


def threshold_labels(probabilities: np.ndarray,
                     hemorrhage_threshold: float | None = DEFAULT_HEMORRHAGE_THRESHOLD) -> np.ndarray:
    """The first step of :func:`label_map`: arg-max, or blood (its most likely bleeding class)
    wherever the total hemorrhage probability reaches ``hemorrhage_threshold``."""
    if hemorrhage_threshold is None:
        return np.argmax(probabilities, axis=0).astype(np.uint8)
    blood = np.asarray(HEMORRHAGE_INDICES)
    best_blood = blood[np.argmax(probabilities[blood], axis=0)]
    return np.where(total_hemorrhage_probability(probabilities) >= hemorrhage_threshold, best_blood,
                    best_non_blood_class(probabilities)).astype(np.uint8)


def keep_seeded_blood(labels: np.ndarray, probabilities: np.ndarray,
                      hemorrhage_seed: float | None) -> np.ndarray:
    """The second step of :func:`label_map`: a copy of ``labels`` in which each connected region
    of blood whose total hemorrhage probability never reaches ``hemorrhage_seed`` takes its best
    non-blood class (``labels`` itself when there is no seed)."""
    if hemorrhage_seed is None:
        return labels
    total = total_hemorrhage_probability(probabilities)
    is_blood = np.isin(labels, HEMORRHAGE_INDICES)
    regions, _ = ndimage.label(is_blood, structure=np.ones((3, 3, 3), dtype=bool))
    seeded = np.unique(regions[is_blood & (total >= hemorrhage_seed)])
    unseeded = is_blood & ~np.isin(regions, seeded)
    kept = labels.copy()
    kept[unseeded] = best_non_blood_class(probabilities[:, unseeded])
    return kept


def confine_bleeding_classes(labels: np.ndarray, probabilities: np.ndarray, zones: dict[int, np.ndarray],
                             whole_regions: bool = True) -> np.ndarray:
    """A copy of ``labels`` in which each bleeding class of ``zones`` (class -> where it may
    lie, on the same grid) lies only there: where it is outside its zone, a voxel takes the
    most probable other bleeding class that may lie there. With ``whole_regions``, a connected
    region of a class (26-neighbourhood) that reaches its zone anywhere keeps it whole, so that
    blood filling ventricles larger than the atlas's, say, keeps its class. Only the bleeding
    class changes, never what is blood; a class without a zone (IPH) may lie anywhere."""
    misplaced = {}
    for index, zone in zones.items():
        inside = labels == index
        if whole_regions:
            regions, _ = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))
            misplaced[index] = inside & ~np.isin(regions, np.unique(regions[inside & zone]))
        else:
            misplaced[index] = inside & ~zone
    if not any(mask.any() for mask in misplaced.values()):
        return labels
    moved = labels.copy()
    for index, mask in misplaced.items():
        others = [i for i in HEMORRHAGE_INDICES if i != index]
        candidates = probabilities[:, mask][others]
        for row, other in enumerate(others):
            if other in zones:  # a confined class only inside its own zone
                candidates[row, ~zones[other][mask]] = -1.0
        moved[mask] = np.asarray(others)[np.argmax(candidates, axis=0)]
    return moved


def best_non_blood_class(probabilities: np.ndarray) -> np.ndarray:
    """The most probable class that is not blood, per voxel (classes on the first axis)."""
    others = np.asarray([i for i in range(probabilities.shape[0]) if i not in HEMORRHAGE_INDICES])
    return others[np.argmax(probabilities[others], axis=0)]


def blood_left_out_ml(before_seed: np.ndarray, labels: np.ndarray, voxel_ml: float) -> float:
    """Volume of the blood that the hysteresis seed left out: blood in ``before_seed``
    (:func:`threshold_labels`) that ``labels`` (:func:`keep_seeded_blood`) no longer has."""
    left_out = np.isin(before_seed, HEMORRHAGE_INDICES) & ~np.isin(labels, HEMORRHAGE_INDICES)
    return float(np.count_nonzero(left_out) * voxel_ml)


def region_of_interest(brain_mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> np.ndarray:
    """The brain mask grown by ``margin_mm``: where the network is run.

    The margin keeps extra-axial blood and the brain edge inside the computed region even
    where brain extraction or registration is a few millimetres off.
    """
    brain_mask = brain_mask.astype(bool)
    if margin_mm <= 0 or not brain_mask.any():
        return brain_mask
    # The distance transform only needs the mask's box grown by the margin (5x faster than
    # the whole template grid); voxels beyond the box are farther than the margin anyway.
    spacing = np.asarray(voxel_sizes(affine))
    reach = np.ceil(margin_mm / spacing).astype(int) + 1
    box = bounding_box(brain_mask, reach)
    roi = np.zeros(brain_mask.shape, dtype=bool)
    roi[box] = ndimage.distance_transform_edt(~brain_mask[box], sampling=spacing) <= margin_mm
    return roi


def crop_to_roi(volume: np.ndarray, roi: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop a (C, x, y, z) volume to the bounding box of ``roi`` and return it with its affine."""
    box = bounding_box(roi) or (slice(0, 1),) * roi.ndim  # an empty region: one voxel
    return volume[(slice(None),) + box], box_affine(affine, box)


def run_model(
    hu: np.ndarray,
    roi: np.ndarray,
    model: str,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    precision: str = "auto",
    num_threads: int | None = None,
    grid_shifts: int = DEFAULT_GRID_SHIFTS,
) -> tuple[np.ndarray, dict]:
    """Class probabilities of a 1 mm RAS CT in HU with a registered model, and provenance.

    Returns ``(probabilities (C, x, y, z), info)`` where ``info`` names the model, its
    weight files and their sha256, the number of networks, the voxels and multiply-adds
    computed, the precision, the CPU and the inference time. ``precision`` is ``auto``,
    ``fp32``, ``bf16`` or ``fp16`` (:func:`ichseg.pipeline.cpu.resolve_precision`);
    ``num_threads`` the torch threads (default: torch's current setting); ``grid_shifts``
    how many of :data:`GRID_SHIFTS` the network is averaged over (each costs about 0.7 of
    another run: the full-resolution pathway is computed once).
    """
    # torch is imported here, not at module level, so that the command line starts quickly
    import torch

    from ichseg.pipeline.cpu import (
        machine_description,
        resolve_precision,
        torch_configured,
    )
    from ichseg.pipeline.inference import IntensityWindow, load_networks, segment

    precision = resolve_precision(precision, device)
    resolved = resolve_model(model)
    low, high = resolved.spec.input_window_hu
    networks = load_networks(resolved.weight_paths, resolved.config, device)
    reported = [-1]

    def progress(done: int, total: int) -> None:
        percent = 100 * done // max(1, total)
        if log is not None and percent // 20 > reported[0]:
            reported[0] = percent // 20
            log(f"inference: {percent} % of {total} voxels ({time.perf_counter() - start:.0f} s)")

    # Threads and flush-to-zero for the network only: the caller's settings come back after.
    with torch_configured(num_threads or torch.get_num_threads()) as torch_settings:
        start = time.perf_counter()
        probs, macs = segment(hu, roi, networks, IntensityWindow(low, high), progress, precision=precision,
                              shifts=GRID_SHIFTS[:grid_shifts])
    seconds = time.perf_counter() - start
    voxels = int(roi.sum())
    info = {
        "model": resolved.spec.name,
        "n_networks": len(networks),
        "grid_shifts": grid_shifts,
        "weights": [str(p) for p in resolved.weight_paths],
        "weights_sha256": weights_sha256(resolved),
        "inference_seconds": round(seconds, 2),
        "roi_voxels": voxels,
        # per network, its grid shifts included; the ensemble multiplies it by n_networks
        "multiply_adds": macs,
        "roi_voxels_per_s": round(voxels / seconds) if seconds > 0 else None,
        "precision": precision,
        **torch_settings,
        "machine": machine_description(),
    }
    return probs, info


@dataclass(frozen=True)
class TemplateSegmentation:
    """The network's result on the template grid (:func:`segment_template_space`)."""

    probabilities: np.ndarray  # (classes, x, y, z) within the segmented box
    box_affine: np.ndarray  # affine of that box
    labels: np.ndarray  # label map on the whole template grid
    qc: dict  # segmentation QC measures (ichseg.pipeline.qc.segmentation_qc)
    info: dict  # model, weights, precision, threads, timing (run_model)


def segment_template_space(
    hu: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    model: str = "blastct-v1",
    device: str = "cpu",
    precision: str = "auto",
    num_threads: int | None = None,
    network_input: str = "head",
    margin_mm: float = DEFAULT_MARGIN_MM,
    hemorrhage_threshold: float | None = DEFAULT_HEMORRHAGE_THRESHOLD,
    log: Callable[[str], None] | None = None,
    hemorrhage_seed: float | None = DEFAULT_HEMORRHAGE_SEED,
    grid_shifts: int = DEFAULT_GRID_SHIFTS,
) -> TemplateSegmentation:
    """Run the network over the brain (and ``margin_mm`` around it) of a template-space CT."""
    roi = region_of_interest(brain, affine, margin_mm)
    if network_input == "brain":
        hu = np.where(brain, hu, 0.0).astype(np.float32)
    probs, info = run_model(hu, roi, model, device, log, precision=precision, num_threads=num_threads,
                            grid_shifts=grid_shifts)
    before_seed = threshold_labels(probs, hemorrhage_threshold)
    labels = keep_seeded_blood(before_seed, probs, hemorrhage_seed)
    qc = segmentation_qc(probs, labels, brain, roi, voxel_volume_ml(affine))
    qc["hemorrhage_below_seed_ml"] = blood_left_out_ml(before_seed, labels, voxel_volume_ml(affine))
    box_probs, probs_affine = crop_to_roi(probs, roi, affine)
    info.update(network_input=network_input, margin_mm=margin_mm, device=device,
                hemorrhage_threshold=hemorrhage_threshold, hemorrhage_seed=hemorrhage_seed)
    return TemplateSegmentation(box_probs, probs_affine, labels, qc, info)


def probabilities_to_scan(
    probabilities: np.ndarray,
    probabilities_affine: np.ndarray,
    scan_shape: tuple[int, int, int],
    scan_affine: np.ndarray,
    template_to_scan: np.ndarray,
    hemorrhage_threshold: float | None = DEFAULT_HEMORRHAGE_THRESHOLD,
    hemorrhage_seed: float | None = DEFAULT_HEMORRHAGE_SEED,
    class_zones: Callable[..., dict[int, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities mapped onto the scan's grid; returns its label map and the total
    hemorrhage probability there. ``class_zones(near=mask)``, given the voxels labelled with a
    confined bleeding class (:data:`~ichseg.pipeline.labels.CONFINED_INDICES`), returns where
    those classes may lie (class -> mask on the scan's grid;
    :func:`ichseg.pipeline.location.class_zones`), and they are kept there
    (:func:`confine_bleeding_classes`); it is not called when no voxel has such a label."""
    from ichseg.pipeline.registration import warp_to_scan

    scan_probs = warp_to_scan(probabilities, probabilities_affine, scan_shape, scan_affine, template_to_scan)
    # Outside the segmented box every class but background has probability 0, and
    # background 1; linear interpolation is linear, so adding the missing mass to the
    # background channel equals warping with those per-class fill values.
    scan_probs[0] += np.clip(1.0 - scan_probs.sum(axis=0), 0.0, 1.0)
    labels = label_map(scan_probs, hemorrhage_threshold, hemorrhage_seed)
    near = np.isin(labels, CONFINED_INDICES) if class_zones is not None else None
    if near is not None and near.any():
        zones = class_zones(near=near)
        if zones:
            labels = confine_bleeding_classes(labels, scan_probs, zones)
    hemorrhage = np.clip(total_hemorrhage_probability(scan_probs), 0, 1).astype(np.float32)
    return labels, hemorrhage
