"""Fine-tuning a DeepMedic network on CTs with reference segmentations.

Each training CT is prepared as ichseg runs it: checked and reoriented, brain-extracted,
moved with ichseg's default ``--transform`` and resampled onto the template grid together with
its reference labels (nearest neighbour) and brain mask; the network then learns on patches
of that grid, as it will later be run. Patches are drawn around voxels of a class chosen
with BLAST-CT's class probabilities (background 0.3, each other class 0.175, among the
classes the scan has; a hemorrhage mask's blood counts as one class), mirrored left-right at
random. Half of the background patches are
centred on background as dense as clot away from bone (:func:`dense_background`: venous
sinuses, arteries, dense grey matter), which a draw over the whole region rarely reaches:
without them, fine-tuning on blood teaches the network to call them blood. With
``mined`` voxels (:func:`mine_background`: where the base model already half sees blood), half
of those dense-background patches go there instead. With ``base`` probabilities
(:func:`base_probabilities`, ``ichseg train --distil``), the target of a voxel whose class the
reference leaves open (ignored voxels; with a hemorrhage mask, which blood class, and
background or oedema) is the base model's distribution over the classes left open
(:func:`soft_targets`): the network keeps what the reference does not trace, instead of
forgetting it (learning without forgetting, Li & Hoiem 2017). Batch norm keeps
the statistics of the base model (batches of a few patches are too small to estimate them);
dropout stays on.

Validation uses a fixed set of patches of the validation scans, drawn once from the seed:
the score is the hemorrhage Dice over them. Training stops after ``patience`` epochs without
a better score; the best weights are kept. A checkpoint after every epoch (model, optimiser,
random state, history) lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ichseg.pipeline.assets import file_sha256
from ichseg.pipeline.brain import extract_brain
from ichseg.pipeline.fileutils import atomic_output
from ichseg.pipeline.geometry import voxel_sizes
from ichseg.pipeline.image import load_ct
from ichseg.pipeline.labels import HEMORRHAGE_INDICES, IPH_INDEX, LABELS, OEDEMA_INDEX
from ichseg.pipeline.registration import (
    OUTSIDE_FOV_HU,
    register_to_template,
    warp_to_template,
)
from ichseg.pipeline.segmentation import DEFAULT_MARGIN_MM, region_of_interest
from ichseg.pipeline.settings import ANTS_TRANSFORMS, DEFAULT_TRANSFORM

LOGGER = logging.getLogger(__name__)

#: BLAST-CT's patch sampling: probability of centring a patch on each class.
CLASS_PROBABILITIES = (0.3, 0.175, 0.175, 0.175, 0.175)

#: Probability that a training patch is mirrored left-right.
MIRROR_PROBABILITY = 0.5

#: Share of the background patches centred on dense background: the density range (HU) of
#: clot, after smoothing (sigma, mm) so that noise does not count, and at least a distance (mm)
#: from bone (here: 150 HU and denser, lower than brain.BONE_HU, so that the bone's partial
#: volume counts too), which would otherwise make most of it.
DENSE_BACKGROUND_SHARE = 0.5
DENSE_BACKGROUND_HU = (50.0, 100.0)
DENSE_BACKGROUND_SMOOTHING_MM = 1.5
DENSE_BACKGROUND_BONE_DISTANCE_MM = 3
DENSE_BACKGROUND_BONE_HU = 150.0

#: Background that the base model takes for blood (total hemorrhage probability at least the
#: first, at least a distance (mm) from any labelled or ignored voxel), mined before training
#: (``ichseg train --mine-background``): where fine-tuning is most likely to add false blood.
#: It takes half of the dense share of the background patches of a scan that has any.
MINED_BACKGROUND_PROBABILITY = 0.2
MINED_BACKGROUND_DISTANCE_MM = 3
MINED_SHARE_OF_DENSE = 0.5

#: Label of voxels that the reference leaves out (its ``desc-ignore`` mask): no loss (or, with
#: base probabilities, the base model's), no score.
IGNORE_LABEL = 255
#: Labels of a hemorrhage-mask reference (``_mask``), which says where blood is but not which
#: class: blood of any bleeding class, and no blood (background or oedema).
ANY_BLOOD_LABEL = 254
NO_BLOOD_LABEL = 253

#: The classes each prepared label leaves open (a row per label value, a column per class).
OPEN_CLASSES = np.zeros((256, len(LABELS)), dtype=bool)
OPEN_CLASSES[np.arange(len(LABELS)), np.arange(len(LABELS))] = True
OPEN_CLASSES[ANY_BLOOD_LABEL, list(HEMORRHAGE_INDICES)] = True
OPEN_CLASSES[NO_BLOOD_LABEL, [0, OEDEMA_INDEX]] = True
OPEN_CLASSES[IGNORE_LABEL] = True

#: Base probabilities are kept as uint8, in steps of 1/255.
BASE_PROBABILITY_SCALE = 255


@dataclass
class PreparedScan:
    """A training CT on the template grid, in the network's axes."""

    name: str
    hu: np.ndarray  # float32
    labels: np.ndarray  # uint8
    roi: np.ndarray  # bool: brain + margin, where patches are centred
    mined: np.ndarray | None = None  # flat indices of :func:`mine_background`'s voxels, once mined
    base: np.ndarray | None = None  # (classes, *grid) uint8: :func:`base_probabilities`, for soft targets
    _centres: dict = field(default_factory=dict, repr=False, compare=False)

    def centre_voxels(self, kind: int | str) -> np.ndarray:
        """Flat indices of the voxels a patch of ``kind`` is centred on, computed once per scan:
        a class index above 0, or ``"dense"`` (:func:`dense_background`). The background's
        voxels (the whole region) are not kept: they would take 8 bytes a voxel."""
        if kind not in self._centres:
            where = (dense_background(self.hu, self.labels, self.roi) if kind == "dense"
                     else (self.labels == kind) & self.roi)
            self._centres[kind] = np.flatnonzero(where)
        return self._centres[kind]


