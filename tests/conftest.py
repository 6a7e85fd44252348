"""Fixtures shared by the whole test-suite.

Tests never download: the session runs with ``ICHSEG_OFFLINE=1``, and real data (CT scans,
templates, weights) comes from ``ICHSEG_DATA_DIR`` or an already filled cache through the
``asset`` fixture. Without the data those tests are skipped locally and fail under CI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

# nipype reads this when it is imported, which can happen while test modules are collected,
# before any fixture runs; so it is set here as well as in the session fixture below.
os.environ.setdefault("NIPYPE_NO_ET", "1")
# ITK fixes its thread count at its first use in a process; the workflow tests fork Nipype
# workers from this process, so one ITK thread (deterministic registration) is set up front.
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
# GNU OpenMP cannot be used in a process forked from one whose OpenMP pool has started: the
# child waits for pool threads that do not exist. The workflow tests fork Nipype workers that
# run torch on two threads, so torch work in this process stays on one thread (no pool; the
# ichseg command line never runs torch before forking its workers). Parallel behaviour is
# tested in subprocesses (tests/test_cpu.py).
import torch  # noqa: E402

torch.set_num_threads(1)

_MARKERS = {
    "realdata": "needs the real CTs / pretrained weights from the asset lookup (ICHSEG_DATA_DIR)",
    "slow": "end-to-end runs that take more than a few seconds",
    "slurm": "needs Slurm and munge (a one-node test cluster is started as root); run under CI=true",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's markers unless setup.cfg already declares them."""
    declared = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, help_text in _MARKERS.items():
        if name not in declared:
            config.addinivalue_line("markers", f"{name}: {help_text}")


def _under_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.fixture(autouse=True, scope="session")
def _hermetic_environment():
    """No telemetry, no downloads: tests use local data only (a test may still pass
    ``download=True`` explicitly, e.g. against a local HTTP server)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NIPYPE_NO_ET", "1")
    mp.setenv("ICHSEG_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def asset() -> Callable[[str], Path]:
    """Return ``asset(relpath) -> Path`` that resolves a registry asset without downloading.

    A missing asset skips the test (fails it under CI, where the data must be present);
    a file with a wrong sha256 always fails.
    """
    from ichseg.pipeline.assets import ASSETS, AssetNotFoundError, get_asset

    def _resolve(relpath: str) -> Path:
        try:
            return get_asset(relpath, download=False)
        except AssetNotFoundError as exc:
            group = ASSETS[relpath].group
            msg = (
                f"asset {relpath} is not available: set ICHSEG_DATA_DIR to a folder with the "
                f"ichseg data (laid out like {relpath}), or run `python -m "
                f"ichseg.pipeline.assets --group {group}` on a machine with internet and point "
                f"ICHSEG_CACHE_DIR at its cache"
            )
            if _under_ci():
                # CI must have the data: the full report says where it looked.
                pytest.fail(f"{msg}\n{exc}", pytrace=False)
            pytest.skip(msg)

    return _resolve


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, asset) -> Path:
    """A folder with a config.json of a DeepMedic with 4 feature maps per layer and random
    weights: the real workflow in seconds, for tests of the plumbing."""
    import json

    from ichseg.pipeline.inference import build_network

    folder = tmp_path_factory.mktemp("tiny-model")
    config = json.loads(asset("models/blastct-v1/config.json").read_text())
    config["model"]["DeepMedic"] = {"feature_maps": [4] * 8, "fully_connected": [8, 8]}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(build_network(config).state_dict(), folder / "model_1.pt")
    return folder


def derivative_hashes(out: Path) -> dict[str, str]:
    """sha256 of every derivative, except files that record when or where they were made
    (reports, figures, volume sidecars) and the logs of runs and submissions."""
    import hashlib

    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix not in {".html", ".svg"} and not p.name.endswith("_volumes.json")
        and not p.name.startswith(".") and p.relative_to(out).parts[0] != "logs"
    }
