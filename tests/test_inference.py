"""DeepMedic inference (ichseg.pipeline.inference, ichseg.pipeline.streaming).

The reference is BLAST-CT's own module run on the whole image (edge-padded by the network's
80-voxel context, each size a multiple of 15). Most tests use the real DeepMedic architecture
(three pathways subsampling by 1, 3 and 5, eight unpadded 3x3x3 blocks each) with narrow
layers, so that they run in seconds; the published widths are checked on a small image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ichseg.pipeline.heap import keep_freed_memory
from ichseg.pipeline.inference import (
    IntensityWindow,
    build_network,
    load_networks,
    network_axes_to_ras,
    predict_probabilities,
    ras_to_network_axes,
    segment,
)
from ichseg.pipeline.segmentation import GRID_SHIFTS
from ichseg.pipeline.streaming import (
    DEFAULT_BAND,
    DEFAULT_CHUNK,
    context_and_period,
    pathways,
    region_probabilities,
    stream_pathway,
)

#: The model and data fields of models/blastct-v1/config.json (checked against the file
#: in ``test_literal_config_matches_the_published_one``).
BLASTCT_CONFIG = {
    "model": {"DeepMedic": {"fully_connected": [250, 250], "feature_maps": [30, 30, 40, 40, 40, 40, 50, 50]}},
    "data": {"input_channels": 1, "num_classes": 5},
}
#: Same architecture, narrow layers: the geometry of the network is unchanged.
NARROW_CONFIG = {
    "model": {"DeepMedic": {"fully_connected": [6, 6], "feature_maps": [2, 2, 3, 3, 3, 3, 4, 4]}},
    "data": {"input_channels": 1, "num_classes": 5},
}
SHAPE = (45, 30, 60)


def _network(config, seed, kaiming=True):
    """A randomly initialised network whose class probabilities vary strongly in space
    (PyTorch's default initialisation gives nearly constant softmaxes on the narrow network,
    which would make the comparisons below weak)."""
    torch.manual_seed(seed)
    network = build_network(config).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv3d) and kaiming:
                # 0.7 x Kaiming: varied but unsaturated softmaxes (class std 0.05-0.1, no
                # probability below 1e-3), so float32 rounding stays far below 1e-5
                torch.nn.init.kaiming_normal_(module.weight)
                module.weight.mul_(0.7)
            elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.1, 0.4)
        network.fully_connected[-1].conv.weight.mul_(3.0)
    return network


def whole_image_reference(image: np.ndarray, network) -> np.ndarray:
    """Softmax of BLAST-CT's module on the whole image: (C, *image.shape)."""
    context, period = context_and_period(network)
    assert all(n % period == 0 for n in image.shape), "the reference needs sizes on the tile period"
    padded = torch.from_numpy(np.pad(image, context // 2, mode="edge"))[None, None]
    with torch.inference_mode():
        logits, _ = network(padded)
    return torch.softmax(logits, dim=1)[0].numpy()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # one thread: on a busy 2-core machine, two torch threads are 10x slower than one
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def networks():
    return [_network(NARROW_CONFIG, seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.uniform(-1.0, 1.0, size=SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def whole(image, networks):
    reference = whole_image_reference(image, networks[0])
    # the random network does not give a trivial answer: every class varies in space
    assert reference.std(axis=(1, 2, 3)).min() > 0.02
    return reference


def _blob(shape, centre, radii):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def test_geometry_of_the_published_architecture(networks):
    assert context_and_period(networks[0]) == (80, 15)
    # pathway order is the order of the fully connected input; offsets follow from
    # blast_ct's crop_center and DownSample for tiles on the 15-voxel grid
    assert [(p.scale, p.offset, p.radius) for p in pathways(networks[0])] == [(5, 2, 8), (3, 1, 8), (1, 0, 8)]


def test_whole_region_equals_whole_image(image, networks, whole):
    calls = []
    probs, macs = predict_probabilities(image, networks[:1], progress=lambda d, t: calls.append((d, t)))
    assert probs.shape == whole.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, whole, atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert calls and calls[-1] == (image.size, image.size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert macs > 0


@pytest.mark.parametrize("seed", range(6))
def test_random_sparse_regions_equal_whole_image(image, networks, whole, seed):
    """Scattered blobs and voxels, gaps of empty planes and rows, any chunk and band."""
    rng = np.random.default_rng(seed)
    roi = np.zeros(SHAPE, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        roi |= _blob(SHAPE, rng.uniform(0, SHAPE), rng.uniform(2, 9, size=3))
    roi[tuple(rng.integers(0, SHAPE, size=(rng.integers(1, 6), 3)).T)] = True
    chunk, band = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    with torch.inference_mode():
        probs, _ = region_probabilities(image, networks[0], roi, chunk=chunk, band=band)
    np.testing.assert_allclose(probs.numpy(), whole[:, roi].T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk,band", [(1, 1), (3, 2), (5, 7), (DEFAULT_CHUNK, DEFAULT_BAND), (64, 64)])
def test_region_equals_whole_image_for_any_chunk_and_band(image, networks, whole, chunk, band):
    """A region with a hole, a stray voxel and voxels on the image's edges."""
    roi = _blob(SHAPE, (22, 15, 30), (16, 12, 22)) & ~_blob(SHAPE, (22, 15, 30), (5, 4, 6))
    roi[0, 0, 0] = roi[44, 29, 59] = roi[3, 27, 2] = True
    with torch.inference_mode():
        probs, _ = region_probabilities(image, networks[0], roi, chunk=chunk, band=band)
    np.testing.assert_allclose(probs.numpy(), whole[:, roi].T, atol=1e-5, rtol=0)


def test_stale_buffer_values_never_reach_needed_outputs(image, networks, whole, monkeypatch):
    """Voxels that no band computed hold whatever the buffer held: fill new buffers with NaN
    and the region's probabilities are still exact."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr("ichseg.pipeline.streaming.torch.empty", poisoned)
    roi = _blob(SHAPE, (20, 14, 33), (15, 11, 20))
    with torch.inference_mode():
        probs, _ = region_probabilities(image, networks[0], roi, chunk=4, band=3)
    assert torch.isfinite(probs).all()
    np.testing.assert_allclose(probs.numpy(), whole[:, roi].T, atol=1e-5, rtol=0)


def test_outside_the_region_is_background(image, networks, whole):
    roi = np.zeros(SHAPE, dtype=bool)
    roi[20:28, 16:22, 31:40] = True
    probs, _ = predict_probabilities(image, networks[:1], roi=roi)
    np.testing.assert_allclose(probs[:, roi], whole[:, roi], atol=1e-5, rtol=0)
    assert (probs[0, ~roi] == 1.0).all() and (probs[1:, ~roi] == 0.0).all()
    # the ROI voxels are not background by construction of the random network
    assert (probs[0, roi] < 1.0).all()


def test_empty_region_is_all_background(image, networks):
    probs, macs = predict_probabilities(image, networks[:1], roi=np.zeros(SHAPE, dtype=bool))
    assert probs.shape == (5, *SHAPE) and macs == 0
    assert (probs[0] == 1.0).all() and (probs[1:] == 0.0).all()


def test_grid_shifts_average_the_network_over_the_moved_image(image, networks, whole):
    context, period = context_and_period(networks[0])
    references = []
    for shift in GRID_SHIFTS:
        s = shift[0]
        # beyond the image the streamed network reads its edge: pad the moved image so, to the period
        moved = np.pad(image, [(s, (-s) % period)] * 3, mode="edge")
        moved_whole = whole_image_reference(moved, networks[0])
        references.append(moved_whole[:, s:s + SHAPE[0], s:s + SHAPE[1], s:s + SHAPE[2]])
    np.testing.assert_allclose(references[0], whole, atol=1e-6)
    # the subsampled pathways' phase changes what the network says, not only where
    assert min(np.abs(r - whole).max() for r in references[1:]) > 1e-2
    roi = _blob(SHAPE, (22, 15, 30), (12, 9, 20))
    probs, _ = predict_probabilities(image, networks[:1], roi=roi, shifts=GRID_SHIFTS)
    np.testing.assert_allclose(probs[:, roi], np.mean(references, axis=0)[:, roi], atol=1e-5, rtol=0)
    assert (probs[0, ~roi] == 1.0).all()
    two, _ = predict_probabilities(image, networks[:1], roi=roi, shifts=GRID_SHIFTS[:2])
    np.testing.assert_allclose(two[:, roi], np.mean(references[:2], axis=0)[:, roi], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shifts", [(), ((0, 0),), ((0, -1, 0),)])
def test_shifts_that_are_not_moves_along_every_axis_are_refused(image, networks, shifts):
    with pytest.raises(ValueError, match="shifts must be moves of 0 or more voxels along each of 3 axes"):
        predict_probabilities(image, networks[:1], shifts=shifts)


def test_ensemble_is_the_mean_of_softmaxes(networks):
    rng = np.random.default_rng(5)
    small = rng.uniform(-1, 1, size=(20, 17, 23)).astype(np.float32)
    first, _ = predict_probabilities(small, networks[:1])
    second, _ = predict_probabilities(small, networks[1:])
    both, _ = predict_probabilities(small, networks)
    assert np.abs(first - second).max() > 1e-2  # two different networks
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)


def test_published_widths_equal_whole_image():
    # default initialisation: the wide network's softmaxes vary enough, while Kaiming's
    # saturate them (logits in the hundreds, float32 rounding then shows at 1e-5)
    network = _network(BLASTCT_CONFIG, seed=3, kaiming=False)
    rng = np.random.default_rng(9)
    small = rng.uniform(-1, 1, size=(30, 15, 15)).astype(np.float32)
    reference = whole_image_reference(small, network)
    roi = _blob(small.shape, (14, 7, 7), (12, 6, 7))
    probs, _ = predict_probabilities(small, [network], roi=roi)
    np.testing.assert_allclose(probs[:, roi], reference[:, roi], atol=1e-5, rtol=0)
    assert reference.std(axis=(1, 2, 3)).min() > 1e-3


def test_streaming_computes_little_more_than_the_region(monkeypatch):
    """Multiply-adds of the full-resolution pathway (published widths) on a brain-sized
    ellipsoid: at most 1.6x the ideal (every layer once, only on the region's voxels),
    against 1.9x for the ellipsoid's box. The convolutions are replaced by zeros of the
    right shape: only the plan is counted."""

    def shapes_only(block, inputs, residual, compute_dtype):
        n, _, d, h, w = inputs.shape
        return torch.zeros((n, block.out_channels, d - 2, h - 2, w - 2))

    monkeypatch.setattr("ichseg.pipeline.streaming._convolve", shapes_only)
    network = build_network(BLASTCT_CONFIG)
    maps = BLASTCT_CONFIG["model"]["DeepMedic"]["feature_maps"]
    per_voxel = 27 * sum(a * b for a, b in zip([1, *maps[:-1]], maps))
    roi = _blob((150, 180, 150), (75, 90, 75), (60, 78, 66))
    source = torch.zeros((1, 1, *(n + 16 for n in roi.shape)))
    planes = []
    macs = stream_pathway(pathways(network)[-1].blocks, source, roi, lambda first, box, out: planes.append(first))
    ideal = per_voxel * roi.sum()
    assert ideal < macs < 1.6 * ideal
    assert roi.size / roi.sum() > 1.9
    assert planes == sorted(planes)  # the last layer's planes arrive in order


def test_keep_freed_memory_restores_on_error():
    import platform

    with keep_freed_memory() as applied:
        data = np.ones(50_000_000 // 8)  # a block above glibc's usual mmap threshold
        del data
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert applied is True
    with pytest.raises(RuntimeError):
        with keep_freed_memory():
            raise RuntimeError("the block's error goes through")


# --------------------------------------------------------------------------- axes and window


def test_network_axes_round_trip_3d_and_4d():
    rng = np.random.default_rng(2)
    ras = rng.normal(size=(5, 7, 9)).astype(np.float32)
    net = ras_to_network_axes(ras)
    assert net.shape == (9, 7, 5) and net.flags.c_contiguous
    # RAS voxel (i, j, k) is network voxel (k, ny-1-j, nx-1-i): [z, y, x] in LPS
    assert net[3, 7 - 1 - 2, 5 - 1 - 1] == ras[1, 2, 3]
    np.testing.assert_array_equal(network_axes_to_ras(net), ras)
    channels = rng.normal(size=(3, 5, 7, 9)).astype(np.float32)
    net4 = np.stack([ras_to_network_axes(c) for c in channels])
    back = network_axes_to_ras(net4)
    assert back.shape == channels.shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back, channels)


def test_segment_works_in_ras(networks):
    """``segment`` windows, reorders to network axes and back: same as doing it by hand."""
    rng = np.random.default_rng(4)
    hu = rng.uniform(-100, 150, size=(16, 14, 12)).astype(np.float32)
    roi = np.zeros(hu.shape, dtype=bool)
    roi[2:14, 3:11, 1:10] = True
    probs, macs = segment(hu, roi, networks[:1])
    by_hand, by_hand_macs = predict_probabilities(
        ras_to_network_axes(IntensityWindow()(hu)), networks[:1], ras_to_network_axes(roi)
    )
    assert probs.shape == (5, 16, 14, 12) and macs == by_hand_macs
    np.testing.assert_array_equal(probs, network_axes_to_ras(by_hand))
    # without reordering the answer would differ (the network is not flip-invariant)
    plain, _ = predict_probabilities(IntensityWindow()(hu), networks[:1], roi)
    assert np.abs(plain - probs).max() > 1e-3


def test_intensity_window():
    window = IntensityWindow()
    values = np.array([-1000.0, -15.0, 42.5, 100.0, 3000.0])
    out = window(values)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    custom = IntensityWindow(0.0, 80.0)
    np.testing.assert_allclose(custom(np.array([0.0, 40.0, 80.0, 120.0])), [-1, 0, 1, 1], atol=1e-6)


# --------------------------------------------------------------------------- real weights


@pytest.mark.realdata
def test_literal_config_matches_the_published_one(asset):
    config = json.loads(asset("models/blastct-v1/config.json").read_text())
    assert config["model"] == BLASTCT_CONFIG["model"]
    for key, value in BLASTCT_CONFIG["data"].items():
        assert config["data"][key] == value
    window = config["data"]["transformation"]["IntensityWindowNormalization"]
    assert (window["lower_bound"], window["upper_bound"]) == (IntensityWindow().low, IntensityWindow().high)


@pytest.mark.realdata
def test_load_networks_with_published_weights(asset):
    config = json.loads(asset("models/blastct-v1/config.json").read_text())
    paths = [asset(f"models/blastct-v1/model_{i}.pt") for i in (1, 2)]
    networks = load_networks(paths, config)
    assert len(networks) == 2
    for network, path in zip(networks, paths):
        assert not network.training
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        loaded = network.state_dict()
        assert set(loaded) == set(state)
        tiny = torch.finfo(torch.float32).tiny
        for key, value in state.items():
            # subnormal weights are set to 0 (what a CPU with denormals-are-zero reads anyway)
            expected = value.masked_fill(value.abs() < tiny, 0.0) if value.is_floating_point() else value
            assert torch.equal(loaded[key], expected), key
    # deterministic (eval mode: no dropout, fixed BatchNorm), and the two networks differ
    rng = np.random.default_rng(8)
    image = IntensityWindow()(rng.normal(30.0, 15.0, size=(15, 15, 15))).astype(np.float32)
    first, _ = predict_probabilities(image, networks[:1])
    again, _ = predict_probabilities(image, networks[:1])
    np.testing.assert_array_equal(first, again)
    other, _ = predict_probabilities(image, networks[1:])
    assert np.abs(first - other).max() > 1e-4
    np.testing.assert_allclose(first.sum(axis=0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- precision


def test_bf16_is_close_to_float32(image, networks):
    # bf16 keeps 8 bits of mantissa: probabilities move by about 1e-2 at most, and the most
    # likely class stays the same almost everywhere (the real network on real CTs is compared
    # in bench/compare_precision.py).
    fp32, _ = predict_probabilities(image, networks[:1])
    bf16, _ = predict_probabilities(image, networks[:1], precision="bf16")
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(bf16 - fp32).max() < 0.05
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.97
    assert np.abs(bf16 - fp32).max() > 0  # it did run in reduced precision


def test_unknown_precision_is_refused(image, networks):
    with pytest.raises(ValueError, match="precision"):
        predict_probabilities(image, networks[:1], precision="int8")


def test_pointwise_layers_equal_a_matrix_product():
    from ichseg.pipeline.streaming import _pointwise

    torch.manual_seed(0)
    features = torch.randn(1000, 150)
    for out in (250, 5):
        weight = torch.randn(out, 150, 1, 1, 1)
        result = _pointwise(features, weight)
        assert result.shape == (1000, out) and result.is_contiguous()
        np.testing.assert_allclose(result.numpy(), (features @ weight.flatten(1).T).numpy(), atol=1e-4, rtol=1e-5)
