"""Model registry: which pretrained networks ichseg can run, and where their files are.

A model is chosen by name (``blastct-v1``, the default single network, or
``blastct-v1-ensemble``, all 12 BLAST-CT v1 networks with averaged probabilities), by the path
of one ``.pt`` state-dict file, or by a directory of ``model_*.pt`` files (optionally with a
``config.json``). :func:`resolve_model` turns any of these into local, verified files plus the
model configuration. Building the torch network is the inference code's job, not this module's.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ichseg.pipeline import assets
from ichseg.pipeline.labels import LABELS, Label

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelSpec",
    "ResolvedModel",
    "ModelError",
    "resolve_model",
    "weights_sha256",
]

BLASTCT_CITATION = (
    "Monteiro M, Newcombe VFJ, Mathieu F, Adatia K, Kamnitsas K, Ferrante E, Das T, "
    "Whitehouse D, Rueckert D, Menon DK, Glocker B. Multiclass semantic segmentation and "
    "quantification of traumatic brain injury lesions on head CT using deep learning: an "
    "algorithm development and multicentre validation study. Lancet Digit Health. "
    "2020;2(6):e314-e322. doi:10.1016/S2589-7500(20)30085-6"
)
BLASTCT_URL = "https://github.com/biomedia-mira/blast-ct"

#: Suffixes accepted for a state-dict file.
WEIGHT_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: its weight files, configuration, classes and expected input."""

    name: str
    description: str
    #: Asset relpaths (see :mod:`ichseg.pipeline.assets`) for registry models; absolute paths
    #: for a user-supplied model.
    weight_files: tuple[str, ...]
    config_file: str
    classes: tuple[Label, ...] = LABELS
    #: Intensity window (HU) the network was trained with; values outside are clipped.
    input_window_hu: tuple[float, float] = (-15.0, 100.0)
    #: Voxel size (mm) the input must be resampled to.
    resolution_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    citation: str = BLASTCT_CITATION
    license: str = "Apache-2.0"
    url: str = BLASTCT_URL

    @property
    def is_ensemble(self) -> bool:
        """True when several networks are run and their probabilities averaged."""
        return len(self.weight_files) > 1


_BLASTCT_WEIGHTS = tuple(f"models/blastct-v1/model_{i}.pt" for i in range(1, 13))

#: Registered models, by name.
MODELS: dict[str, ModelSpec] = {
    "blastct-v1": ModelSpec(
        name="blastct-v1",
        description=(
            "BLAST-CT v1 (Monteiro et al. 2020): one DeepMedic network (model_1 of the 12 "
            "released), 5 classes (background, IPH, EAH, oedema, IVH), on 1 mm CT windowed "
            "to -15..100 HU"
        ),
        weight_files=_BLASTCT_WEIGHTS[:1],
        config_file=assets.BLASTCT_CONFIG,
    ),
    "blastct-v1-ensemble": ModelSpec(
        name="blastct-v1-ensemble",
        description=(
            "BLAST-CT v1 ensemble: all 12 released DeepMedic networks, class probabilities "
            "averaged (12x the run time of blastct-v1)"
        ),
        weight_files=_BLASTCT_WEIGHTS,
        config_file=assets.BLASTCT_CONFIG,
    ),
}
#: The model used when none is named.
DEFAULT_MODEL = "blastct-v1"


@dataclass(frozen=True)
class ResolvedModel:
    """A model made concrete: its spec, local weight files and parsed configuration."""

    spec: ModelSpec
    weight_paths: list[Path]
    config: dict[str, Any] = field(repr=False)
    #: Local path of the configuration actually loaded.
    config_path: Path | None = None

    @property
    def is_ensemble(self) -> bool:
        """True when there are several networks whose probabilities are averaged."""
        return len(self.weight_paths) > 1

    @property
    def feature_maps(self) -> list[int]:
        """DeepMedic feature maps per convolution layer (from the configuration)."""
        return list(self.config["model"]["DeepMedic"]["feature_maps"])

    @property
    def fully_connected(self) -> list[int]:
        """DeepMedic fully connected (1x1x1) layer widths (from the configuration)."""
        return list(self.config["model"]["DeepMedic"]["fully_connected"])

    @property
    def num_classes(self) -> int:
        """Number of output classes, background included."""
        return int(self.config["data"]["num_classes"])


