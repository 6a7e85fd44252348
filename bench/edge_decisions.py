#!/usr/bin/env python
"""How much of the truth set's Dice the edges of the lesions can still give: bounds and a
classifier learnt on another split.

    python bench/edge_decisions.py --score SPLIT_DIR DERIVATIVES [--fit SPLIT_DIR DERIVATIVES ...]
                                   [--folds K] [--out DIR]

Most of the disagreement between ichseg and a truth set's masks lies in the lesions' partial
voxels (docs/method.md, section 7). This scores, on the ``--score`` split (a split of
``bench/make_truthset.py`` and ichseg's derivatives of it, e.g. ``OUT/default`` of
``bench/accuracy.py``), the labels of the run as they are and with the voxels of each lesion's
edge band (:func:`ichseg.pipeline.refine.edge_bands`: one slice through, 1 mm within the
slice, on either side of the edge) decided otherwise:

- by the truth: every partial voxel (the lesion covers 20-80 % of it), or every voxel of the
  band; what a perfect decision could reach (bounds, not methods);
- by a logistic model of what a scan shows there: the network's total hemorrhage probability,
  the clot share that the voxel's density implies (its neighbours' too, through the slices and
  within the slice). One model for the voxels inside the lesion and one for those outside,
  fitted on the ``--fit`` splits (out of sample); with ``--folds K`` also K-fold
  cross-validation over the scored split's phantoms, and in-sample (a bound again).

Writes ``DIR/edge_decisions.json`` and ``.md`` (default DIR: the current folder): for each way of
deciding, the figures of ``bench/accuracy.py`` (:func:`accuracy.summarise`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import PARTIAL_BAND, read_phantoms, render, summarise  # noqa: E402

from ichseg.bids_app.evaluate import find_references  # noqa: E402
from ichseg.pipeline.geometry import voxel_sizes, voxel_volume_ml  # noqa: E402
from ichseg.pipeline.labels import HEMORRHAGE_INDICES  # noqa: E402
from ichseg.pipeline.lesion_insertion import FRACTION_ENTITIES  # noqa: E402
from ichseg.pipeline.metrics import HEMORRHAGE, dice  # noqa: E402
from ichseg.pipeline.naming import derivative_path, find_derivatives, scan_id  # noqa: E402
from ichseg.pipeline.refine import edge_bands  # noqa: E402

#: Names of the features, in the order :func:`band_features` gives them.
FEATURES = ("logit p", "share", "share, slice neighbours max", "share, slice neighbours min",
            "logit p, slice neighbours max", "logit p, slice neighbours min", "share, in-plane mean")
#: L2 penalty of the logistic models (on standardised features).
PENALTY = 1e-3


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


@dataclass
class Scan:
    """One phantom: the run's hemorrhage and the reference (both flat, ignored voxels out),
    and its edge-band voxels with their features."""

    sid: str
    voxel_ml: float
    predicted: np.ndarray
    reference: np.ndarray
    fraction: np.ndarray
    index: np.ndarray  # flat indices of the band's voxels
    inside: np.ndarray  # whether each lies inside the lesion the run found
    features: np.ndarray


def band_features(labels: np.ndarray, total: np.ndarray, hu: np.ndarray, brain: np.ndarray,
                  affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flat indices of every lesion's edge band (inside it, and the joinable voxels outside
    it), whether each is inside, and their :data:`FEATURES`."""
    thick = int(np.argmax(voxel_sizes(affine)))
    flat = np.arange(labels.size).reshape(labels.shape)
    parts = []
    for band in edge_bands(labels, hu, brain, affine):
        edge_in = band.lesion & ~band.inner
        candidate = edge_in | band.joinable(brain)
        p = logit(total[band.region])
        through = [np.roll(a, step, axis=thick) for a in (band.share, p) for step in (1, -1)]
        in_plane = ndi.uniform_filter(band.share, size=[1 if axis == thick else 3 for axis in range(3)])
        columns = [p, band.share, np.maximum(*through[:2]), np.minimum(*through[:2]),
                   np.maximum(*through[2:]), np.minimum(*through[2:]), in_plane]
        parts.append((flat[band.region][candidate], edge_in[candidate],
                      np.stack([c[candidate] for c in columns], axis=1)))
    if not parts:
        return np.zeros(0, int), np.zeros(0, bool), np.zeros((0, len(FEATURES)))
    return tuple(np.concatenate(column) for column in zip(*parts))