def dense_background(hu: np.ndarray, labels: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Background of the region whose mean density over a few millimetres is that of clot
    (:data:`DENSE_BACKGROUND_HU`), away from bone: on the 1 mm template grid."""
    low, high = DENSE_BACKGROUND_HU
    smooth = ndi.gaussian_filter(np.minimum(hu, DENSE_BACKGROUND_BONE_HU), DENSE_BACKGROUND_SMOOTHING_MM)
    near_bone = ndi.binary_dilation(hu >= DENSE_BACKGROUND_BONE_HU, iterations=DENSE_BACKGROUND_BONE_DISTANCE_MM)
    return roi & unlabelled_background(labels) & (smooth >= low) & (smooth <= high) & ~near_bone


def unlabelled_background(labels: np.ndarray) -> np.ndarray:
    """Voxels the reference calls background: no class, no blood of a mask, not ignored."""
    return (labels == 0) | (labels == NO_BLOOD_LABEL)


def base_probabilities(scan: PreparedScan, network, window, precision: str = "fp32") -> np.ndarray:
    """The base model's class probabilities (classes, *grid) over the scan's region, as uint8
    (:data:`BASE_PROBABILITY_SCALE`): what mining and soft targets start from."""
    from ichseg.pipeline.inference import predict_probabilities

    probabilities, _ = predict_probabilities(window(scan.hu), [network], scan.roi, precision=precision)
    return np.rint(probabilities * BASE_PROBABILITY_SCALE).astype(np.uint8)


def mine_background(scan: PreparedScan, base: np.ndarray) -> np.ndarray:
    """Flat indices of the background where the base model (``base``: :func:`base_probabilities`)
    gives a total hemorrhage probability of :data:`MINED_BACKGROUND_PROBABILITY` or more, at least
    :data:`MINED_BACKGROUND_DISTANCE_MM` from anything labelled (or ignored); on the 1 mm grid."""
    blood = base[list(HEMORRHAGE_INDICES)].sum(axis=0, dtype=np.int32) >= (
        MINED_BACKGROUND_PROBABILITY * BASE_PROBABILITY_SCALE)
    far_from_labels = ndi.distance_transform_edt(unlabelled_background(scan.labels)) > MINED_BACKGROUND_DISTANCE_MM
    return np.flatnonzero(blood & far_from_labels & scan.roi)


def soft_targets(labels: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per-voxel target distributions (n, classes, ...) of patches of prepared ``labels`` (n, ...):
    one-hot where the label names a class; elsewhere the base model's probabilities ``base``
    (n, classes, ..., uint8) over the classes the label leaves open (:data:`OPEN_CLASSES`),
    renormalised, or uniform over them where the base model gives them none."""
    open_classes = np.moveaxis(OPEN_CLASSES[labels], -1, 1)
    weights = base.astype(np.float32) * open_classes
    total = weights.sum(axis=1, keepdims=True)
    uniform = open_classes / open_classes.sum(axis=1, keepdims=True)
    return np.where(total > 0, weights / np.maximum(total, 1.0), uniform).astype(np.float32)


def prepare_scan(name: str, ct_path: Path, labels_path: Path, template: Path, workdir: Path,
                 margin_mm: float = DEFAULT_MARGIN_MM, ignore_path: Path | None = None,
                 transform: str = DEFAULT_TRANSFORM, is_mask: bool = False) -> PreparedScan:
    """CT and reference labels on the template grid, as ichseg's pipeline would see them.

    A hemorrhage mask (``is_mask``) becomes :data:`ANY_BLOOD_LABEL` and :data:`NO_BLOOD_LABEL`.
    Background voxels of the optional ``ignore_path`` mask (tissue the reference does not
    describe, such as a host scan's own hematoma) get :data:`IGNORE_LABEL`.
    """
    from ichseg.pipeline.inference import ras_to_network_axes

    ct = nib.as_closest_canonical(load_ct(ct_path))
    reference = nib.as_closest_canonical(nib.load(str(labels_path)))
    if reference.shape[:3] != ct.shape[:3] or not np.allclose(reference.affine, ct.affine, atol=1e-3):
        raise ValueError(f"{labels_path} is not on the grid of {ct_path}: resample it onto the CT")
    raw = np.asanyarray(reference.dataobj)
    unknown = sorted(set(np.unique(raw).tolist()) - {lab.index for lab in LABELS})
    if unknown and not is_mask:
        raise ValueError(f"{labels_path} holds labels {unknown} that ichseg's label table lacks ("
                         + ", ".join(f"{lab.index} {lab.abbreviation}" for lab in LABELS)
                         + "): relabel it, or give a hemorrhage mask (_mask) and train with --distil")
    hu = np.asanyarray(ct.dataobj, dtype=np.float32)
    brain = extract_brain(hu, voxel_sizes(ct.affine))
    template_img = nib.load(str(template))
    result = register_to_template(hu, ct.affine, brain, template, workdir / f"{name}_template_to_ct.mat",
                                  ANTS_TRANSFORMS[transform])
    to_scan = result["template_to_scan"]
    warped = warp_to_template(np.stack([hu - OUTSIDE_FOV_HU, brain.astype(np.float32)]), ct.affine, template_img,
                              to_scan)
    reference_labels = raw.astype(np.uint8)
    if is_mask:
        reference_labels = np.where(reference_labels > 0, ANY_BLOOD_LABEL, NO_BLOOD_LABEL).astype(np.uint8)
    if ignore_path is not None:
        ignore = nib.as_closest_canonical(nib.load(str(ignore_path)))
        if ignore.shape[:3] != ct.shape[:3]:
            raise ValueError(f"{ignore_path} is not on the grid of {ct_path}: resample it onto the CT")
        reference_labels[(np.asanyarray(ignore.dataobj) > 0) & unlabelled_background(reference_labels)] = IGNORE_LABEL
    labels = warp_to_template(reference_labels.astype(np.float32), ct.affine, template_img, to_scan, order=0)
    brain_t = warped[1] >= 0.5
    roi = region_of_interest(brain_t, template_img.affine, margin_mm)
    return PreparedScan(
        name,
        ras_to_network_axes(warped[0] + OUTSIDE_FOV_HU).astype(np.float32),
        ras_to_network_axes(np.rint(labels).astype(np.uint8)),
        ras_to_network_axes(roi),
    )


def inputs_fingerprint(ct_path: Path, labels_path: Path, template: Path, ignore_path: Path | None = None,
                       margin_mm: float = DEFAULT_MARGIN_MM, transform: str = DEFAULT_TRANSFORM,
                       is_mask: bool = False) -> str:
    """sha256 of what :func:`prepare_scan` reads and how, so that a cached scan is remade when any of it changes."""
    parts = [file_sha256(p) if p is not None else "-" for p in (ct_path, labels_path, template, ignore_path)]
    parts += [f"{margin_mm:g}", transform] + (["mask"] if is_mask else [])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def save_prepared(scan: PreparedScan, path: Path, fingerprint: str = "") -> None:
    np.savez_compressed(path, hu=scan.hu.astype(np.float16), labels=scan.labels, roi=scan.roi,
                        inputs=np.array(fingerprint))


def load_prepared(name: str, path: Path, fingerprint: str | None = None) -> PreparedScan | None:
    """The prepared scan at ``path``; None where ``fingerprint`` is given and differs from the stored one."""
    with np.load(path) as data:
        if fingerprint is not None and ("inputs" not in data or str(data["inputs"]) != fingerprint):
            return None
        return PreparedScan(name, data["hu"].astype(np.float32), data["labels"], data["roi"])


# --------------------------------------------------------------------------- patches


#: What a patch is centred on, with its probability: a class, a hemorrhage mask's blood, or, on a
#: scan with base probabilities (soft targets), ignored voxels, each of the last two as often as
#: IPH: without their own draw the base model's behaviour there (a host's hematoma and oedema)
#: would be met only by chance, and forgotten.
CENTRE_KINDS = {**dict(enumerate(CLASS_PROBABILITIES)), ANY_BLOOD_LABEL: CLASS_PROBABILITIES[IPH_INDEX],
                IGNORE_LABEL: CLASS_PROBABILITIES[IPH_INDEX]}


def draw_patch_centre(scan: PreparedScan, rng: np.random.Generator) -> np.ndarray:
    """Index of a voxel to centre a training patch on (module docstring: the classes, the
    dense and the mined background)."""
    present = [c for c in CENTRE_KINDS
               if c == 0 or (c != IGNORE_LABEL or scan.base is not None) and len(scan.centre_voxels(c))]
    weights = np.array([CENTRE_KINDS[c] for c in present])
    cls = present[rng.choice(len(present), p=weights / weights.sum())]
    voxels = scan.centre_voxels(cls) if cls else None
    if cls == 0 and (draw := rng.random()) < DENSE_BACKGROUND_SHARE:
        if scan.mined is not None and len(scan.mined) and draw < DENSE_BACKGROUND_SHARE * MINED_SHARE_OF_DENSE:
            voxels = scan.mined
        else:
            dense = scan.centre_voxels("dense")
            voxels = dense if len(dense) else None
    if voxels is None:
        voxels = np.flatnonzero(scan.roi)
    return np.array(np.unravel_index(voxels[rng.integers(len(voxels))], scan.roi.shape))


def patch_sampling(mined_background: bool = False, distil: bool = False) -> dict:
    """How :func:`draw_patch_centre` chooses patches, for the model card."""
    return {"class_probabilities": dict(zip(label_names().values(), CLASS_PROBABILITIES)),
            "hemorrhage_mask_blood": CENTRE_KINDS[ANY_BLOOD_LABEL],
            "ignored_voxels": CENTRE_KINDS[IGNORE_LABEL] if distil else None,
            "dense_background": {"share_of_background_patches": DENSE_BACKGROUND_SHARE,
                                 "hu": list(DENSE_BACKGROUND_HU), "smoothing_sigma_mm": DENSE_BACKGROUND_SMOOTHING_MM,
                                 "bone_hu": DENSE_BACKGROUND_BONE_HU,
                                 "bone_distance_mm": DENSE_BACKGROUND_BONE_DISTANCE_MM},
            "mined_background": {"probability": MINED_BACKGROUND_PROBABILITY,
                                 "distance_mm": MINED_BACKGROUND_DISTANCE_MM,
                                 "share_of_dense_patches": MINED_SHARE_OF_DENSE} if mined_background else None,
            "mirrored_left_right": MIRROR_PROBABILITY}


def extract_patch(volume: np.ndarray, centre: np.ndarray, size: int, fill: float) -> np.ndarray:
    """A cube of ``size`` voxels around ``centre`` (padded with ``fill`` beyond the volume)."""
    low = centre - size // 2
    out = np.full((size,) * 3, fill, dtype=volume.dtype)
    src = tuple(slice(max(0, lo), min(n, lo + size)) for lo, n in zip(low, volume.shape))
    dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, low))
    out[dst] = volume[src]
    return out


