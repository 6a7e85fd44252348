"""``ichseg train``: fine-tune a network on a BIDS dataset with reference segmentations.

    ichseg train BIDS_DIR REFERENCE_DIR MODEL_DIR [--base blastct-v1] [--epochs N] ...

``REFERENCE_DIR`` holds reference label maps as ``ichseg evaluate`` reads them (``_dseg`` with
ichseg's labels, on each CT's grid; an optional ``_desc-ignore_mask`` leaves voxels out of the
loss and the validation score), or, with ``--distil``, hemorrhage masks (``_mask``): there the
base model's probabilities decide what the reference leaves open (which blood class; background
or oedema; the ignored voxels), so that fine-tuning does not unlearn the classes it does not
trace. Subjects are split into training and validation; every
scan is prepared as ichseg runs it (brain extraction, rigid registration to the CT template)
and cached in the work directory, and the network is fine-tuned from the base weights
(:mod:`ichseg.pipeline.training`). ``MODEL_DIR`` receives ``model_1.pt`` (the best weights),
``config.json``, ``checkpoint.pt`` (``--resume`` continues from it) and a model card
(``model_card.json``, ``README.md``) naming the data, the settings, the validation history
and the license of the base weights. Run it with ``ichseg ... --model MODEL_DIR``, after
measuring it on scans it has not seen (``ichseg evaluate``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ichseg.pipeline import __version__

LOGGER = logging.getLogger("ichseg")


def build_parser() -> argparse.ArgumentParser:
    from ichseg.pipeline.training import TrainingSettings

    d = TrainingSettings()
    p = argparse.ArgumentParser(prog="ichseg train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bids_dir", type=Path, help="BIDS dataset of head CTs")
    p.add_argument("reference_dir", type=Path, help="BIDS derivatives with a reference _dseg per CT")
    p.add_argument("model_dir", type=Path, help="where the fine-tuned model is written")
    p.add_argument("--base", default="blastct-v1", help="model to start from (one network)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects to use (default: all)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="share of subjects for validation")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--iterations", type=int, default=d.iterations, help="optimiser steps per epoch")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--output-patch", type=int, default=d.output_patch,
                   help="output voxels per patch side (the input adds the network's 80-voxel context)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--patience", type=int, default=d.patience, help="epochs without improvement before stopping")
    p.add_argument("--validation-patches", type=int, default=d.validation_patches, help="per validation scan")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--mine-background", action="store_true",
                   help="before training, run the base model on every training scan and centre some background "
                        "patches where it takes background for blood (one network run per scan, cached)")
    p.add_argument("--distil", action="store_true",
                   help="where the reference leaves the class open (ignored voxels; with hemorrhage masks, which "
                        "blood class, and background or oedema) train towards the base model's probabilities "
                        "instead of leaving it out (one network run per training scan, cached); needed for _mask "
                        "references")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint.pt (same settings)")
    p.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="where prepared scans are cached (default: MODEL_DIR/prepared)")
    return p


def split_subjects(subjects: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Training and validation subjects: a seeded shuffle, at least one of each when possible."""
    subjects = sorted(set(subjects))
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_val = min(len(subjects) - 1, max(1, math.ceil(fraction * len(subjects)))) if len(subjects) > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def dataset_license(root: Path) -> str | None:
    """The ``License`` of a BIDS dataset's dataset_description.json, or None where it states none."""
    try:
        value = json.loads((root / "dataset_description.json").read_text(encoding="utf-8")).get("License")
    except (OSError, ValueError, AttributeError):
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def write_model_card(model_dir: Path, card: dict) -> None:
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    history = card["history"]["epochs"]
    rows = "\n".join(f"| {h['epoch']} | {h['loss']:.4f} | {h['validation_dice']:.4f} |" for h in history)
    text = f"""# {card['name']}

Fine-tuned by `ichseg train` (ichseg {card['ichseg_version']}, {card['date']}) from **{card['base']['name']}**.

## Base model

{card['base']['description']}

- Citation: {card['base']['citation']}
- License of the base weights: {card['base']['license']} ({card['base']['url']}); these
  weights are derived from them and keep that license.

## Data it saw

- CTs: `{card['data']['bids_dir']}`; references: `{card['data']['reference_dir']}`
- License of the data: {_license_line(card['data']['license'])}
- Training: {len(card['data']['training_scans'])} scans of {len(card['data']['training_subjects'])} subjects: {', '.join(card['data']['training_subjects'])}
- Validation: {len(card['data']['validation_scans'])} scans of {len(card['data']['validation_subjects'])} subjects: {', '.join(card['data']['validation_subjects'])}
- Put on the template grid with `--transform {card['data'].get('transform', 'rigid')}`; run the model with the same `--transform`

## Training

Settings: `{json.dumps(card['settings'])}`

Patches: `{json.dumps(card.get('patch_sampling', 'not recorded (ichseg before the dense-background sampling)'))}`

Targets: {_targets_line(card['settings'])}

| epoch | loss | validation hemorrhage Dice (patches) |
|---:|---:|---:|
{rows}

Best epoch: {card['history']['best_epoch']}. The validation Dice is measured on fixed patches
of the validation scans, not on whole scans: measure the model on scans it has never seen
with `ichseg evaluate` before using it.
"""
    (model_dir / "README.md").write_text(text)


