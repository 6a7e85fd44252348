"""Offline compute nodes: ``ichseg fetch-assets --dest DIR`` on a login node, then a run with
the network blocked (a new network namespace: no route anywhere) that reads only DIR."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ichseg.bids_app.cli import main
from ichseg.bids_app.demo import write_demo_dataset
from ichseg.pipeline.assets import ASSETS, assets_in_group, file_sha256
from ichseg.pipeline.naming import derivative_path

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _no_network_prefix() -> list[str]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        why = "blocking the network needs `unshare -n` as root"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return ["unshare", "-n", "--"]


def test_run_without_network_from_a_fetched_folder(tmp_path, asset):
    asset("models/blastct-v1/config.json")  # the data to fetch from must be here
    blocked = _no_network_prefix()
    dest = tmp_path / "ichseg-data"
    assert main(["fetch-assets", "--dest", str(dest)]) == 0
    runtime = [a.relpath for a in assets_in_group("runtime")]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(runtime)
    for relpath in runtime:
        assert file_sha256(dest / relpath) == ASSETS[relpath].sha256

    probe = subprocess.run([*blocked, sys.executable, "-c",
                            "import socket; s = socket.socket(); s.settimeout(5); "
                            "print(s.connect_ex(('151.101.0.223', 443)))"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() != "0", "the network is not blocked"

    bids = write_demo_dataset(tmp_path / "bids", n_subjects=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICHSEG_")}
    env.update(ICHSEG_OFFLINE="1", ICHSEG_DATA_DIR=str(dest), ICHSEG_CACHE_DIR=str(tmp_path / "empty-cache"),
               NIPYPE_NO_ET="1")
    run = subprocess.run([*blocked, sys.executable, "-m", "ichseg.bids_app.cli", str(bids),
                          str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--n-procs", "2"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert derivative_path(tmp_path / "out", {"subject": "01"}, "volumes").exists()
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*"))
