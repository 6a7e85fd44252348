"""DeepMedic inference with the BLAST-CT networks: loading, intensity window, axes, ensemble.

The network definition comes from the authors' package (``blast_ct.models.DeepMedic``), so
the pretrained state dicts load as published. It is run over the region of interest (the
brain and a margin) by :mod:`ichseg.pipeline.streaming`, which computes each layer once and
only where the region needs it; inside the region the result equals the network run on the
whole image (tested), and every voxel outside it is background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ichseg.pipeline.heap import keep_freed_memory
from ichseg.pipeline.streaming import region_probabilities


@dataclass(frozen=True)
class IntensityWindow:
    """The HU window the network was trained with, mapped linearly to [-1, 1]."""

    low: float = -15.0
    high: float = 100.0

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        clipped = np.clip(hu, self.low, self.high).astype(np.float32)
        return (2.0 * clipped - self.low - self.high) / (self.high - self.low)


def build_network(config: dict) -> torch.nn.Module:
    """Instantiate the (untrained) DeepMedic network described by a BLAST-CT config dict."""
    from blast_ct.models.deepmedic import DeepMedic

    hyper = config["model"]["DeepMedic"]
    return DeepMedic(
        input_channels=config["data"]["input_channels"],
        num_classes=config["data"]["num_classes"],
        feature_maps=tuple(hyper["feature_maps"]),
        fully_connected=tuple(hyper["fully_connected"]),
    )


def zero_subnormal_parameters(network: torch.nn.Module) -> int:
    """Set subnormal float32 weights (magnitude below 1.2e-38) to 0; returns how many there were.

    About 17 % of the published BLAST-CT weights are subnormal. A CPU with denormals-are-zero
    reads them as 0 anyway (:mod:`ichseg.pipeline.cpu`), so the network computes the same;
    without it, every multiply with such a weight stalls on Intel cores.
    """
    count = 0
    with torch.no_grad():
        for tensor in [*network.parameters(), *network.buffers()]:
            if tensor.dtype == torch.float32:
                subnormal = (tensor != 0) & (tensor.abs() < torch.finfo(torch.float32).tiny)
                count += int(subnormal.sum())
                tensor.masked_fill_(subnormal, 0.0)
    return count


def load_networks(weight_paths: Sequence, config: dict, device: str = "cpu") -> list[torch.nn.Module]:
    """Load one network per state-dict file, in evaluation mode on ``device``."""
    networks = []
    for path in weight_paths:
        network = build_network(config)
        # The published weights are plain state dicts (tensors only), so the safe loader works.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        zero_subnormal_parameters(network)
        networks.append(network.to(device).eval())
    return networks


#: torch dtypes of the precisions (see :func:`ichseg.pipeline.cpu.resolve_precision`).
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def predict_probabilities(
    image: np.ndarray,
    networks: Sequence[torch.nn.Module],
    roi: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    precision: str = "fp32",
    shifts: Sequence[Sequence[int]] = ((0, 0, 0),),
) -> tuple[np.ndarray, int]:
    """Class probabilities (C, *image.shape) of a normalised image, and the multiply-adds
    of one network; an ensemble averages its networks' softmaxes.

    Only the voxels of ``roi`` (default: all) are computed; every other voxel gets
    probability 1 for class 0 (background). ``precision`` ``bf16`` or ``fp16`` multiplies
    in that type in the convolutions (activations, sums and softmax stay float32).
    Each network is also averaged over the image moved by each of ``shifts`` (voxels
    towards higher indices along each axis): the subsampled pathways see the image on grids
    of every 3rd and 5th voxel fixed to its origin, so a move of ``s`` puts them at phases
    ``s mod 3`` and ``s mod 5`` while the full-resolution pathway's output only moves
    (:func:`ichseg.pipeline.streaming.region_probabilities` computes that pathway once).
    ``progress(done, total)`` counts voxels over all networks.
    """
    if precision not in COMPUTE_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(COMPUTE_DTYPES)}, not {precision!r}")
    if not shifts or any(len(shift) != image.ndim or min(shift) < 0 for shift in shifts):
        raise ValueError(f"shifts must be moves of 0 or more voxels along each of {image.ndim} axes, not {shifts}")
    roi = np.ones(image.shape, dtype=bool) if roi is None else roi.astype(bool)
    classes = networks[0].fully_connected[-1].conv.out_channels
    probabilities = np.zeros((classes, *image.shape), dtype=np.float32)
    probabilities[0] = 1.0
    total = int(roi.sum())
    if total == 0:
        return probabilities, 0
    summed, macs = None, 0
    with torch.inference_mode(), keep_freed_memory():
        for i, network in enumerate(networks):
            def report(done: int, _total: int, offset: int = i * total) -> None:
                if progress is not None:
                    progress(offset + done, total * len(networks))

            region, macs = region_probabilities(image, network, roi, COMPUTE_DTYPES[precision], report,
                                                shifts=shifts)
            summed = region if summed is None else summed.add_(region)
    probabilities[:, roi] = (summed / len(networks)).cpu().numpy().T
    return probabilities, macs


def ras_to_network_axes(volume: np.ndarray) -> np.ndarray:
    """Reorder a RAS (x, y, z) array to the (z, y, x) LPS layout BLAST-CT was trained on.

    BLAST-CT reads images with SimpleITK, reoriented to the identity direction (LPS) and
    indexed [z, y, x]; presenting the same layout keeps its learned features meaningful.
    """
    return np.ascontiguousarray(volume[::-1, ::-1, :].transpose(2, 1, 0))


def network_axes_to_ras(volume: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_network_axes` for (C, z, y, x) or (z, y, x) arrays."""
    if volume.ndim == 4:
        return np.ascontiguousarray(volume.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :])
    return np.ascontiguousarray(volume.transpose(2, 1, 0)[::-1, ::-1, :])


def segment(
    hu: np.ndarray,
    roi: np.ndarray,
    networks: Sequence[torch.nn.Module],
    window: IntensityWindow = IntensityWindow(),
    progress: Callable[[int, int], None] | None = None,
    precision: str = "fp32",
    shifts: Sequence[Sequence[int]] = ((0, 0, 0),),
) -> tuple[np.ndarray, int]:
    """Class probabilities (C, x, y, z) of a 1 mm RAS head CT in HU, computed over ``roi``,
    and the multiply-adds of one network (as :func:`predict_probabilities`; ``shifts`` move
    the network's (z, y, x) array)."""
    probabilities, macs = predict_probabilities(
        ras_to_network_axes(window(hu)), networks, ras_to_network_axes(roi), progress, precision, shifts
    )
    return network_axes_to_ras(probabilities), macs
