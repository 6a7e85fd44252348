"""DeepMedic inference that computes each layer once, and only where the region needs it.

DeepMedic (BLAST-CT's network) has three pathways of eight unpadded 3x3x3 convolution
blocks: one at full resolution and two on the image subsampled by 3 and by 5, whose outputs
are repeated back to full resolution; then three 1x1x1 ("fully connected") blocks per voxel.
Tiled inference runs the network on boxes of the image: every box recomputes the 16-voxel
borders it shares with its neighbours, and its outputs fill a box, not the brain, so most of
its multiply-adds are spent outside the region (docs/method.md gives the figures).

This module computes the same function with little of that waste:

* Each pathway is *streamed* along the first axis (:func:`stream_pathway`). A layer computes
  a chunk of planes from the previous layer's new planes and the two planes before them,
  so no plane is computed twice. Within a chunk, a layer computes bands of rows, each only
  as wide as the voxels that some needed output depends on.
* The low-resolution pathways run on their own grids. Inference in tiles that start on a
  15-voxel grid samples each of them at fixed positions (:func:`sampling_offset`), and the
  output voxel ``x`` takes the low-resolution output ``x // scale``.
* The fully connected blocks run on the region's voxels only (:class:`_Classifier`).

Inside the region the result equals BLAST-CT's network run on the whole image to float
rounding (tested); outside it nothing is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Planes of the last layer that one streaming step computes.
DEFAULT_CHUNK = 16
#: Rows (axis 1) of one convolution call; each band spans only the extent it needs along
#: axis 2. Chunks and bands of 8-16 gave the same speed on 2 cores (smaller ones compute
#: fewer multiply-adds but make more, smaller calls); see docs/benchmarks.md.
DEFAULT_BAND = 16
#: Region voxels per call of the fully connected blocks. Small blocks of one size keep
#: glibc's heap compact; larger ones made the peak memory vary between identical runs
#: (docs/method.md), at no gain in speed.
FC_BATCH = 4096

Box = tuple[int, int, int, int]  # rows y0, y1 and columns x0, x1 within a plane, half-open


@dataclass(frozen=True)
class Block:
    """One pre-activation block in evaluation mode: ``conv(prelu(x * scale + shift)) [+ x]``."""

    scale: torch.Tensor  # (1, C_in, 1, 1, 1)
    shift: torch.Tensor
    slope: torch.Tensor  # PReLU weight, one value or one per channel
    weight: torch.Tensor  # (C_out, C_in, k, k, k)

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def residual(self) -> bool:
        # blast_ct's PreActBlock adds its (cropped) input when the channel counts agree
        return self.in_channels == self.out_channels

    def activate_(self, x: torch.Tensor) -> torch.Tensor:
        """Batch norm and PReLU of ``x``, in place."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        x = torch.addcmul(self.shift.reshape(shape), x, self.scale.reshape(shape), out=x)
        if self.slope.numel() == 1:
            return F.leaky_relu_(x, float(self.slope))  # PReLU with one slope, in place
        return F.prelu(x, self.slope)


def _block(module: torch.nn.Module) -> Block:
    bn = module.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    shift = (bn.bias - bn.running_mean * scale).detach()
    return Block(scale.reshape(1, -1, 1, 1, 1), shift.reshape(1, -1, 1, 1, 1),
                 module.prelu.weight.detach(), module.conv.weight.detach())