def sample_patches(scans: Sequence[PreparedScan], n: int, output: int, context: int, window,
                   rng: np.random.Generator, mirror: bool = True,
                   soft: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training pairs: windowed inputs (n, 1, s, s, s), s = output + context, and
    labels (n, output, output, output), or with ``soft`` the :func:`soft_targets` of the scans'
    base probabilities (n, classes, output, output, output)."""
    size = output + context
    inputs = np.empty((n, 1, size, size, size), dtype=np.float32)
    labels = np.empty((n, output, output, output), dtype=np.uint8)
    base = np.empty((n, len(LABELS), output, output, output), dtype=np.uint8) if soft else None
    for i in range(n):
        scan = scans[rng.integers(len(scans))]
        centre = draw_patch_centre(scan, rng)
        flip = mirror and rng.random() < MIRROR_PROBABILITY  # left-right: the last network axis
        oriented = (lambda a: a[..., ::-1]) if flip else (lambda a: a)
        inputs[i, 0] = oriented(window(extract_patch(scan.hu, centre, size, OUTSIDE_FOV_HU)))
        labels[i] = oriented(extract_patch(scan.labels, centre, output, 0))
        if soft:  # beyond the grid: background, certain
            base[i] = oriented(np.stack([extract_patch(scan.base[c], centre, output,
                                                       BASE_PROBABILITY_SCALE if c == 0 else 0)
                                         for c in range(len(LABELS))]))
    return inputs, (soft_targets(labels, base) if soft else labels.astype(np.int64))


# --------------------------------------------------------------------------- training


@dataclass
class TrainingSettings:
    epochs: int = 20
    iterations: int = 50  # optimiser steps per epoch
    batch_size: int = 2
    output_patch: int = 30  # output voxels per patch side (input: + the network's context)
    learning_rate: float = 1e-4
    patience: int = 4  # epochs without a better validation score before stopping
    validation_patches: int = 8  # per validation scan
    seed: int = 0
    precision: str = "fp32"  # fp32, or bf16 (CPU with AMX/AVX-512-BF16, CUDA), fp16 (CUDA)
    device: str = "cpu"
    distil: bool = False  # soft targets from the base probabilities where the reference leaves the class open
    mine_background: bool = False  # the scans' ``mined`` background was set before training


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf


def hemorrhage_dice(logits, targets) -> tuple[int, int]:
    """Numerator and denominator of the hemorrhage Dice of a batch (summed over patches)."""
    import torch

    blood = torch.tensor(HEMORRHAGE_INDICES, device=logits.device)
    predicted = torch.isin(logits.argmax(dim=1), blood)
    truth = torch.isin(targets, torch.tensor([*HEMORRHAGE_INDICES, ANY_BLOOD_LABEL], device=targets.device))
    predicted &= targets != IGNORE_LABEL
    return int(2 * (predicted & truth).sum()), int(predicted.sum() + truth.sum())


def _set_batch_norm_eval(network) -> None:
    import torch

    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def train(network, config: dict, window, training: Sequence[PreparedScan], validation: Sequence[PreparedScan],
          out_dir: Path, settings: TrainingSettings, resume: bool = False,
          progress: Callable[[str], None] | None = None) -> History:
    """Fine-tune ``network`` in place; writes ``checkpoint.pt`` and the best ``model_1.pt``
    into ``out_dir`` and returns the history. With ``settings.distil`` every training scan
    needs its ``base`` probabilities. A checkpoint is resumed only with the same settings (the
    number of epochs and the patience aside)."""
    import torch

    from ichseg.pipeline.cpu import configure_torch, usable_cpus
    from ichseg.pipeline.inference import COMPUTE_DTYPES
    from ichseg.pipeline.streaming import context_and_period

    say = progress or LOGGER.info
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.device == "cpu":
        configure_torch(min(torch.get_num_threads(), usable_cpus()))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    context, _ = context_and_period(network)
    network.to(settings.device)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    history = History()
    checkpoint = out_dir / "checkpoint.pt"
    start = 0
    if settings.distil and any(scan.base is None for scan in training):
        raise ValueError("soft targets (distil) need the base model's probabilities of every training scan")
    if resume and checkpoint.is_file():
        state = torch.load(str(checkpoint), map_location=settings.device, weights_only=False)
        changed = _changed_settings(state["settings"], asdict(settings))
        if changed:
            raise ValueError(f"{checkpoint} was trained with other settings ({changed}): resume with the "
                             "same ones, or train into a new model folder")
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history = History(**state["history"])
        start = state["epoch"] + 1
        say(f"resumed after epoch {start} (best validation Dice {history.best_score:.4f})")
    # fixed validation patches, drawn from their own seed
    val_inputs, val_targets = sample_patches(validation, settings.validation_patches * len(validation),
                                             settings.output_patch, context, window,
                                             np.random.default_rng([settings.seed, 1]), mirror=False) \
        if validation else (None, None)
    dtype = COMPUTE_DTYPES[settings.precision]
    autocast = torch.autocast(torch.device(settings.device).type, dtype=dtype, enabled=settings.precision != "fp32")

    def soft_cross_entropy(logits, targets):  # with the target distribution of every voxel
        return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    loss_fn = soft_cross_entropy if settings.distil else torch.nn.CrossEntropyLoss(ignore_index=IGNORE_LABEL)
    for epoch in range(start, settings.epochs):
        began = time.time()
        network.train()
        _set_batch_norm_eval(network)
        losses = []
        for _ in range(settings.iterations):
            x, y = sample_patches(training, settings.batch_size, settings.output_patch, context, window, rng,
                                  soft=settings.distil)
            x = torch.from_numpy(x).to(settings.device)
            y = torch.from_numpy(y).to(settings.device)
            with autocast:
                logits, _ = network(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        score = float("nan")
        if val_inputs is not None:
            network.eval()
            numerator = denominator = 0
            with torch.inference_mode(), autocast:
                for i in range(0, len(val_inputs), settings.batch_size):
                    logits, _ = network(torch.from_numpy(val_inputs[i:i + settings.batch_size]).to(settings.device))
                    a, b = hemorrhage_dice(logits.float(), torch.from_numpy(val_targets[i:i + settings.batch_size]).to(settings.device))
                    numerator, denominator = numerator + a, denominator + b
            score = numerator / denominator if denominator else float("nan")
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "validation_dice": score,
                  "seconds": round(time.time() - began, 1)}
        history.epochs.append(record)
        improved = math.isnan(score) or score > history.best_score
        if improved:
            history.best_score = score if not math.isnan(score) else history.best_score
            history.best_epoch = epoch + 1
            _atomic_torch_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, out_dir / "model_1.pt")
        say(f"epoch {epoch + 1}/{settings.epochs}: loss {record['loss']:.4f}, validation hemorrhage Dice "
            f"{score:.4f}{' (best)' if improved else ''}, {record['seconds']} s")
        _atomic_torch_save({"epoch": epoch, "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                            "history": asdict(history), "settings": asdict(settings)}, checkpoint)
        if history.best_epoch is not None and epoch + 1 - history.best_epoch >= settings.patience:
            say(f"no better validation score for {settings.patience} epochs: stopping")
            break
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return history


#: Settings that may change when a run is resumed.
RESUMABLE_CHANGES = ("epochs", "patience")


def _changed_settings(before: dict, now: dict) -> str:
    """The settings other than :data:`RESUMABLE_CHANGES` that differ, as ``name: before -> now``."""
    before = {**asdict(TrainingSettings()), **before}  # a checkpoint from before a setting existed: its default
    names = sorted((set(before) | set(now)) - set(RESUMABLE_CHANGES))
    return ", ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in names if before.get(k) != now.get(k))


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    with atomic_output(path) as tmp:  # the one atomic writer: umask permissions, like any output
        torch.save(obj, tmp)


def label_names() -> dict[int, str]:
    return {lab.index: lab.name for lab in LABELS}
