#!/usr/bin/env python
"""The network on a CUDA GPU against the CPU, on one scan prepared by ``ichseg train``.

    python bench/gpu_check.py PREPARED.npz [--model NAME|DIR] [--repeats 3] [--ensemble 12] [--out JSON]

``PREPARED.npz`` is a scan on the template grid as ``ichseg train`` caches it (``-w DIR``:
the CT in HU and the region the network runs over), so that no registration (ANTs) is needed
on the GPU machine. The model runs once on the CPU in fp32 (the reference), then on CUDA in
fp32, bf16 and fp16 (``--precisions``); each precision is timed (median of ``--repeats`` runs after a warm-up)
and compared with the reference: the largest difference of a class probability, the
hemorrhage volume of the default labelling and its Dice with the CPU's. ``--ensemble N``
also times N copies of the model's first network on CUDA (an ensemble's cost; the same
architecture as blastct-v1's 12 networks). Prints and writes one JSON object.

On a GPU machine that has PyTorch but not ichseg's other packages, the script needs only
nibabel and scipy besides torch, the model's weights and config (``ICHSEG_DATA_DIR``) and
the prepared scan; ``ichseg train --device cuda`` then needs pybids too and, with the scans
already prepared in its ``-w`` folder, no ANTs. ``--device cpu`` runs the script without a
GPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _labels_and_volume(probs: np.ndarray) -> tuple[np.ndarray, float]:
    from ichseg.pipeline.labels import HEMORRHAGE_INDICES
    from ichseg.pipeline.segmentation import (
        DEFAULT_HEMORRHAGE_SEED,
        DEFAULT_HEMORRHAGE_THRESHOLD,
        label_map,
    )

    labels = label_map(probs, DEFAULT_HEMORRHAGE_THRESHOLD, DEFAULT_HEMORRHAGE_SEED)
    blood = np.isin(labels, HEMORRHAGE_INDICES)
    return blood, float(blood.sum()) / 1000.0  # 1 mm template grid: 1000 voxels per mL


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two hemorrhage masks (``ichseg.pipeline.metrics.dice``); two empty masks agree fully."""
    from ichseg.pipeline.metrics import dice

    return 1.0 if not (a.any() or b.any()) else dice(a, b)


def _timing(seconds: list[float], peak: float | None) -> dict:
    return {"median_seconds": round(statistics.median(seconds), 3), "seconds": [round(s, 3) for s in seconds],
            "peak_memory_gib": peak}


def _timed(run, repeats: int, device: str) -> tuple[np.ndarray, list[float], float | None]:
    """The last result of ``run``, the seconds of each of ``repeats`` runs after a warm-up, and
    the peak GPU memory (GiB; None on the CPU)."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run()  # warm-up: kernels chosen, memory taken
    seconds = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None
    return out, seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--model", default="blastct-v1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ensemble", type=int, default=0, metavar="N")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script without a GPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from ichseg.pipeline.cpu import machine_description
    from ichseg.pipeline.inference import (
        IntensityWindow,
        load_networks,
        network_axes_to_ras,
        segment,
    )
    from ichseg.pipeline.models import resolve_model
    from ichseg.pipeline.segmentation import run_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    with np.load(args.prepared) as data:
        hu = network_axes_to_ras(data["hu"].astype(np.float32))
        roi = network_axes_to_ras(data["roi"]).astype(bool)
    resolved = resolve_model(args.model)
    window = IntensityWindow(*resolved.spec.input_window_hu)
    report = {"scan": args.prepared.name, "model": resolved.spec.name, "roi_voxels": int(roi.sum()),
              "cpu": machine_description(),
              "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
              "torch": torch.__version__, "repeats": args.repeats}

    start = time.perf_counter()
    reference, info = run_model(hu, roi, args.model, "cpu", precision="fp32")
    report["cpu_fp32_seconds"] = round(time.perf_counter() - start, 2)
    report["cpu_threads"] = info.get("torch_threads")
    ref_blood, ref_ml = _labels_and_volume(reference)
    report["cpu_fp32_hemorrhage_ml"] = round(ref_ml, 3)
    print(json.dumps(report), flush=True)

    networks = load_networks(resolved.weight_paths, resolved.config, args.device)
    for precision in args.precisions:
        probs, seconds, peak = _timed(lambda: segment(hu, roi, networks, window, precision=precision)[0],
                                      args.repeats, args.device)
        blood, ml = _labels_and_volume(probs)
        report[precision] = {
            **_timing(seconds, peak), "max_abs_probability_difference": float(np.abs(probs - reference).max()),
            "hemorrhage_ml": round(ml, 3), "hemorrhage_dice_vs_cpu": round(_agreement(blood, ref_blood), 4)}
        print(precision, json.dumps(report[precision]), flush=True)

    if args.ensemble:
        ensemble = load_networks([resolved.weight_paths[0]] * args.ensemble, resolved.config, args.device)
        for precision in args.precisions[:2]:
            _, seconds, peak = _timed(lambda: segment(hu, roi, ensemble, window, precision=precision)[0],
                                      args.repeats, args.device)
            key = f"{precision}, {args.ensemble} networks"
            report[key] = _timing(seconds, peak)
            print(key, json.dumps(report[key]), flush=True)

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