def _targets_line(settings: dict) -> str:
    if settings.get("distil"):
        return ("the reference's class where it names one; elsewhere (ignored voxels, a hemorrhage mask's blood "
                "and background) the base model's probabilities over the classes left open (`--distil`)")
    return "the reference's classes; ignored voxels left out of the loss"


def _license_line(licenses: dict[str, str | None]) -> str:
    stated = [f"{what}: {text}" for what, text in licenses.items() if text]
    missing = [what for what, text in licenses.items() if not text]
    line = "; ".join(stated)
    if missing:
        line += ("; " if line else "") + (
            f"not stated for the {' and the '.join(missing)} (no `License` in dataset_description.json): "
            "check the terms of the data before sharing these weights")
    elif stated:
        line += ". Weights trained on data carry its terms too: check them before sharing these weights"
    return line


def run_train(argv: list[str] | None = None) -> int:
    """``ichseg train``: returns the exit status."""
    from ichseg.bids_app.bids import BIDSInputError
    from ichseg.pipeline.assets import AssetError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return _train(args)
    except (ValueError, FileNotFoundError, BIDSInputError, AssetError) as exc:
        print(f"ichseg train: error: {exc}", file=sys.stderr)
        return 2


def _base_probabilities(scans, network, window, weights: Path, work: Path, precision: str,
                        mine: bool, keep: bool) -> None:
    """The base model's probabilities of every scan (:func:`~ichseg.pipeline.training.base_probabilities`),
    cached in ``work`` by what they are computed from: the scan's CT and region on the template
    grid, the base weights and the precision (a scan prepared again from another CT is run
    again, and its older run removed); from them each scan's ``mined`` background (``mine``),
    and its ``base`` probabilities, memory-mapped (``keep``)."""
    from ichseg.pipeline.assets import file_sha256
    from ichseg.pipeline.fileutils import atomic_output
    from ichseg.pipeline.training import base_probabilities, mine_background

    model = f"{file_sha256(weights)}{precision}"
    for i, scan in enumerate(scans, 1):
        key = hashlib.sha256(model.encode())
        key.update(scan.hu.tobytes())
        key.update(np.packbits(scan.roi).tobytes())
        cache = work / f"{scan.name}_base-{key.hexdigest()[:16]}.npy"
        if not cache.is_file():
            LOGGER.info("running the base model on %s (%d/%d)", scan.name, i, len(scans))
            with atomic_output(cache) as tmp, open(tmp, "wb") as f:
                np.save(f, base_probabilities(scan, network, window, precision))
            # one run per scan: a run of other weights, precision or inputs is 35 MB of stale cache
            for stale in work.glob(f"{scan.name}_base-*.npy"):
                if stale != cache:
                    stale.unlink()
        base = np.load(cache, mmap_mode="r")
        if mine:
            scan.mined = mine_background(scan, base)
        scan.base = base if keep else None


