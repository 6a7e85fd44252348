"""bench/edge_decisions.py: the edge band's features, the bounds and the logistic model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "edge_decisions_bench", Path(__file__).resolve().parents[1] / "bench" / "edge_decisions.py")
edge = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = edge  # its dataclasses look their module up
_SPEC.loader.exec_module(edge)

TISSUE_HU, CLOT_HU = 35.0, 65.0
AFFINE = np.diag([0.5, 0.5, 5.0, 1.0])


def _scan(top_share: float, seed: int) -> edge.Scan:
    """A box of clot over slices 3-6, its top face covering ``top_share`` of slice 7; the run
    labels slices 3-7 (probability 0.9, 0.5 on slice 7) and the reference holds slice 7 only
    where it is at least half covered."""
    rng = np.random.default_rng(seed)
    shape = (60, 60, 10)
    share = np.zeros(shape, np.float32)
    box = (slice(20, 40), slice(20, 40))
    share[box + (slice(3, 7),)] = 1.0
    share[box + (7,)] = top_share
    hu = (share * CLOT_HU + (1 - share) * TISSUE_HU + rng.normal(0, 2, shape)).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[box + (slice(3, 8),)] = 1
    total = np.where(labels > 0, 0.9, 0.02).astype(np.float32)
    total[box + (7,)] = 0.5
    index, inside, features = edge.band_features(labels, total, hu, np.ones(shape, bool), AFFINE)
    reference = (share >= 0.5).ravel()
    return edge.Scan(f"sub-{seed}", 0.00125, (labels > 0).ravel(), reference, share.ravel(),
                     index, inside, features)


def test_the_band_holds_the_slice_the_face_crosses_with_its_clot_share():
    scan = _scan(0.3, seed=0)
    assert scan.features.shape == (len(scan.index), len(edge.FEATURES))
    top = np.ravel_multi_index((30, 30, 7), (60, 60, 10))
    row = np.flatnonzero(scan.index == top)
    assert row.size == 1 and scan.inside[row[0]]
    # the density of a slice 30 % covered implies a clot share near 0.3
    assert scan.features[row[0], edge.FEATURES.index("share")] == pytest.approx(0.3, abs=0.1)
    deep = np.ravel_multi_index((30, 30, 4), (60, 60, 10))
    assert deep not in scan.index  # the lesion's inner voxels are not in doubt


def test_the_bounds_and_a_model_fitted_on_other_scans_decide_the_face():
    fit = [_scan(share, seed) for seed, share in enumerate((0.2, 0.3, 0.7, 0.8, 0.25, 0.75))]
    model = edge.EdgeModel().fit(fit)
    for share, expected in ((0.35, False), (0.65, True)):
        scan = _scan(share, seed=10)
        face = np.ravel_multi_index((30, 30, 7), (60, 60, 10))
        assert scan.predicted[face]  # the run labels the face whatever its share
        assert edge.decided(scan, "truth-band")[face] == expected
        assert edge.decided(scan, "truth-partial")[face] == expected
        assert edge.decided(scan, "model", model)[face] == expected
        assert edge.decided(scan, "run")[face]


def test_figures_score_the_masks_against_the_reference():
    scans = [_scan(0.3, seed=0), _scan(0.7, seed=1)]
    phantoms = {s.sid: {"host": "host"} for s in scans}
    run = edge.figures(scans, [edge.decided(s, "run") for s in scans], phantoms)
    truth = edge.figures(scans, [edge.decided(s, "truth-band") for s in scans], phantoms)
    assert truth["dice_mean"] == pytest.approx(1.0)
    assert run["dice_mean"] < 1.0
    assert run["mean_difference_ml"] > 0  # the run labels the whole 30 % slice
    assert "| the run |" in edge.render({"the run": run})
