"""Tiled 3D CNN inference with the BLAST-CT DeepMedic networks.

The network definition comes from the authors' package (``blast_ct.models.DeepMedic``) so
the pretrained state dicts load as published.

DeepMedic uses unpadded ("valid") convolutions: an input tile of ``n + 80`` voxels along an
axis yields ``n`` output voxels, and its two low-resolution pathways subsample the input by
3 and 5. Output tiles are therefore multiples of 15 voxels and start on multiples of 15,
which makes the tiled result identical to running the network on the whole image at once
(tested), while only the region of interest (the brain and a margin) is computed.

Tiles are planned by :func:`plan_tiles`. The default plan fits the tiles to the region of
interest: the region is cut into slabs and rows (15 or 30 voxels thick, whichever the
network's multiply-add count prefers for this region) and each row is one tile spanning only
the region's extent along it. Against cubic tiles on a grid this computes 19-21 % fewer
multiply-adds for a brain-shaped region (measured on two real brains), because fewer tiles
straddle the region's edge and each tile's 16-voxel convolution border is paid once per row
instead of once per cube. MONAI's sliding-window splitter, used before, cuts equal patches
on a regular grid only, so it cannot express this plan.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from itertools import product
from typing import Callable, Sequence

import numpy as np
import torch

from .heap import keep_freed_memory

LOGGER = logging.getLogger(__name__)

#: Voxels the network consumes around its output along each axis (input = output + 80).
CONTEXT_VOXELS = 80
#: Output tiles must be multiples of this (lcm of the pathway subsampling factors 3 and 5).
TILE_MULTIPLE = 15
#: Slab and row thicknesses the fitted plan chooses from (thicker rows were never cheaper on
#: brains and a 45 x 45 row needs over 2 GB of activations).
ROW_THICKNESSES = (15, 30)
#: Longest row tile (voxels along the row); longer rows are split evenly. Measured with the
#: published network: a 30 x 30 x 90 tile needs about 0.5 GB and 30 x 30 x 180 about 0.75 GB,
#: but varied long rows fragment the heap that :func:`~ichseg.pipeline.heap.keep_freed_memory`
#: keeps (1.8 GB peak for a brain vs 1.1 GB with 90), for 4 % fewer multiply-adds.
MAX_ROW_LENGTH = 90
#: Tiles per network call (tiles of equal shape only). One: batching did not speed up the CPU
#: once oneDNN runs every convolution, and it multiplies the activation memory.
DEFAULT_BATCH = 1


@dataclass(frozen=True)
class IntensityWindow:
    """The HU window the network was trained with, mapped linearly to [-1, 1]."""

    low: float = -15.0
    high: float = 100.0

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        clipped = np.clip(hu, self.low, self.high).astype(np.float32)
        return (2.0 * clipped - self.low - self.high) / (self.high - self.low)


@dataclass(frozen=True)
class Tile:
    """One output tile: its first voxel and its size, in image (network-axes) voxels."""

    origin: tuple[int, int, int]
    shape: tuple[int, int, int]


class _OneDNNConv3d(torch.nn.Conv3d):
    """A Conv3d that always uses oneDNN (MKL-DNN) on the CPU.

    PyTorch sends a batch-of-one 3D convolution to its slow reference kernel when the input
    is small (batch x channels x depth x height <= 20480): DeepMedic's low-resolution
    pathways hit that on most tiles, and those convolutions then took 16 % of a tile's time.
    oneDNN computes the same convolution (results agree to float32 rounding) 1.2-1.5x
    faster for the whole network.
    """

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's own signature
        if input.device.type != "cpu" or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        return torch.ops.aten.mkldnn_convolution(
            input, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
        )


def _use_onednn_convolutions(network: torch.nn.Module) -> None:
    # Swapping the class keeps every parameter, the state dict and blast_ct's size
    # bookkeeping (which checks isinstance(conv, nn.Conv3d)) unchanged.
    if not torch.backends.mkldnn.is_available():
        return
    for module in network.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = _OneDNNConv3d


def build_network(config: dict) -> torch.nn.Module:
    """Instantiate the (untrained) DeepMedic network described by a BLAST-CT config dict."""
    from blast_ct.models.deepmedic import DeepMedic

    hyper = config["model"]["DeepMedic"]
    network = DeepMedic(
        input_channels=config["data"]["input_channels"],
        num_classes=config["data"]["num_classes"],
        feature_maps=tuple(hyper["feature_maps"]),
        fully_connected=tuple(hyper["fully_connected"]),
    )
    _use_onednn_convolutions(network)
    return network


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
        # channels-last memory lets oneDNN pick its fast 3D convolution kernels (1.5x on CPU)
        networks.append(network.to(device).eval().to(memory_format=torch.channels_last_3d))
    return networks


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_origins(roi: np.ndarray, tile: Sequence[int], start: Sequence[int] = (0, 0, 0)) -> list[tuple[int, ...]]:
    """Origins of the output tiles, on a grid from ``start`` in steps of ``tile``, that touch ``roi``."""
    sub = roi[tuple(slice(s, None) for s in start)]
    grid = [_round_up(s, t) // t for s, t in zip(sub.shape, tile)]
    padded = np.zeros([g * t for g, t in zip(grid, tile)], dtype=bool)
    padded[tuple(slice(0, s) for s in sub.shape)] = sub
    blocks = padded.reshape(grid[0], tile[0], grid[1], tile[1], grid[2], tile[2]).any(axis=(1, 3, 5))
    return [tuple(int(s + i * t) for s, i, t in zip(start, idx, tile)) for idx in np.argwhere(blocks)]


def _grid_start(roi: np.ndarray) -> list[int]:
    # The first voxel of the ROI's bounding box, rounded down to the subsampling period, so
    # that every tile keeps the phase of whole-image inference.
    return [int(i) // TILE_MULTIPLE * TILE_MULTIPLE for i in np.argwhere(roi).min(0)]


def grid_tiles(roi: np.ndarray, tile: Sequence[int]) -> list[Tile]:
    """Equal tiles on a grid from the ROI's (rounded-down) corner: those that touch ``roi``."""
    shape = tuple(int(t) for t in tile)
    return [Tile(origin, shape) for origin in tile_origins(roi, shape, _grid_start(roi))]