def _train(args) -> int:
    from ichseg.bids_app.bids import collect_ct_images
    from ichseg.bids_app.evaluate import find_references
    from ichseg.pipeline import assets
    from ichseg.pipeline.cpu import busy_cpus_message, usable_cpus
    from ichseg.pipeline.inference import IntensityWindow, load_networks
    from ichseg.pipeline.models import resolve_model
    from ichseg.pipeline.settings import DEFAULT_TRANSFORM
    from ichseg.pipeline.training import (
        TrainingSettings,
        inputs_fingerprint,
        load_prepared,
        patch_sampling,
        prepare_scan,
        save_prepared,
        train,
    )

    busy = busy_cpus_message(usable_cpus()) if args.device == "cpu" else None
    if busy:
        LOGGER.warning(busy)
    base = resolve_model(args.base)
    if len(base.weight_paths) != 1:
        raise ValueError(f"--base {args.base} has {len(base.weight_paths)} networks: start from one (blastct-v1)")
    images = collect_ct_images(args.bids_dir, args.participant_label)
    references = find_references(args.reference_dir)
    pairs = [(img, references[img.scan_id]) for img in images if img.scan_id in references]
    if not pairs:
        raise ValueError(f"{args.reference_dir}: no reference _dseg matches a CT of {args.bids_dir}")
    masks = sorted(img.scan_id for img, ref in pairs if ref.is_mask)
    if masks and not args.distil:
        raise ValueError(f"the references of {', '.join(masks)} are hemorrhage masks (_mask), which do not say "
                         "which class a voxel is: add --distil (the base model decides the class there) or give "
                         "label maps (_dseg with ichseg's labels)")
    unpaired = sorted({img.scan_id for img in images} - {img.scan_id for img, _ in pairs})
    if unpaired:
        LOGGER.info("no reference for %d scan(s), not used: %s", len(unpaired), ", ".join(unpaired))
    train_subjects, val_subjects = split_subjects([img.subject for img, _ in pairs], args.validation_fraction,
                                                  args.seed)
    work = args.work_dir or args.model_dir / "prepared"
    work.mkdir(parents=True, exist_ok=True)
    template = assets.get_asset(assets.TEMPLATE_CT)
    prepared = {}
    for img, ref in pairs:
        cache = work / f"{img.scan_id}.npz"
        fingerprint = inputs_fingerprint(img.path, ref.path, template, ref.ignore, transform=DEFAULT_TRANSFORM,
                                         is_mask=ref.is_mask)
        scan = load_prepared(img.scan_id, cache, fingerprint) if cache.is_file() else None
        if scan is None:
            LOGGER.info("preparing %s%s", img.scan_id,
                        " again: its CT, reference or ignore mask changed" if cache.is_file() else "")
            save_prepared(prepare_scan(img.scan_id, img.path, ref.path, template, work, ignore_path=ref.ignore,
                                       transform=DEFAULT_TRANSFORM, is_mask=ref.is_mask),
                          cache, fingerprint)
            scan = load_prepared(img.scan_id, cache)
        prepared[img.scan_id] = scan
    training = [prepared[img.scan_id] for img, _ in pairs if img.subject in train_subjects]
    validation = [prepared[img.scan_id] for img, _ in pairs if img.subject in val_subjects]
    settings = TrainingSettings(epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size,
                                output_patch=args.output_patch, learning_rate=args.learning_rate,
                                patience=args.patience, validation_patches=args.validation_patches,
                                seed=args.seed, precision=args.precision, device=args.device, distil=args.distil,
                                mine_background=args.mine_background)
    network = load_networks(base.weight_paths, base.config, args.device)[0]
    window = IntensityWindow(*base.spec.input_window_hu)
    if args.mine_background or args.distil:
        _base_probabilities(training, network, window, base.weight_paths[0], work, args.precision,
                            mine=args.mine_background, keep=args.distil)
    history = train(network, base.config, window, training, validation, args.model_dir, settings, resume=args.resume)
    card = {
        "name": args.model_dir.name, "ichseg_version": __version__,
        "date": time.strftime("%Y-%m-%d"),
        "base": {"name": base.spec.name, "description": base.spec.description, "citation": base.spec.citation,
                 "license": base.spec.license, "url": base.spec.url},
        "data": {"bids_dir": str(args.bids_dir.absolute()), "reference_dir": str(args.reference_dir.absolute()),
                 "license": {"CTs": dataset_license(args.bids_dir),
                             "references": dataset_license(args.reference_dir)},
                 "training_subjects": train_subjects, "validation_subjects": val_subjects,
                 "training_scans": [s.name for s in training], "validation_scans": [s.name for s in validation],
                 "transform": DEFAULT_TRANSFORM},
        "settings": asdict(settings), "patch_sampling": patch_sampling(args.mine_background, args.distil), "history": asdict(history),
    }
    write_model_card(args.model_dir, card)
    print(f"best validation hemorrhage Dice {history.best_score:.4f} at epoch {history.best_epoch}; "
          f"model in {args.model_dir} (run it with --model {args.model_dir})")
    return 0
