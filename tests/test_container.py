"""The container image, built with ``podman build --isolation=chroot`` (scripts/build_image.sh)
and checked without a container runtime: its root file system is exported and its entry
point run in a chroot, as the image's user, with the image's environment, on the demo.

Building takes minutes, so this module is marked ``container`` and ``.ci/run`` runs it once,
after the rest of the suite. Set ``ICHSEG_TEST_IMAGE`` to check an image you already built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ichseg.bids_app.demo import write_demo_dataset
from ichseg.pipeline import __version__
from ichseg.pipeline.assets import fetch_into

pytestmark = [pytest.mark.container, pytest.mark.realdata, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("ICHSEG_TEST_IMAGE", "localhost/ichseg:test")
USER = "1000:1000"  # the image's user "ichseg"


def _require_tools() -> None:
    missing = [t for t in ("podman", "debootstrap", "unshare", "chroot", "tar") if shutil.which(t) is None]
    why = f"{', '.join(missing)} missing (apt-get install podman debootstrap)" if missing else None
    if not why and os.geteuid() != 0:
        why = "building with debootstrap and running in a chroot need root"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must check the container image: {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> Iterator[tuple[Path, list[str]]]:
    """The image's root file system in a folder, and its environment (``KEY=value``).

    An image this fixture built is removed afterwards (about 2 GB each; its build cache stays).
    """
    _require_tools()
    built_here = "ICHSEG_TEST_IMAGE" not in os.environ
    if built_here:
        env = dict(os.environ)
        if Path("/opt/wheels").is_dir():  # this CI's local CPU build of torch
            env.setdefault("ICHSEG_WHEELS", "/opt/wheels")
        build = subprocess.run(["bash", str(ROOT / "scripts" / "build_image.sh"), IMAGE], env=env,
                               capture_output=True, text=True)
        assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    folder = tmp_path_factory.mktemp("rootfs")
    folder.chmod(0o755)  # it becomes "/" of the image's user
    container = subprocess.run(["podman", "create", IMAGE], capture_output=True, text=True, check=True).stdout.strip()
    try:
        export = subprocess.Popen(["podman", "export", container], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(folder)], stdin=export.stdout, check=True)
        assert export.wait() == 0
    finally:
        subprocess.run(["podman", "rm", container], capture_output=True)
    config = json.loads(subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True,
                                       text=True, check=True).stdout)[0]["Config"]
    yield folder, config["Env"]
    if built_here:
        subprocess.run(["podman", "rmi", IMAGE], capture_output=True)


def _chroot(rootfs, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``command`` in the image's root file system as its user, with /proc and /dev."""
    folder, env = rootfs
    script = (f'mount -t proc proc "{folder}/proc" && mount --rbind /dev "{folder}/dev" && '
              f'exec chroot --userspec={USER} "{folder}" /usr/bin/env -i "$@"')
    return subprocess.run(["unshare", "-m", "--", "sh", "-c", script, "sh", *env, *command],
                          capture_output=True, text=True, timeout=timeout)


def test_entry_point_answers_version(rootfs):
    result = _chroot(rootfs, "ichseg", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ichseg {__version__}"


def test_image_segments_the_demo(rootfs, asset):
    asset("models/blastct-v1/config.json")
    folder, _ = rootfs
    # What a user mounts: the data folder at the image's ICHSEG_DATA_DIR, a dataset, an output.
    fetch_into(folder / "opt" / "ichseg-data")
    data = folder / "data"
    write_demo_dataset(data / "bids", n_subjects=1)
    (data / "out").mkdir()
    shutil.chown(data / "out", 1000, 1000)
    result = _chroot(rootfs, "ichseg", "/data/bids", "/data/out", "participant", "-w", "/data/out/work",
                     "--n-procs", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (data / "out" / "sub-01" / "anat" / "sub-01_volumes.tsv").is_file()
    result = _chroot(rootfs, "ichseg", "/data/bids", "/data/out", "group")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (data / "out" / "group_volumes.tsv").is_file()
