"""Tiled DeepMedic inference (ichseg.pipeline.inference).

The tiling tests use the real DeepMedic architecture (three pathways subsampling by 1, 3 and
5, eight valid 3x3x3 convolutions each: the 80-voxel context and the 15-voxel period that the
tiling relies on) with narrow layers, so that tens of tiles run in seconds on a CPU. The
published widths are checked on fewer tiles in ``test_tiling_with_published_widths``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ichseg.pipeline.inference import (
    CONTEXT_VOXELS,
    TILE_MULTIPLE,
    IntensityWindow,
    build_network,
    load_networks,
    network_axes_to_ras,
    predict_probabilities,
    ras_to_network_axes,
    Tile,
    _OneDNNConv3d,
    multiply_adds,
    plan_multiply_adds,
    plan_tiles,
    row_tiles,
    segment,
    tile_origins,
)
from ichseg.pipeline.heap import keep_freed_memory

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
SHAPE = (47, 38, 52)


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
        network.fully_connected[-1].conv.weight.mul_(3.0)
    return network


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
    """Whole-image inference: one output tile covers the image."""
    calls = []
    probs = predict_probabilities(image, networks[:1], tile=(60, 45, 60), progress=lambda d, t: calls.append(t))
    assert calls == [1]
    return probs


@pytest.fixture(scope="module")
def tiled(image, networks):
    calls = []
    probs = predict_probabilities(image, networks[:1], tile=15, progress=lambda d, t: calls.append((d, t)))
    return probs, calls


def test_whole_image_is_one_tile(image, networks):
    calls = []
    predict_probabilities(image[:20, :14, :29], networks[:1], tile=30, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]


def test_tiles_reassemble_to_whole_image(whole, tiled):
    probs, calls = tiled
    assert probs.shape == whole.shape == (5, *SHAPE)
    assert probs.dtype == np.float32
    # 4 x 3 x 4 tiles of 15 voxels, each reported once
    assert len(calls) == 48 and calls[-1] == (48, 48)
    assert [d for d, _ in calls] == list(range(1, 49))
    np.testing.assert_allclose(probs, whole, atol=1e-5, rtol=0)
    # the random network does not give a trivial answer: every class varies in space
    assert whole.std(axis=(1, 2, 3)).min() > 0.02


def test_batched_tiles_equal_one_at_a_time(image, networks, tiled):
    calls = []
    probs = predict_probabilities(
        image, networks[:1], tile=15, batch_size=5, progress=lambda d, t: calls.append((d, t))
    )
    # 48 tiles: nine batches of 5 and a last one of 3
    assert calls == [(d, 48) for d in (5, 10, 15, 20, 25, 30, 35, 40, 45, 48)]
    np.testing.assert_allclose(probs, tiled[0], atol=1e-5, rtol=0)


def test_probabilities_sum_to_one(whole, tiled):
    for probs in (whole, tiled[0]):
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
        assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_roi_restricts_computation(image, networks, whole):
    roi = np.zeros(SHAPE, dtype=bool)
    roi[20:28, 16:22, 31:40] = True
    calls = []
    probs = predict_probabilities(image, networks[:1], roi=roi, tile=15, progress=lambda d, t: calls.append(t))
    # tiles on a 15-voxel grid: x 15-29, y 15-29, z 30-44 -> one tile
    assert calls == [1]
    computed = np.zeros(SHAPE, dtype=bool)
    computed[15:30, 15:30, 30:45] = True
    np.testing.assert_allclose(probs[:, computed], whole[:, computed], atol=1e-5, rtol=0)
    assert (probs[0, ~computed] == 1.0).all()
    assert (probs[1:, ~computed] == 0.0).all()
    # the ROI voxels are not background by construction of the random network
    assert (probs[0, roi] < 1.0).all()


def test_roi_off_the_tile_grid_matches_whole_image(image, networks, whole):
    """An ROI that starts between tile boundaries: the tile grid starts at a multiple of 15
    below it, so a 30-voxel tile grid that differs from whole-image tiling still agrees."""
    roi = np.zeros(SHAPE, dtype=bool)
    roi[16:47, 2:5, 17:19] = True
    roi[40, 30, 50] = True
    calls = []
    probs = predict_probabilities(
        image, networks[:1], roi=roi, tile=30, batch_size=2, progress=lambda d, t: calls.append((d, t))
    )
    np.testing.assert_allclose(probs[:, roi], whole[:, roi], atol=1e-5, rtol=0)
    # tiles from (15, 0, 15): two along x for the box, one more for the lone voxel; in
    # batches of two
    assert calls == [(2, 3), (3, 3)]
    # far from the ROI (x < 15) nothing was computed
    assert (probs[0, :15] == 1.0).all()


def test_empty_roi_is_all_background(image, networks):
    probs = predict_probabilities(image, networks[:1], roi=np.zeros(SHAPE, dtype=bool), tile=15)
    assert (probs[0] == 1.0).all()
    assert probs.shape[0] == 1 or (probs[1:] == 0.0).all()


@pytest.mark.parametrize("tile", [20, 16, (15, 15, 20), 7])
def test_tile_must_be_a_multiple_of_15(image, networks, tile):
    with pytest.raises(ValueError, match="multiple"):
        predict_probabilities(image, networks[:1], tile=tile)


def test_anisotropic_tiles(image, networks, whole):
    probs = predict_probabilities(image, networks[:1], tile=(45, 15, 30))
    np.testing.assert_allclose(probs, whole, atol=1e-5, rtol=0)


def test_ensemble_is_the_mean_of_softmaxes(networks):
    rng = np.random.default_rng(5)
    small = rng.uniform(-1, 1, size=(20, 17, 23)).astype(np.float32)
    first = predict_probabilities(small, networks[:1], tile=30)
    second = predict_probabilities(small, networks[1:], tile=30)
    both = predict_probabilities(small, networks, tile=30)
    assert np.abs(first - second).max() > 1e-2  # two different networks
    np.testing.assert_allclose(both, (first + second) / 2, atol=1e-6)


def test_tiling_with_published_widths():
    """The published layer widths, tile 15 (4 tiles) against one tile, on a small image."""
    # default initialisation: the wide network's softmaxes vary enough, while Kaiming's
    # saturate them (logits in the hundreds, float32 rounding then shows at 1e-5)
    network = _network(BLASTCT_CONFIG, seed=3, kaiming=False)
    rng = np.random.default_rng(9)
    small = rng.uniform(-1, 1, size=(20, 14, 18)).astype(np.float32)
    tiled = predict_probabilities(small, [network], tile=15)
    single = predict_probabilities(small, [network], tile=(30, 15, 30))
    np.testing.assert_allclose(tiled, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-5)
    assert single.std(axis=(1, 2, 3)).min() > 1e-3


def test_tile_origins():
    roi = np.zeros((40, 40, 40), dtype=bool)
    roi[16, 2, 35] = True
    roi[31, 2, 35] = True
    assert sorted(tile_origins(roi, (15, 15, 15))) == [(15, 0, 30), (30, 0, 30)]
    # from (15, 0, 15) in steps of 30 both voxels fall in the first tile
    assert tile_origins(roi, (30, 30, 30), start=(15, 0, 15)) == [(15, 0, 15)]
    assert sorted(tile_origins(roi, (15, 30, 30), start=(15, 0, 15))) == [(15, 0, 15), (30, 0, 15)]
    assert tile_origins(np.zeros((10, 10, 10), dtype=bool), (15, 15, 15)) == []
    assert CONTEXT_VOXELS == 80 and TILE_MULTIPLE == 15


def _blob(shape, centre, radii):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _covered(tiles, shape):
    covered = np.zeros(shape, dtype=np.int32)
    for t in tiles:
        covered[tuple(slice(o, o + s) for o, s in zip(t.origin, t.shape))] += 1
    return covered


@pytest.mark.parametrize("slab,row", [(15, 15), (15, 30), (30, 15), (30, 30)])
def test_row_tiles_cover_the_roi_on_the_grid(slab, row):
    roi = _blob((100, 120, 110), (52, 61, 50), (40, 50, 45))
    roi[5, 100, 101] = True  # a stray voxel far from the blob
    tiles = row_tiles(roi, slab, row, max_length=60)
    covered = _covered(tiles, (130, 150, 140))[:100, :120, :110]
    assert covered[roi].min() == 1  # every ROI voxel is computed, once
    assert covered.max() == 1  # no voxel twice
    for t in tiles:
        assert all(o % TILE_MULTIPLE == 0 for o in t.origin)
        assert all(s % TILE_MULTIPLE == 0 and s > 0 for s in t.shape)
        assert t.shape[:2] == (slab, row) and t.shape[2] <= 60
        # each row hugs the ROI: the tile touches it (no empty tiles)
        assert roi[tuple(slice(o, o + s) for o, s in zip(t.origin, t.shape))].any()


def test_fitted_rows_compute_less_than_cubes():
    network = build_network(BLASTCT_CONFIG)
    roi = _blob((181, 217, 181), (90, 110, 90), (62, 80, 70))  # a brain-sized ellipsoid
    fitted = plan_tiles(roi, network)
    cubes = plan_tiles(roi, network, tile=30)
    cost = {name: sum(multiply_adds(network, t.shape) for t in plan) for name, plan in
            (("fitted", fitted), ("cubes", cubes))}
    assert cost["fitted"] < 0.85 * cost["cubes"]
    assert plan_multiply_adds(network, fitted) == cost["fitted"]
    assert plan_multiply_adds(network, []) == 0
    # the fitted plan is the cheapest of its candidates
    for slab in (15, 30):
        for row in (15, 30):
            candidate = sum(multiply_adds(network, t.shape) for t in row_tiles(roi, slab, row))
            assert cost["fitted"] <= candidate
    assert _covered(fitted, (195, 225, 195))[:181, :217, :181][roi].min() == 1


def test_multiply_adds_counts_every_layer():
    network = build_network(BLASTCT_CONFIG)
    maps = BLASTCT_CONFIG["model"]["DeepMedic"]["feature_maps"]

    def pathway(out):  # eight valid 3x3x3 convolutions, counted from the first layer
        total, cin = 0, 1
        for k, cout in enumerate(maps):
            total += 27 * cin * cout * (out + 16 - 2 * (k + 1)) ** 3
            cin = cout
        return total

    fully_connected = 30 ** 3 * (150 * 250 + 250 * 250 + 250 * 5)
    expected = pathway(30) + pathway(10) + pathway(6) + fully_connected
    assert multiply_adds(network, (30, 30, 30)) == expected
    # about 670 thousand per output voxel for a 30-voxel cube
    assert 600e3 < expected / 30 ** 3 < 700e3


def test_fitted_rows_match_whole_image(image, networks, whole):
    roi = _blob(SHAPE, (23, 19, 26), (14, 12, 16))
    calls = []
    probs = predict_probabilities(image, networks[:1], roi=roi, progress=lambda d, t: calls.append(t))
    assert calls and calls[-1] == len(plan_tiles(roi, networks[0]))
    np.testing.assert_allclose(probs[:, roi], whole[:, roi], atol=1e-5, rtol=0)


def test_onednn_convolution_matches_pytorch():
    network = build_network(NARROW_CONFIG)
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    if torch.backends.mkldnn.is_available():
        assert all(type(m) is _OneDNNConv3d for m in convs)
    conv = torch.nn.Conv3d(3, 4, 3, bias=False)
    torch.nn.init.normal_(conv.weight)
    fast = _OneDNNConv3d(3, 4, 3, bias=False)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 9, 8, 7)  # small: PyTorch itself would use its slow reference kernel
    with torch.inference_mode():
        np.testing.assert_allclose(fast(x).numpy(), conv(x).numpy(), atol=1e-5, rtol=1e-5)


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
    probs, tiles = segment(hu, roi, networks[:1], tile=30)
    assert tiles == [Tile((0, 0, 0), (30, 30, 30))]
    by_hand = network_axes_to_ras(
        predict_probabilities(ras_to_network_axes(IntensityWindow()(hu)), networks[:1], ras_to_network_axes(roi), 30)
    )
    assert probs.shape == (5, 16, 14, 12)
    np.testing.assert_array_equal(probs, by_hand)
    # without reordering the answer would differ (the network is not flip-invariant)
    plain = predict_probabilities(IntensityWindow()(hu), networks[:1], roi, 30)
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
    first = predict_probabilities(image, networks[:1], tile=15)
    again = predict_probabilities(image, networks[:1], tile=15)
    np.testing.assert_array_equal(first, again)
    other = predict_probabilities(image, networks[1:], tile=15)
    assert np.abs(first - other).max() > 1e-4
    np.testing.assert_allclose(first.sum(axis=0), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- precision


def test_bf16_autocast_is_close_to_float32(image, networks):
    # bf16 keeps 8 bits of mantissa: probabilities move by about 1e-2 at most, and the most
    # likely class stays the same almost everywhere (the real network on real CTs is compared
    # in bench/compare_precision.py).
    fp32 = predict_probabilities(image, networks[:1], tile=30)
    bf16 = predict_probabilities(image, networks[:1], tile=30, precision="bf16")
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(bf16 - fp32).max() < 0.05
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.97
    assert np.abs(bf16 - fp32).max() > 0  # it did run in reduced precision


def test_unknown_precision_is_refused(image, networks):
    with pytest.raises(ValueError, match="precision"):
        predict_probabilities(image, networks[:1], tile=30, precision="int8")
