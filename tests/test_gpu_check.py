"""bench/gpu_check.py: the GPU comparison's own logic, run on the CPU with a tiny network."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from ichseg.pipeline.inference import ras_to_network_axes
from ichseg.pipeline.training import PreparedScan, save_prepared

_SPEC = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gpu_check)


def test_gpu_check_compares_each_precision_with_the_cpu(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    hu = rng.normal(35, 10, (24, 24, 24)).astype(np.float32)
    roi = np.zeros(hu.shape, bool)
    roi[6:18, 6:18, 6:18] = True
    prepared = tmp_path / "sub-01.npz"
    save_prepared(PreparedScan("sub-01", ras_to_network_axes(hu), ras_to_network_axes(np.zeros(hu.shape, np.uint8)),
                               ras_to_network_axes(roi)), prepared)
    out = tmp_path / "report.json"
    assert gpu_check.main([str(prepared), "--model", str(tiny_model), "--device", "cpu", "--precisions", "fp32",
                           "--repeats", "2", "--ensemble", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["roi_voxels"] == roi.sum()
    # the same device and precision as the reference: the same probabilities and labels
    assert report["fp32"]["max_abs_probability_difference"] < 1e-5
    assert report["fp32"]["hemorrhage_dice_vs_cpu"] == 1.0
    assert report["fp32"]["hemorrhage_ml"] == report["cpu_fp32_hemorrhage_ml"]
    assert len(report["fp32"]["seconds"]) == 2 and len(report["fp32, 2 networks"]["seconds"]) == 2