@dataclass(frozen=True)
class Pathway:
    """One pathway: its subsampling factor, where it samples the image, and its blocks."""

    scale: int
    offset: int
    blocks: tuple[Block, ...]

    @property
    def radius(self) -> int:
        """Voxels of its own grid that the pathway consumes on each side of an output."""
        return sum((b.weight.shape[2] - 1) // 2 for b in self.blocks)


def context_and_period(network) -> tuple[int, int]:
    """Voxels the network reads beyond its output along an axis, and the tile period
    (least common multiple of the subsampling factors) that keeps whole-image phases."""
    period = math.lcm(*(int(s) for path in network.paths for s in path.scale_factor))
    return network.calculate_input_size((period,) * 3)[0] - period, period


def sampling_offset(path, context: int, period: int) -> int:
    """Where pathway ``path`` samples the image.

    A tile whose output starts at a multiple of ``period`` and spans a multiple of it reads
    the image from ``context // 2`` voxels before its output; blast_ct's ``crop_center``
    and ``DownSample`` then take every ``scale``-th voxel. The pathway's output for voxel
    ``x`` is computed around the image voxel ``scale * (x // scale) + offset``.
    """
    scale = int(path.scale_factor[0])
    input_size = path.calculate_input_size((period,) * 3)[0]
    start = (period + context) // 2 - input_size // 2
    radius = sum((layer.conv.kernel_size[0] - 1) // 2 for layer in path.layers if hasattr(layer, "conv"))
    return start + scale // 2 - context // 2 + scale * radius


def pathways(network) -> list[Pathway]:
    """The pathways of a blast_ct DeepMedic, in the order its fully connected blocks read them."""
    context, period = context_and_period(network)
    found = []
    for path in network.paths:
        scale = {int(s) for s in path.scale_factor}
        if len(scale) != 1:
            raise ValueError(f"only isotropic subsampling is supported, not {path.scale_factor}")
        convs = [layer.conv for layer in path.layers if hasattr(layer, "conv")]
        if any(tuple(c.kernel_size) != (3, 3, 3) or tuple(c.stride) != (1, 1, 1) or c.bias is not None
               for c in convs):
            raise ValueError("only 3x3x3 convolutions with stride 1 and no bias are supported")
        blocks = tuple(_block(layer) for layer in path.layers if hasattr(layer, "conv"))
        found.append(Pathway(scale.pop(), sampling_offset(path, context, period), blocks))
    return found


# --------------------------------------------------------------------------- streaming


def _row_extents(needed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last needed voxel along axis 2 of every (plane, row); an empty row
    gets (width, 0), which every union ignores."""
    width = needed.shape[2]
    filled = needed.any(axis=2)
    first = np.where(filled, needed.argmax(axis=2), width)
    last = np.where(filled, width - needed[:, :, ::-1].argmax(axis=2), 0)
    return first, last


def _union(boxes) -> Box | None:
    """The smallest box holding every box given (None for none)."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


def _overlap(a: Box, b: Box) -> tuple[slice, slice, slice, slice] | None:
    """Where boxes ``a`` and ``b`` overlap: rows and columns relative to ``a``, then to ``b``."""
    y0, y1, x0, x1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0 - a[0], y1 - a[0]), slice(x0 - a[2], x1 - a[2]),
            slice(y0 - b[0], y1 - b[0]), slice(x0 - b[2], x1 - b[2]))


def _channels_last(shape: Sequence[int], device, storage: torch.Tensor | None = None) -> torch.Tensor:
    """A (1, C, D, H, W) tensor in channels-last layout: zeros, or uninitialised in ``storage``."""
    n, c, d, h, w = shape
    if storage is None:
        return torch.zeros(tuple(shape), device=device).contiguous(memory_format=torch.channels_last_3d)
    return storage[: n * d * h * w * c].view(n, d, h, w, c).permute(0, 4, 1, 2, 3)


class _LayerPlanes:
    """One layer's output planes that the next layer reads in the current step.

    A step's planes live in one of two buffers, which successive layers use in turn; the two
    planes that the next step still reads are copied into storage of their own. Voxels of a
    buffer that no band wrote hold stale values, on which no needed output depends (the bands
    cover every voxel that a needed output depends on). Allocating the buffers once keeps
    glibc's heap compact: tensors of varying size kept across steps fragmented it to several
    times the memory in use.
    """

    def __init__(self, channels: int, carry_capacity: int, device) -> None:
        self.channels = channels
        self.device = device
        self.carry_storage = torch.empty(carry_capacity, device=device)
        self.carry: tuple[int, Box, torch.Tensor, list] | None = None
        self.first, self.box, self.plane_boxes, self.planes = 0, (0, 0, 0, 0), [], None

    def begin(self, first: int, last: int, box: Box | None, storage: torch.Tensor) -> None:
        """Planes ``[first, last)`` over ``box``, after the carried planes, in ``storage``."""
        carried = self.carry[3] if self.carry else []
        # the box each plane was computed over (None: not computed, nothing there is needed)
        self.plane_boxes = carried + [box] * (last - first)
        self.box = _union(self.plane_boxes) or (0, 0, 0, 0)
        self.first = self.carry[0] if self.carry else first
        y0, y1, x0, x1 = self.box
        self.planes = _channels_last((1, self.channels, last - self.first, y1 - y0, x1 - x0), self.device, storage)
        if self.carry:
            self.write(*self.carry[:3])
            self.carry = None

    def write(self, first: int, box: Box, tensor: torch.Tensor) -> None:
        where = _overlap(self.box, box)
        if where is not None:
            z = first - self.first
            self.planes[:, :, z:z + tensor.shape[2], where[0], where[1]] = tensor[:, :, :, where[2], where[3]]

    def view(self, first: int, last: int, box: Box) -> torch.Tensor | None:
        """Planes ``[first, last)`` over ``box`` as a view, or None if they leave the buffer."""
        y0, y1, x0, x1 = box
        z0, z1 = first - self.first, last - self.first
        inside = (0 <= z0 and z1 <= self.planes.shape[2] and self.box[0] <= y0 and y1 <= self.box[1]
                  and self.box[2] <= x0 and x1 <= self.box[3])
        if not inside:
            return None
        by, bx = self.box[0], self.box[2]
        return self.planes[:, :, z0:z1, y0 - by:y1 - by, x0 - bx:x1 - bx]

    def read(self, first: int, last: int, box: Box) -> torch.Tensor:
        """Planes ``[first, last)`` over ``box``, copied; zeros where the buffer has nothing
        (planes or rows where no needed voxel is)."""
        region = self.view(first, last, box)
        if region is not None:
            return region.clone(memory_format=torch.channels_last_3d)
        y0, y1, x0, x1 = box
        out = _channels_last((1, self.channels, last - first, y1 - y0, x1 - x0), self.device)
        where = _overlap(box, self.box)
        z0, z1 = max(first, self.first), min(last, self.first + self.planes.shape[2])
        if where is not None and z0 < z1:
            out[:, :, z0 - first:z1 - first, where[0], where[1]] = (
                self.planes[:, :, z0 - self.first:z1 - self.first, where[2], where[3]])
        return out

    def end(self, keep_from: int) -> None:
        """Release the buffer, keeping the planes from ``keep_from`` on for the next step."""
        # the buffer starts later than ``keep_from`` when the planes before it held nothing
        keep_from = max(keep_from, self.first)
        boxes = self.plane_boxes[keep_from - self.first:]
        kept_box = _union(boxes)
        if kept_box is not None:
            where = _overlap(self.box, kept_box)
            kept = self.planes[:, :, keep_from - self.first:, where[0], where[1]]
            carry = _channels_last(kept.shape, self.device, self.carry_storage)
            carry.copy_(kept)
            self.carry = (keep_from, kept_box, carry, boxes)
        self.planes = None


def _convolve(block: Block, inputs: torch.Tensor, residual: torch.Tensor | None, compute_dtype) -> torch.Tensor:
    """``block`` on ``inputs`` (a scratch copy that is overwritten); ``residual``: the raw
    inputs without their outer voxel, for blocks that add them.

    Activations and the residual stay in float32. A reduced ``compute_dtype`` rounds only
    what the convolution multiplies; oneDNN and cuDNN accumulate the products in float32.
    """
    hidden = block.activate_(inputs)
    weight = block.weight
    if compute_dtype != torch.float32:
        hidden, weight = hidden.to(compute_dtype), weight.to(compute_dtype)
    hidden = hidden.contiguous(memory_format=torch.channels_last_3d)
    if hidden.device.type == "cpu" and torch.backends.mkldnn.is_available():
        # oneDNN for every convolution: PyTorch sends small batch-of-one 3D convolutions to
        # its slower reference kernel
        output = torch.ops.aten.mkldnn_convolution(hidden, weight, None, [0] * 3, [1] * 3, [1] * 3, 1)
    else:
        output = F.conv3d(hidden, weight)
    del hidden
    output = output.float()
    if block.residual:
        output += residual
    return output


def stream_pathway(
    blocks: Sequence[Block],
    source: torch.Tensor,
    needed: np.ndarray,
    consume: Callable[[int, Box, torch.Tensor], None],
    chunk: int = DEFAULT_CHUNK,
    band: int = DEFAULT_BAND,
    compute_dtype: torch.dtype = torch.float32,
) -> int:
    """Run unpadded 3x3x3 ``blocks`` over ``source`` (1, 1, D, H, W) where ``needed`` (on the
    last block's output grid: ``source`` less one voxel per side and block) depends on it.

    ``consume(first_plane, box, output)`` receives the last block's output band by band:
    planes from ``first_plane`` over the in-plane ``box``, exact wherever ``needed``.
    Returns the multiply-adds spent.
    """
    depth = len(blocks)
    device = source.device
    row_first, row_last = _row_extents(needed)
    planes = np.flatnonzero(row_last.max(axis=1) > 0)
    if planes.size == 0:
        return 0
    first, end = int(planes[0]), int(planes[-1]) + 1

    def bands(level: int, z0: int, z1: int) -> list[Box]:
        # On layer ``level``'s own grid (one voxel per side and layer larger than the last
        # layer's), output (p, y, x) depends on needed voxels of the last layer in planes
        # p - 2r .. p and rows y - 2r .. y, r = depth - level. Each band of rows spans, along
        # axis 2, the union of what those rows depend on.
        r = depth - level
        lo = row_first[max(0, z0 - 2 * r):z1]
        hi = row_last[max(0, z0 - 2 * r):z1]
        rows = np.flatnonzero(hi.max(axis=0) > 0)
        if rows.size == 0:
            return []
        found = []
        stop = int(rows[-1]) + 1 + 2 * r
        for y in range(int(rows[0]), stop, band):
            y_end = min(y + band, stop)
            x0 = int(lo[:, max(0, y - 2 * r):y_end].min())
            x1 = int(hi[:, max(0, y - 2 * r):y_end].max()) + 2 * r
            if x1 > x0:
                found.append((y, y_end, x0, x1))
        return found

    # The plan: the bands each layer computes in each step. Layer ``level`` has computed
    # its planes up to done[level]; a step takes the last layer ``chunk`` planes further.
    plan = []
    done = [first] * (depth + 1)
    for step in range(first, end, chunk):
        final = min(step + chunk, end)
        for level in range(1, depth + 1):
            z0, z1 = done[level], final + 2 * (depth - level)
            if z1 > z0:
                done[level] = z1
                plan.append((level, z0, z1, bands(level, z0, z1)))

    # Two step buffers for the layers in turn, and each layer's carry (its last two planes,
    # computed in this step or, after a one-plane step, in the two last steps). Sized for
    # the largest box of a step and its two predecessors.
    sizes, carry_sizes, recent = [0, 0], [0] * depth, [[] for _ in range(depth)]
    for level, z0, z1, boxes in plan:
        if level < depth:
            channels = blocks[level - 1].out_channels
            recent[level] = [_union(boxes)] + recent[level][:2]
            y0, y1, x0, x1 = _union(recent[level]) or (0, 0, 0, 0)
            sizes[level % 2] = max(sizes[level % 2], (z1 - z0 + 2) * (y1 - y0) * (x1 - x0) * channels)
            carry_sizes[level] = max(carry_sizes[level], 2 * (y1 - y0) * (x1 - x0) * channels)
    buffers = [torch.empty(size, device=device) for size in sizes]
    layers = [_LayerPlanes(b.out_channels, carry_sizes[level], device) for level, b in enumerate(blocks[:-1], 1)]

    macs = 0
    for level, z0, z1, boxes in plan:
        block = blocks[level - 1]
        if level < depth:
            layers[level - 1].begin(z0, z1, _union(boxes), buffers[level % 2])
        for box in boxes:
            y0, y1, x0, x1 = box
            residual = None
            if level == 1:
                inputs = source[:, :, z0:z1 + 2, y0:y1 + 2, x0:x1 + 2].clone(memory_format=torch.channels_last_3d)
                if block.residual:
                    residual = source[:, :, z0 + 1:z1 + 1, y0 + 1:y1 + 1, x0 + 1:x1 + 1]
            else:
                below = layers[level - 2]
                inputs = below.read(z0, z1 + 2, (y0, y1 + 2, x0, x1 + 2))
                if block.residual:
                    residual = below.view(z0 + 1, z1 + 1, (y0 + 1, y1 + 1, x0 + 1, x1 + 1))
                    if residual is None:
                        residual = inputs[:, :, 1:-1, 1:-1, 1:-1].clone()
            output = _convolve(block, inputs, residual, compute_dtype)
            macs += output[0, 0].numel() * block.in_channels * block.out_channels * 27
            if level == depth:
                consume(z0, box, output)
            else:
                layers[level - 1].write(z0, box, output)
            del inputs, output, residual
        if level > 1:
            layers[level - 2].end(z1)
    return macs


# --------------------------------------------------------------------------- classifier


def _pointwise(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, C_in) features times a 1x1x1 convolution's weight: (N, C_out), row-major.

    On the CPU, wide float32 layers go through oneDNN's matrix product (the operator that
    torch.compile uses), which is faster than torch's default (MKL) on AMD cores
    (docs/method.md); where that private operator is missing, torch's own.
    """
    weight = weight.flatten(1)
    if features.device.type == "cpu" and features.dtype == torch.float32 and weight.shape[0] >= 16:
        try:
            return torch.ops.mkldnn._linear_pointwise(features, weight, None, "none", [], "")
        except (AttributeError, RuntimeError):
            pass
    return F.linear(features, weight)


class _Classifier:
    """The fully connected (1x1x1) blocks and the softmax, on the region's voxels.

    Each pathway's features are gathered into a buffer of ``batch`` voxels, and the blocks
    run whenever the buffers are full: every call has the same shape, so the heap does not
    fragment.
    """

    def __init__(self, modules, widths: Sequence[int], n_voxels: int, compute_dtype, device,
                 batch: int = FC_BATCH) -> None:
        self.blocks = [_block(m) for m in modules]
        self.compute_dtype = compute_dtype
        self.batch = batch
        self.parts = [torch.empty((batch, w), device=device) for w in widths]
        self.joined = torch.empty((batch, sum(widths)), device=device)
        self.index = np.empty(batch, dtype=np.int64)
        self.filled = 0
        self.probabilities = torch.empty((n_voxels, self.blocks[-1].out_channels), device=device)
        self.macs = 0

    def add(self, index: np.ndarray, sources: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Queue the region voxels ``index``; ``sources`` gives, per pathway, an (M, C)
        feature matrix and each voxel's row in it."""
        done = 0
        while done < len(index):
            take = min(len(index) - done, self.batch - self.filled)
            for part, (matrix, rows) in zip(self.parts, sources):
                torch.index_select(matrix, 0, rows[done:done + take], out=part[self.filled:self.filled + take])
            self.index[self.filled:self.filled + take] = index[done:done + take]
            self.filled += take
            done += take
            if self.filled == self.batch:
                self.flush()

    def flush(self) -> None:
        """Classify the queued voxels."""
        n = self.filled
        if n == 0:
            return
        out = torch.cat([p[:n] for p in self.parts], dim=1, out=self.joined[:n])
        for block in self.blocks:
            # in place, but for the residual block, which adds its raw input afterwards
            hidden = block.activate_(out.clone() if block.residual else out)
            weight = block.weight
            if self.compute_dtype != torch.float32 and weight.shape[0] >= 16:
                hidden, weight = hidden.to(self.compute_dtype), weight.to(self.compute_dtype)
            hidden = _pointwise(hidden, weight).float()
            self.macs += n * weight.shape[0] * weight.shape[1]
            out = hidden.add_(out) if block.residual else hidden
        index = torch.from_numpy(self.index[:n]).to(out.device)
        self.probabilities[index] = torch.softmax(out, dim=1)
        self.filled = 0