class ModelError(ValueError):
    """A model name or path that cannot be used, with what to do about it."""


def _registered() -> str:
    return ", ".join(f"{name!r}" for name in MODELS)


def _load_config(path: Path) -> dict[str, Any]:
    """Read and check a BLAST-CT ``config.json``; errors name the file and the problem."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read model configuration {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"model configuration {path} is not valid JSON ({exc}); fix or remove it "
            f"(without it the BLAST-CT v1 configuration is used)"
        ) from exc
    try:
        deepmedic = config["model"]["DeepMedic"]
        fmaps, fc = deepmedic["feature_maps"], deepmedic["fully_connected"]
        num_classes = config["data"]["num_classes"]
        channels = config["data"]["input_channels"]
    except (KeyError, TypeError) as exc:
        raise ModelError(
            f"model configuration {path} lacks model.DeepMedic.feature_maps, "
            f"model.DeepMedic.fully_connected, data.num_classes or data.input_channels "
            f"(missing {exc}); ichseg runs BLAST-CT (DeepMedic) models only"
        ) from None
    if channels != 1:
        raise ModelError(
            f"model configuration {path} has input_channels={channels}; ichseg feeds one "
            f"channel (the CT in HU), so only single-channel models can be used"
        )
    if not (isinstance(fmaps, list) and fmaps and all(isinstance(v, int) for v in fmaps)):
        raise ModelError(f"model configuration {path}: feature_maps must be a list of integers")
    if not (isinstance(fc, list) and all(isinstance(v, int) for v in fc)):
        raise ModelError(f"model configuration {path}: fully_connected must be a list of integers")
    if num_classes != len(LABELS):
        raise ModelError(
            f"model configuration {path} has num_classes={num_classes}, but ichseg's label "
            f"table has {len(LABELS)} classes ({', '.join(lab.abbreviation for lab in LABELS)}); "
            f"only models with these classes can be used"
        )
    return config


def _window_and_resolution(config: dict[str, Any], base: ModelSpec) -> dict[str, Any]:
    """Spec fields read from a user-supplied config, falling back to the base spec."""
    data = config.get("data", {})
    window = data.get("transformation", {}).get("IntensityWindowNormalization", {})
    out: dict[str, Any] = {}
    if "lower_bound" in window and "upper_bound" in window:
        out["input_window_hu"] = (float(window["lower_bound"]), float(window["upper_bound"]))
    if isinstance(data.get("resolution"), list) and len(data["resolution"]) == 3:
        out["resolution_mm"] = tuple(float(v) for v in data["resolution"])
    return out


def _check_weight_file(path: Path) -> None:
    """Reject files that are clearly not PyTorch checkpoints, before torch gives a cryptic error."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK..) since 1.6, a protocol-2 pickle (0x80 0x02) before.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ModelError(
            f"{path} does not look like a PyTorch state-dict file (it starts with {head!r}, "
            f"not a zip archive or a pickle); pass a .pt file saved with torch.save"
        )


def _model_index(path: Path) -> tuple[int, int, str]:
    # model_2.pt before model_10.pt; names without a number go last, alphabetically.
    m = re.fullmatch(r"model_(\d+)", path.stem)
    return (0, int(m.group(1)), path.name) if m else (1, 0, path.name)


def _registry_config() -> tuple[dict[str, Any], Path]:
    path = assets.get_asset(assets.BLASTCT_CONFIG)
    return _load_config(path), path