def row_tiles(roi: np.ndarray, slab: int, row: int, max_length: int = MAX_ROW_LENGTH) -> list[Tile]:
    """Tiles fitted to ``roi``: slabs of ``slab`` voxels (axis 0), rows of ``row`` (axis 1),
    each row cut to the ROI's extent along axis 2 (split evenly when longer than ``max_length``)."""
    low = _grid_start(roi)
    high = np.argwhere(roi).max(0) + 1
    max_length = max(TILE_MULTIPLE, max_length // TILE_MULTIPLE * TILE_MULTIPLE)
    tiles = []
    for z in range(low[0], int(high[0]), slab):
        for y in range(low[1], int(high[1]), row):
            along = np.flatnonzero(roi[z:z + slab, y:y + row].any(axis=(0, 1)))
            if along.size == 0:
                continue
            first = int(along[0]) // TILE_MULTIPLE * TILE_MULTIPLE
            length = _round_up(int(along[-1]) + 1 - first, TILE_MULTIPLE)
            pieces = -(-length // max_length)
            piece = _round_up(-(-length // pieces), TILE_MULTIPLE)
            for start in range(first, first + length, piece):
                tiles.append(Tile((z, y, start), (slab, row, min(piece, first + length - start))))
    return tiles


def multiply_adds(network: torch.nn.Module, output_shape: Sequence[int]) -> int:
    """Multiply-adds the network spends on one output tile of ``output_shape`` voxels.

    Counted layer by layer from the network's own convolutions (valid 3x3x3 convolutions in
    each pathway at its resolution, then the 1x1x1 fully connected layers), which is what
    the time of a tile follows on a CPU (55-63 GMAC/s over tile shapes, measured).
    """
    output = np.asarray(output_shape, dtype=np.int64)
    total = 0
    for path in network.paths:
        size = -(-output // np.asarray(path.scale_factor))
        convs = [layer.conv for layer in path.layers if hasattr(layer, "conv")]
        # sizes grow backwards from the pathway's output: each valid k-conv adds k - 1
        for conv in reversed(convs):
            kernel = np.asarray(conv.kernel_size)
            total += int(np.prod(size)) * conv.in_channels * conv.out_channels * int(np.prod(kernel))
            size = size + kernel - 1
    for block in network.fully_connected:
        total += int(np.prod(output)) * block.conv.in_channels * block.conv.out_channels
    return total


def plan_multiply_adds(network: torch.nn.Module, tiles: Sequence[Tile]) -> int:
    """Multiply-adds of one network over all ``tiles`` (each tile shape counted once)."""
    per_shape: dict[tuple[int, ...], int] = {}
    for t in tiles:
        if t.shape not in per_shape:
            per_shape[t.shape] = multiply_adds(network, t.shape)
    return sum(per_shape[t.shape] for t in tiles)


def plan_tiles(
    roi: np.ndarray, network: torch.nn.Module | None = None, tile: int | Sequence[int] | None = None
) -> list[Tile]:
    """The output tiles to compute for ``roi`` (network axes).

    ``tile`` given (an edge or three): equal tiles on a grid. Otherwise ROI-fitted rows
    (:func:`row_tiles`), with the slab and row thickness that need the fewest multiply-adds
    of ``network`` for this ROI.
    """
    if tile is not None:
        edges = tuple(int(t) for t in np.broadcast_to(tile, 3))
        if any(t <= 0 or t % TILE_MULTIPLE for t in edges):
            raise ValueError(f"tile {edges} must be a positive multiple of {TILE_MULTIPLE} along each axis")
        return grid_tiles(roi, edges) if roi.any() else []
    if not roi.any():
        return []
    if network is None:
        raise ValueError("plan_tiles needs the network to fit tiles to the region")
    plans = [row_tiles(roi, slab, row) for slab, row in product(ROW_THICKNESSES, repeat=2)]
    cheapest = min(plans, key=lambda plan: plan_multiply_adds(network, plan))
    # largest tiles first: later, smaller tiles reuse the heap blocks the first ones freed
    return sorted(cheapest, key=lambda t: -int(np.prod(t.shape)))


def predict_probabilities(
    image: np.ndarray,
    networks: Sequence[torch.nn.Module],
    roi: np.ndarray | None = None,
    tile: int | Sequence[int] | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 1,
    tiles: Sequence[Tile] | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Class probabilities (C, *image.shape) of a normalised image; ensemble = mean of softmaxes.

    ``image`` is already intensity-normalised. Only output tiles that touch ``roi`` are
    computed (planned by :func:`plan_tiles` from ``tile``, or given as ``tiles``); every
    other voxel gets probability 1 for class 0 (background). Tiles of equal shape are run
    ``batch_size`` at a time. ``precision`` ``bf16`` or ``fp16`` runs the network under
    autocast (convolutions in that type, softmax and the mean in float32).
    """
    roi = np.ones(image.shape, dtype=bool) if roi is None else roi.astype(bool)
    if tiles is None:
        tiles = plan_tiles(roi, networks[0], tile)
    probabilities = np.zeros((1, *image.shape), dtype=np.float32)
    probabilities[0] = 1.0
    if not tiles:
        return probabilities
    half = CONTEXT_VOXELS // 2
    # Pad by half the network context on both sides (edge values, as BLAST-CT does) and past
    # the last tile: a tile whose output starts at ``o`` reads padded[o : o + shape + 80].
    high = [max(t.origin[a] + t.shape[a] for t in tiles) for a in range(3)]
    padded = np.pad(image, [(half, half + max(0, h - s)) for h, s in zip(high, image.shape)], mode="edge")
    padded = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    done = 0

    def run_batch(batch_tiles: list[Tile]) -> None:
        nonlocal probabilities, done
        inputs = [
            padded[tuple(slice(o, o + s + CONTEXT_VOXELS) for o, s in zip(t.origin, t.shape))][None, None]
            for t in batch_tiles
        ]
        batch = torch.cat(inputs).to(device).contiguous(memory_format=torch.channels_last_3d)
        summed = None
        for network in networks:
            with autocast:
                logits, _ = network(batch)
            soft = torch.softmax(logits.float(), dim=1)
            summed = soft if summed is None else summed + soft
        mean = (summed / len(networks)).cpu().numpy()
        if probabilities.shape[0] == 1:
            background = probabilities
            probabilities = np.zeros((mean.shape[1], *image.shape), dtype=np.float32)
            probabilities[0] = background[0]
        for tile_probs, t in zip(mean, batch_tiles):
            target = tuple(slice(o, min(o + s, n)) for o, s, n in zip(t.origin, t.shape, image.shape))
            probabilities[(slice(None),) + target] = tile_probs[
                (slice(None),) + tuple(slice(0, sl.stop - sl.start) for sl in target)
            ]
        done += len(batch_tiles)
        if progress is not None:
            progress(done, len(tiles))

    autocast = _autocast(device, precision)
    pending: list[Tile] = []
    with torch.inference_mode(), keep_freed_memory():
        for t in tiles:
            if pending and (len(pending) == batch_size or t.shape != pending[0].shape):
                run_batch(pending)
                pending = []
            pending.append(t)
        if pending:
            run_batch(pending)
    return probabilities


#: torch dtypes of the reduced precisions (see :func:`ichseg.pipeline.cpu.resolve_precision`).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(device: str, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


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
    tile: int | Sequence[int] | None = None,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = DEFAULT_BATCH,
    precision: str = "fp32",
) -> tuple[np.ndarray, list[Tile]]:
    """Class probabilities (C, x, y, z) of a 1 mm RAS head CT in HU, computed over ``roi``,
    and the tiles (network axes) that were computed; ``tile`` as in :func:`plan_tiles`,
    ``precision`` as in :func:`predict_probabilities`."""
    image = ras_to_network_axes(window(hu))
    roi_network = ras_to_network_axes(roi)
    tiles = plan_tiles(roi_network, networks[0], tile)
    probs = predict_probabilities(
        image, networks, roi_network, device=device, progress=progress, batch_size=batch_size, tiles=tiles,
        precision=precision,
    )
    return network_axes_to_ras(probs), tiles