def load_split(split_dir: Path, derivatives: Path) -> list[Scan]:
    references = find_references(split_dir / "reference")
    scans = []
    for entities, dseg_path in find_derivatives(derivatives, "dseg"):
        sid = scan_id(entities)
        if sid not in references:
            continue
        ref = references[sid]
        dseg = nib.load(str(dseg_path))
        labels = np.asanyarray(dseg.dataobj)
        keep = (np.asanyarray(nib.load(str(ref.ignore)).dataobj) == 0) if ref.ignore else np.ones(labels.shape, bool)
        total = np.asanyarray(nib.load(str(derivative_path(derivatives, entities, "hemorrhage_probseg")))
                              .dataobj, dtype=np.float32)
        brain = np.asanyarray(nib.load(str(derivative_path(derivatives, entities, "brain_mask"))).dataobj) > 0
        hu = np.asanyarray(nib.load(str(split_dir / "bids" / f"sub-{entities['subject']}" / "anat"
                                        / f"sub-{entities['subject']}_ct.nii.gz")).dataobj, dtype=np.float32)
        fraction = np.asanyarray(nib.load(str(ref.path.with_name(
            ref.path.name.replace("dseg.nii", f"{FRACTION_ENTITIES}.nii")))).dataobj, dtype=np.float32)
        index, inside, features = band_features(labels, total, hu, brain, dseg.affine)
        in_scope = keep.ravel()[index]
        scans.append(Scan(sid, voxel_volume_ml(dseg.affine),
                          (np.isin(labels, HEMORRHAGE_INDICES) & keep).ravel(),
                          (np.isin(np.asanyarray(nib.load(str(ref.path)).dataobj), HEMORRHAGE_INDICES) & keep).ravel(),
                          (fraction * keep).ravel(), index[in_scope], inside[in_scope], features[in_scope]))
        print(f"  {sid}: {in_scope.sum()} edge voxels", flush=True)
    return scans


class EdgeModel:
    """Two logistic models (inside and outside the lesion) of whether an edge voxel is in the
    reference, on standardised :data:`FEATURES`."""

    def fit(self, scans: list[Scan]) -> EdgeModel:
        self.params = {}
        for side in (True, False):
            x = np.concatenate([s.features[s.inside == side] for s in scans])
            y = np.concatenate([s.reference[s.index[s.inside == side]] for s in scans]).astype(float)
            mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
            z = np.c_[(x - mean) / sd, np.ones(len(x))]

            def loss(w):
                margin = z @ w
                value = np.logaddexp(0, margin).sum() - y @ margin + PENALTY * len(y) * (w[:-1] @ w[:-1])
                grad = z.T @ (1 / (1 + np.exp(-margin)) - y) + np.r_[2 * PENALTY * len(y) * w[:-1], 0]
                return value / len(y), grad / len(y)

            w = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
            self.params[side] = (mean, sd, w)
        return self

    def predict(self, scan: Scan) -> np.ndarray:
        out = np.zeros(len(scan.index), bool)
        for side, (mean, sd, w) in self.params.items():
            m = scan.inside == side
            out[m] = np.c_[(scan.features[m] - mean) / sd, np.ones(m.sum())] @ w >= 0
        return out


def decided(scan: Scan, how: str, model: EdgeModel | None = None) -> np.ndarray:
    """The scan's hemorrhage with its edge decided ``how``: ``run``, ``truth-partial``,
    ``truth-band`` or ``model``."""
    out = scan.predicted.copy()
    if how == "truth-partial":
        partial = (scan.fraction > PARTIAL_BAND[0]) & (scan.fraction < PARTIAL_BAND[1])
        out[partial] = scan.reference[partial]
    elif how == "truth-band":
        out[scan.index] = scan.reference[scan.index]
    elif how == "model":
        out[scan.index] = model.predict(scan)
    return out


def figures(scans: list[Scan], masks: list[np.ndarray], phantoms: dict[str, dict]) -> dict:
    """The truth set's figures (:func:`accuracy.summarise`) of each scan's hemorrhage ``masks``."""
    return summarise([{"scan": s.sid, f"{HEMORRHAGE}_ml": m.sum() * s.voxel_ml,
                       f"{HEMORRHAGE}_ref_ml": s.reference.sum() * s.voxel_ml,
                       f"{HEMORRHAGE}_dice": dice(m, s.reference)} for s, m in zip(scans, masks)], phantoms)


def cross_validated(scans: list[Scan], folds: int) -> list[np.ndarray]:
    """Each scan decided by a model fitted on the other folds (phantoms split at random, seed 0)."""
    fold = np.arange(len(scans)) % folds
    np.random.default_rng(0).shuffle(fold)
    out = [None] * len(scans)
    for k in range(folds):
        model = EdgeModel().fit([s for s, f in zip(scans, fold) if f != k])
        for i in np.flatnonzero(fold == k):
            out[i] = decided(scans[i], "model", model)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--score", nargs=2, type=Path, required=True, metavar=("SPLIT_DIR", "DERIVATIVES"))
    parser.add_argument("--fit", nargs=2, type=Path, action="append", default=[], metavar=("SPLIT_DIR", "DERIVATIVES"))
    parser.add_argument("--folds", type=int, default=0, help="also K-fold cross-validation on the scored split")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    scans = load_split(*args.score)
    phantoms = read_phantoms(args.score[0])

    def scored(masks):
        return figures(scans, masks, phantoms)

    results = {"the run (as it is)": scored([decided(s, "run") for s in scans]),
               "the truth, partial voxels (bound)": scored([decided(s, "truth-partial") for s in scans]),
               "the truth, edge band (bound)": scored([decided(s, "truth-band") for s in scans])}
    if args.fit:
        model = EdgeModel().fit([s for split in args.fit for s in load_split(*split)])
        results["logistic model fitted on --fit (out of sample)"] = scored([decided(s, "model", model) for s in scans])
    if args.folds:
        results[f"logistic model, {args.folds}-fold cross-validation"] = scored(cross_validated(scans, args.folds))
        in_sample = EdgeModel().fit(scans)
        results["logistic model fitted in-sample (bound)"] = scored([decided(s, "model", in_sample) for s in scans])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edge_decisions.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (args.out / "edge_decisions.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