# --------------------------------------------------------------------------- one network


def _sample(image: np.ndarray, scale: int, offset, low: np.ndarray, high: np.ndarray, device) -> torch.Tensor:
    """The image at ``scale * m + offset`` (``offset`` one number or one per axis) for grid
    cells ``low <= m < high``, as (1, 1, ...); beyond the image the edge value, as tiled
    inference pads."""
    offsets = np.broadcast_to(offset, (image.ndim,))
    index = [np.clip(scale * np.arange(a, b) + o, 0, n - 1)
             for a, b, o, n in zip(low, high, offsets, image.shape)]
    sampled = np.ascontiguousarray(image[np.ix_(*index)], dtype=np.float32)
    return torch.from_numpy(sampled)[None, None].to(device)


def _coarse_region(roi_box: np.ndarray, low: np.ndarray, scale: int) -> np.ndarray:
    """Cells of the ``scale`` grid (from cell ``low // scale``) that hold a region voxel."""
    start = low // scale
    pad = low - start * scale
    cells = -(-(np.asarray(roi_box.shape) + pad) // scale)
    padded = np.zeros(cells * scale, dtype=bool)
    padded[tuple(slice(p, p + n) for p, n in zip(pad, roi_box.shape))] = roi_box
    return padded.reshape(cells[0], scale, cells[1], scale, cells[2], scale).any(axis=(1, 3, 5))


def region_probabilities(
    image: np.ndarray,
    network,
    roi: np.ndarray,
    compute_dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = DEFAULT_CHUNK,
    band: int = DEFAULT_BAND,
    shifts: Sequence[Sequence[int]] = ((0, 0, 0),),
) -> tuple[torch.Tensor, int]:
    """Class probabilities (N, C) of one network at the region's voxels, in the order of
    ``np.argwhere(roi)``, and the multiply-adds spent. ``progress(done, total)`` counts voxels.

    With several ``shifts`` the probabilities are the mean over the image moved by each
    (``d`` voxels towards higher indices, edge-padded): the full-resolution pathway's output
    only moves with the image, so it is computed once; the subsampled pathways and the fully
    connected blocks run once per shift, on their grids at phase ``d`` against the image.
    """
    device = next(network.parameters()).device
    voxels = np.argwhere(roi)
    low, high = voxels.min(0), voxels.max(0) + 1
    roi_box = roi[tuple(slice(a, b) for a, b in zip(low, high))]
    paths = pathways(network)
    moves = [np.asarray(d, dtype=np.int64) for d in shifts]
    macs = 0

    # per shift, per subsampled pathway: its output grid and the cell of voxel ``low``
    coarse: list[dict[int, tuple[torch.Tensor, np.ndarray]]] = []
    for move in moves:
        grids = {}
        for path in paths:
            if path.scale == 1:
                continue
            # voxel x of the image lies at x + move in the moved image
            needed = _coarse_region(roi_box, low + move, path.scale)
            start = (low + move) // path.scale
            source = _sample(image, path.scale, path.offset - move, start - path.radius,
                             start + needed.shape + path.radius, device)
            features = torch.zeros((*needed.shape, path.blocks[-1].out_channels), device=device)

            def keep(first, box, output, features=features):
                y0, y1, x0, x1 = box
                features[first:first + output.shape[2], y0:y1, x0:x1] = output[0].permute(1, 2, 3, 0)

            macs += stream_pathway(path.blocks, source, needed, keep, chunk, band, compute_dtype)
            grids[path.scale] = (features, start)
        coarse.append(grids)

    (full,) = [p for p in paths if p.scale == 1]
    source = _sample(image, 1, full.offset, low - full.radius, high + full.radius, device)
    classifiers = [_Classifier(network.fully_connected, [p.blocks[-1].out_channels for p in paths], len(voxels),
                               compute_dtype, device) for _ in moves]
    # np.argwhere lists voxels in C order: the voxels of a run of planes are consecutive
    plane_starts = np.searchsorted(voxels[:, 0] - low[0], np.arange(roi_box.shape[0] + 1))

    def classify(first, box, output):
        y0, y1, x0, x1 = box
        a, b = plane_starts[first], plane_starts[min(first + output.shape[2], roi_box.shape[0])]
        rows = voxels[a:b, 1] - low[1]
        index = a + np.flatnonzero((rows >= y0) & (rows < y1))
        if index.size == 0:
            return
        here = voxels[index]
        # (1, C, n, h, w) in channels-last memory is an (n * h * w, C) matrix
        matrix = output[0].permute(1, 2, 3, 0).reshape(-1, output.shape[1])
        full_rows = torch.from_numpy(np.ravel_multi_index((here - low - (first, y0, x0)).T, output.shape[2:])).to(device)
        for move, grids, classifier in zip(moves, coarse, classifiers):
            sources = []
            for path in paths:
                if path.scale == 1:
                    sources.append((matrix, full_rows))
                else:
                    grid, start = grids[path.scale]
                    rows_in = np.ravel_multi_index(((here + move) // path.scale - start).T, grid.shape[:3])
                    sources.append((grid.view(-1, grid.shape[-1]), torch.from_numpy(rows_in).to(device)))
            classifier.add(index, sources)
        if progress is not None:
            progress(int(index[-1]) + 1, len(voxels))

    macs += stream_pathway(full.blocks, source, roi_box, classify, chunk, band, compute_dtype)
    probabilities = None
    for classifier in classifiers:
        classifier.flush()
        macs += classifier.macs
        probabilities = classifier.probabilities if probabilities is None else probabilities.add_(
            classifier.probabilities)
    return probabilities.div_(len(classifiers)), macs