def resolve_model(name_or_path: str | os.PathLike) -> ResolvedModel:
    """Resolve a registry name, a ``.pt`` file or a directory of ``model_*.pt`` to local files.

    A string that is a registered name means that model (write ``./name`` for a folder of the
    same name); anything else is taken as a path. Registry files are found, downloaded and
    verified through :func:`ichseg.pipeline.assets.get_asset`. Raises :class:`ModelError`
    (or an asset error when a registry file is unavailable).
    """
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        spec = MODELS[name_or_path]
        weights = [assets.get_asset(rel) for rel in spec.weight_files]
        config_path = assets.get_asset(spec.config_file)
        return ResolvedModel(spec, weights, _load_config(config_path), config_path)

    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    base = MODELS[DEFAULT_MODEL]

    if path.is_file():
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise ModelError(
                f"{path} is not a model: expected a PyTorch state-dict file ending in "
                f"{' or '.join(WEIGHT_SUFFIXES)}, a directory of model_*.pt files, or one of the "
                f"registered models {_registered()}"
            )
        _check_weight_file(path)
        # A single state dict carries no architecture: it must be a BLAST-CT v1 network.
        config, config_path = _registry_config()
        weights = [path.resolve()]
        spec = replace(
            base,
            name=str(weights[0]),
            description=f"user-supplied BLAST-CT v1-architecture network {weights[0]}",
            weight_files=(str(weights[0]),),
            config_file=str(config_path),
            license="user-supplied (unknown)",
            url="",
        )
        return ResolvedModel(spec, weights, config, config_path)

    if path.is_dir():
        found = [p for p in path.glob("model_*") if p.suffix.lower() in WEIGHT_SUFFIXES]
        if not found:
            present = sorted(p.name for p in path.iterdir())[:10]
            raise ModelError(
                f"directory {path} holds no model_*.pt files (found: "
                f"{', '.join(present) if present else 'nothing'}); put the ensemble's state "
                f"dicts there as model_1.pt, model_2.pt, ..., or pass a single .pt file"
            )
        weights = sorted((p.resolve() for p in found), key=_model_index)
        for w in weights:
            _check_weight_file(w)
        local_config = path / "config.json"
        if local_config.is_file():
            config, config_path = _load_config(local_config), local_config.resolve()
        else:
            config, config_path = _registry_config()
        kind = f"ensemble of {len(weights)} networks" if len(weights) > 1 else "single network"
        provenance = {"license": "user-supplied (unknown)", "url": ""}
        card = path / "model_card.json"
        if card.is_file():  # written by `ichseg train`: the base model's license and citation
            try:
                base_card = json.loads(card.read_text(encoding="utf-8"))["base"]
                provenance = {"license": base_card["license"], "url": base_card["url"],
                              "citation": base_card["citation"]}
                kind = f"{kind} fine-tuned by ichseg train from {base_card['name']}"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelError(f"{card} is not a readable model card ({exc}); fix or remove it") from None
        spec = replace(
            base,
            name=str(path.resolve()),
            description=(
                f"user-supplied BLAST-CT-architecture {kind} from {path.resolve()}"
            ),
            weight_files=tuple(str(w) for w in weights),
            config_file=str(config_path),
            **provenance,
            **_window_and_resolution(config, base),
        )
        return ResolvedModel(spec, weights, config, config_path)

    close = difflib.get_close_matches(raw, list(MODELS), n=2, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ModelError(
        f"unknown model {raw!r}: it is neither a registered model ({_registered()}) nor an "
        f"existing .pt file or directory of model_*.pt files.{hint}"
    )


def weights_sha256(resolved: ResolvedModel) -> list[str]:
    """sha256 of each weight file, in ``resolved.weight_paths`` order (for provenance).

    Hashes are memoised per (path, size, mtime) by :func:`ichseg.pipeline.assets.file_sha256`,
    so registry weights verified by :func:`resolve_model` are not read again.
    """
    return [assets.file_sha256(p) for p in resolved.weight_paths]
