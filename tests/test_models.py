"""Tests of the model registry (ichseg.pipeline.models)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ichseg.pipeline import assets, labels, models
from ichseg.pipeline.models import MODELS, ModelError, resolve_model, weights_sha256

REPO = Path(__file__).resolve().parents[1]
FAKE_WEIGHTS = b"\x80\x02" + b"not really a network" * 8  # starts like a legacy torch pickle


def blastct_like_config(lower=-15.0, upper=100.0, num_classes=5) -> dict:
    """A minimal configuration with the fields ichseg reads (written here, not copied)."""
    return {
        "model": {"DeepMedic": {"feature_maps": [8, 8, 16], "fully_connected": [32]}},
        "data": {
            "num_classes": num_classes,
            "input_channels": 1,
            "resolution": [1.0, 1.0, 1.0],
            "transformation": {
                "IntensityWindowNormalization": {"lower_bound": lower, "upper_bound": upper}
            },
        },
    }


@pytest.fixture
def fake_registry_config(tmp_path, monkeypatch):
    """Serve a small BLAST-CT-like config.json as the registry config through ICHSEG_DATA_DIR."""
    data = json.dumps(blastct_like_config()).encode()
    path = tmp_path / "data" / assets.BLASTCT_CONFIG
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    entry = assets.ASSETS[assets.BLASTCT_CONFIG]
    monkeypatch.setitem(
        assets.ASSETS,
        assets.BLASTCT_CONFIG,
        assets.Asset(entry.relpath, hashlib.sha256(data).hexdigest(), None, "test", "models"),
    )
    monkeypatch.setenv("ICHSEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ICHSEG_CACHE_DIR", str(tmp_path / "cache"))
    assets.clear_hash_cache()
    return path


def write_weights(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        (folder / name).write_bytes(FAKE_WEIGHTS + name.encode())
        out.append(folder / name)
    return out


# ------------------------------------------------------------------------------------------
# registry


def test_registry_specs():
    assert models.DEFAULT_MODEL == "blastct-v1"
    assert set(MODELS) == {"blastct-v1", "blastct-v1-ensemble"}
    single, ensemble = MODELS["blastct-v1"], MODELS["blastct-v1-ensemble"]
    assert single.weight_files == ("models/blastct-v1/model_1.pt",)
    assert not single.is_ensemble
    assert ensemble.weight_files == tuple(f"models/blastct-v1/model_{i}.pt" for i in range(1, 13))
    assert ensemble.is_ensemble
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.classes is labels.LABELS
        assert spec.input_window_hu == (-15.0, 100.0)
        assert spec.resolution_mm == (1.0, 1.0, 1.0)
        assert spec.license == "Apache-2.0"
        assert "Monteiro" in spec.citation and spec.url.startswith("https://")
        for rel in (*spec.weight_files, spec.config_file):
            assert rel in assets.ASSETS, rel


def test_docs_mention_every_model():
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    for name in MODELS:
        assert f"`{name}`" in text, f"docs/models.md does not document model {name!r}"


# ------------------------------------------------------------------------------------------
# registry names with the real weights


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(MODELS))
def test_resolve_registry_name(asset, name):
    spec = MODELS[name]
    expected = [asset(rel) for rel in spec.weight_files]
    asset(spec.config_file)
    resolved = resolve_model(name)
    assert resolved.spec is spec
    assert resolved.weight_paths == expected
    assert resolved.is_ensemble == (name == "blastct-v1-ensemble")
    assert resolved.num_classes == len(labels.LABELS)
    assert resolved.feature_maps == [30, 30, 40, 40, 40, 40, 50, 50]
    assert resolved.fully_connected == [250, 250]
    window = resolved.config["data"]["transformation"]["IntensityWindowNormalization"]
    assert (window["lower_bound"], window["upper_bound"]) == spec.input_window_hu
    assert tuple(resolved.config["data"]["resolution"]) == spec.resolution_mm


@pytest.mark.realdata
def test_weights_sha256_uses_verified_hashes(asset, monkeypatch):
    for rel in MODELS["blastct-v1-ensemble"].weight_files:
        asset(rel)
    resolved = resolve_model("blastct-v1-ensemble")
    calls = []
    monkeypatch.setattr(assets, "_hash_file", lambda p: calls.append(p) or "x")
    hashes = weights_sha256(resolved)
    assert calls == []  # verified during resolve_model: not read again
    assert hashes == [assets.ASSETS[rel].sha256 for rel in resolved.spec.weight_files]


@pytest.mark.realdata
def test_resolve_real_weight_file_and_directory(asset):
    weight = asset("models/blastct-v1/model_5.pt")
    asset(assets.BLASTCT_CONFIG)
    single = resolve_model(weight)
    assert single.weight_paths == [weight.resolve()]
    assert single.spec.name == str(weight.resolve())
    assert single.num_classes == 5
    folder = resolve_model(str(weight.parent))
    assert [p.name for p in folder.weight_paths] == [f"model_{i}.pt" for i in range(1, 13)]
    assert folder.config_path == (weight.parent / "config.json").resolve()


# ------------------------------------------------------------------------------------------
# user-supplied files (fake weights, no real data needed)


def test_resolve_single_pt_file(tmp_path, fake_registry_config):
    (weight,) = write_weights(tmp_path / "mine", "finetuned.pt")
    resolved = resolve_model(str(weight))
    assert resolved.weight_paths == [weight.resolve()]
    assert not resolved.is_ensemble and not resolved.spec.is_ensemble
    assert resolved.config_path == fake_registry_config
    assert resolved.spec.name == str(weight.resolve())
    assert resolved.spec.classes is labels.LABELS
    assert resolved.feature_maps == [8, 8, 16]
    assert weights_sha256(resolved) == [hashlib.sha256(weight.read_bytes()).hexdigest()]


def test_resolve_directory_orders_numerically_and_reads_its_config(tmp_path):
    folder = tmp_path / "ens"
    write_weights(folder, "model_10.pt", "model_2.pt", "model_1.pt")
    (folder / "config.json").write_text(json.dumps(blastct_like_config(-20.0, 120.0)))
    (folder / "notes.txt").write_text("ignored")
    resolved = resolve_model(folder)
    assert [p.name for p in resolved.weight_paths] == ["model_1.pt", "model_2.pt", "model_10.pt"]
    assert resolved.is_ensemble
    assert resolved.config_path == (folder / "config.json").resolve()
    assert resolved.spec.input_window_hu == (-20.0, 120.0)
    assert len(weights_sha256(resolved)) == 3


def test_resolve_directory_without_config_uses_blastct_config(tmp_path, fake_registry_config):
    folder = tmp_path / "ens"
    write_weights(folder, "model_1.pt", "model_2.pt")
    resolved = resolve_model(str(folder))
    assert resolved.config_path == fake_registry_config
    assert resolved.spec.input_window_hu == (-15.0, 100.0)


def test_path_object_is_never_a_registry_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="neither a registered model"):
        resolve_model(Path("blastct-v1"))


# ------------------------------------------------------------------------------------------
# bad inputs


def test_unknown_name_lists_registered_models():
    with pytest.raises(ModelError) as info:
        resolve_model("blastct-v2")
    msg = str(info.value)
    assert "'blastct-v1'" in msg and "'blastct-v1-ensemble'" in msg and "Did you mean" in msg


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="neither a registered model"):
        resolve_model(str(tmp_path / "nope.pt"))


def test_wrong_suffix(tmp_path):
    path = tmp_path / "image.nii.gz"
    path.write_bytes(b"\x1f\x8b...")
    with pytest.raises(ModelError, match=r"\.pt") as info:
        resolve_model(str(path))
    assert str(path) in str(info.value)


def test_not_a_torch_file(tmp_path, fake_registry_config):
    path = tmp_path / "model.pt"
    path.write_text("hello")
    with pytest.raises(ModelError, match="does not look like a PyTorch"):
        resolve_model(str(path))


def test_directory_without_weights(tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        resolve_model(tmp_path)
    assert "no model_*.pt" in str(info.value) and "weights.h5" in str(info.value)


def test_config_with_other_classes_is_rejected(tmp_path):
    folder = tmp_path / "ens"
    write_weights(folder, "model_1.pt")
    config = folder / "config.json"
    config.write_text(json.dumps(blastct_like_config(num_classes=3)))
    with pytest.raises(ModelError, match="num_classes=3") as info:
        resolve_model(folder)
    assert str(config) in str(info.value)


def test_config_not_json_or_not_deepmedic(tmp_path):
    folder = tmp_path / "ens"
    write_weights(folder, "model_1.pt")
    config = folder / "config.json"
    config.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        resolve_model(folder)
    config.write_text(json.dumps({"model": {"UNet": {}}, "data": {"num_classes": 5}}))
    with pytest.raises(ModelError, match="DeepMedic"):
        resolve_model(folder)
    two_channels = blastct_like_config()
    two_channels["data"]["input_channels"] = 2
    config.write_text(json.dumps(two_channels))
    with pytest.raises(ModelError, match="input_channels=2"):
        resolve_model(folder)
