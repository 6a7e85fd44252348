"""Tests of the asset registry and lookup (ichseg.pipeline.assets)."""

from __future__ import annotations

import csv
import hashlib
import http.server
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from ichseg.pipeline import assets
from ichseg.pipeline.assets import (
    ASSETS,
    Asset,
    AssetChecksumError,
    AssetNotFoundError,
    UnknownAssetError,
    get_asset,
)

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = b"ichseg test asset\n" * 64
FAKE = "fake/tiny.bin"


# ------------------------------------------------------------------------------------------
# helpers and fixtures


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No data dir, a private cache dir, downloads allowed only when a test says so."""
    monkeypatch.delenv("ICHSEG_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("ICHSEG_CACHE_DIR", str(tmp_path / "cache"))
    assets.clear_hash_cache()
    yield tmp_path
    assets.clear_hash_cache()


def register(monkeypatch, relpath=FAKE, data=PAYLOAD, url=None, sha=None) -> Asset:
    """Put a fake entry for ``data`` in the registry for the duration of a test."""
    entry = Asset(
        relpath, sha or hashlib.sha256(data).hexdigest(), url, "test-only", "testdata", "fake"
    )
    monkeypatch.setitem(ASSETS, relpath, entry)
    return entry


def write(folder: Path, relpath: str, data: bytes = PAYLOAD) -> Path:
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def http_server():
    """A local HTTP server on 127.0.0.1; returns (base_url, files dict, hits list)."""
    handler = type("H", (_Handler,), {"files": {}, "hits": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.files, handler.hits
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# the registry itself


def test_registry_entries_are_well_formed():
    assert len(ASSETS) >= 22
    for key, a in ASSETS.items():
        assert key == a.relpath
        assert not key.startswith("/") and ".." not in key.split("/")
        assert re.fullmatch(r"[0-9a-f]{64}", a.sha256), key
        assert a.group in assets.GROUPS, key
        assert a.license, key
        if a.url is None:
            assert a.note, f"{key} has no URL and no note saying how to get it"
        else:
            assert a.url.startswith("https://"), key


def test_registry_has_every_expected_file():
    models = {f"models/blastct-v1/model_{i}.pt" for i in range(1, 13)}
    assert models | {assets.BLASTCT_CONFIG} == {a.relpath for a in assets.assets_in_group("models")}
    assert {assets.TEMPLATE_CT, assets.TEMPLATE_MASK} == {a.relpath for a in assets.assets_in_group("templates")}
    assert {assets.ATLAS, assets.ATLAS_LABELS} == {a.relpath for a in assets.assets_in_group("atlas")}
    # Files of the upstream distributions that no code reads: registered, never fetched to run.
    assert {assets.TEMPLATE_CT_128, assets.ATLAS_BRAIN_MASK} == {
        a.relpath for a in assets.assets_in_group("upstream")
    }
    assert {a.relpath for a in assets.assets_in_group("testdata")} == {
        "ct/mistie-0034_ct.nii.gz",
        "ct/deepbleed-brain_ct.nii.gz",
        "ct/ge-head_ct.nii.gz",
        assets.LESION_SHAPES,
    }
    assert assets.LESION_SHAPES in ASSETS
    for name in ("TEMPLATE_CT", "TEMPLATE_MASK", "TEMPLATE_CT_128"):
        assert getattr(assets, name) in ASSETS
    runtime = assets.assets_in_group("runtime")
    assert all(a.group not in ("testdata", "upstream") for a in runtime)
    assert len(assets.assets_in_group("all")) == len(ASSETS)


def test_unknown_group_is_a_clear_error():
    with pytest.raises(ValueError, match="runtime"):
        assets.assets_in_group("weights")


def test_unknown_relpath_is_keyerror_listing_groups():
    with pytest.raises(KeyError) as info:
        get_asset("models/blastct-v1/model_13.pt", download=False)
    assert isinstance(info.value, UnknownAssetError)
    msg = str(info.value)
    assert "model_13.pt" in msg and "not a registered" in msg
    for group in assets.GROUPS:
        assert group in msg
    assert "model_1" in msg  # a close match is suggested


def test_asset_sha256_returns_registered_hash():
    rel = "models/blastct-v1/model_3.pt"
    assert assets.asset_sha256(rel) == ASSETS[rel].sha256
    with pytest.raises(UnknownAssetError):
        assets.asset_sha256("nope.nii.gz")


def test_markdown_table_lists_every_asset():
    table = assets.markdown_table("all")
    for a in ASSETS.values():
        assert a.relpath in table and a.sha256 in table


def test_docs_list_every_asset_hash():
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    missing = [a.relpath for a in assets.assets_in_group("runtime") if a.sha256 not in text]
    assert not missing, (
        f"docs/models.md lacks the sha256 of {missing}; regenerate its table with "
        f"`python -m ichseg.pipeline.assets --group runtime --markdown`"
    )


# ------------------------------------------------------------------------------------------
# lookup through ICHSEG_DATA_DIR


def test_data_dir_lookup(clean_env, monkeypatch):
    register(monkeypatch)
    path = write(clean_env / "data", FAKE)
    monkeypatch.setenv("ICHSEG_DATA_DIR", str(clean_env / "data"))
    assert get_asset(FAKE, download=False) == path
    assert not (clean_env / "cache").exists()  # nothing copied into the cache


def test_data_dir_accepts_several_folders(clean_env, monkeypatch):
    register(monkeypatch)
    path = write(clean_env / "second", FAKE)
    folders = [str(clean_env / "first"), str(clean_env / "second")]
    monkeypatch.setenv("ICHSEG_DATA_DIR", os.pathsep.join(folders))
    assert get_asset(FAKE, download=False) == path


def test_data_dir_checksum_mismatch_names_the_file(clean_env, monkeypatch):
    register(monkeypatch)
    bad = write(clean_env / "data", FAKE, b"not the registered bytes")
    write(clean_env / "cache", FAKE)  # a good copy elsewhere must not hide the bad one
    monkeypatch.setenv("ICHSEG_DATA_DIR", str(clean_env / "data"))
    with pytest.raises(AssetChecksumError) as info:
        get_asset(FAKE, download=False)
    msg = str(info.value)
    assert str(bad) in msg and "ICHSEG_DATA_DIR" in msg and ASSETS[FAKE].sha256 in msg


def test_verification_is_memoised_per_size_and_mtime(clean_env, monkeypatch):
    register(monkeypatch)
    path = write(clean_env / "data", FAKE)
    monkeypatch.setenv("ICHSEG_DATA_DIR", str(clean_env / "data"))
    calls = []
    real = assets._hash_file
    monkeypatch.setattr(assets, "_hash_file", lambda p: calls.append(p) or real(p))
    for _ in range(5):
        get_asset(FAKE, download=False)
    assert len(calls) == 1
    # A changed file (new mtime) is hashed again, and a now-wrong file is caught.
    path.write_bytes(b"changed")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(AssetChecksumError):
        get_asset(FAKE, download=False)
    assert len(calls) == 2


def test_missing_data_dir_is_mentioned(clean_env, monkeypatch):
    register(monkeypatch)
    monkeypatch.setenv("ICHSEG_DATA_DIR", str(clean_env / "does-not-exist"))
    with pytest.raises(AssetNotFoundError, match="does not exist"):
        get_asset(FAKE, download=False)


# ------------------------------------------------------------------------------------------
# the download cache


def test_cache_dir_lookup(clean_env, monkeypatch):
    register(monkeypatch)
    path = write(clean_env / "cache", FAKE)
    assert get_asset(FAKE, download=False) == path


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("ICHSEG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "ichseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "ichseg"
    monkeypatch.setenv("ICHSEG_CACHE_DIR", str(tmp_path / "explicit"))
    assert assets.cache_dir() == tmp_path / "explicit"


def test_corrupt_cache_entry_offline_is_an_error(clean_env, monkeypatch):
    register(monkeypatch)
    bad = write(clean_env / "cache", FAKE, b"truncated")
    with pytest.raises(AssetChecksumError) as info:
        get_asset(FAKE, download=False)
    assert str(bad) in str(info.value) and "Delete it" in str(info.value)


# ------------------------------------------------------------------------------------------
# downloading (against a local server only)


def test_download_into_cache(clean_env, monkeypatch, http_server):
    base, files, hits = http_server
    files["/tiny.bin"] = PAYLOAD
    register(monkeypatch, url=f"{base}/tiny.bin")
    path = get_asset(FAKE, download=True)
    assert path == clean_env / "cache" / FAKE
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.bin"]  # no temp file left
    assert path.stat().st_mode & 0o444 == 0o444  # readable by others (shared/container cache)
    # The second lookup is served from the cache, even offline.
    assert get_asset(FAKE, download=False) == path
    assert hits == ["/tiny.bin"]


def test_download_wrong_hash_leaves_nothing(clean_env, monkeypatch, http_server):
    base, files, _ = http_server
    files["/tiny.bin"] = b"something else entirely"
    register(monkeypatch, url=f"{base}/tiny.bin")
    with pytest.raises(AssetChecksumError) as info:
        get_asset(FAKE, download=True)
    msg = str(info.value)
    assert FAKE in msg and f"{base}/tiny.bin" in msg and "discarded" in msg
    folder = clean_env / "cache" / "fake"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_replaces_corrupt_cache_entry(clean_env, monkeypatch, http_server):
    base, files, _ = http_server
    files["/tiny.bin"] = PAYLOAD
    register(monkeypatch, url=f"{base}/tiny.bin")
    write(clean_env / "cache", FAKE, b"truncated")
    assert get_asset(FAKE, download=True).read_bytes() == PAYLOAD


def test_download_http_error_is_not_found(clean_env, monkeypatch, http_server):
    base, _, _ = http_server
    register(monkeypatch, url=f"{base}/missing.bin")
    with pytest.raises(AssetNotFoundError, match="HTTP 404"):
        get_asset(FAKE, download=True)


def test_download_says_what_it_fetches(clean_env, monkeypatch, http_server, capsys):
    base, files, _ = http_server
    files["/tiny.bin"] = PAYLOAD
    register(monkeypatch, url=f"{base}/tiny.bin")
    get_asset(FAKE, download=True)
    err = capsys.readouterr().err
    assert f"downloading {FAKE} from {base}/tiny.bin" in err and "sha256 verified" in err


def test_no_network_gives_one_clear_error(clean_env, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/tiny.bin"
    register(monkeypatch, url=url)
    start = time.monotonic()
    with pytest.raises(AssetNotFoundError) as info:
        get_asset(FAKE, download=True)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert FAKE in msg and url in msg and "ICHSEG_DATA_DIR" in msg
    assert "python -m ichseg.pipeline.assets" in msg
    assert isinstance(info.value, FileNotFoundError)
    assert not list((clean_env / "cache").rglob("*.part"))


def test_stalled_server_times_out(clean_env, monkeypatch):
    # A socket that accepts connections but never answers: the read must time out.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/tiny.bin"
        register(monkeypatch, url=url)
        monkeypatch.setattr(assets, "DOWNLOAD_TIMEOUT_S", 0.5)
        start = time.monotonic()
        with pytest.raises(AssetNotFoundError, match="failed"):
            get_asset(FAKE, download=True)
        assert time.monotonic() - start < 10


def test_offline_env_var_is_respected(clean_env, monkeypatch, http_server):
    base, files, hits = http_server
    files["/tiny.bin"] = PAYLOAD
    register(monkeypatch, url=f"{base}/tiny.bin")
    monkeypatch.setenv("ICHSEG_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError) as info:
        get_asset(FAKE)
    assert "ICHSEG_OFFLINE" in str(info.value) and "ICHSEG_DATA_DIR" in str(info.value)
    with pytest.raises(AssetNotFoundError, match="download=False"):
        get_asset(FAKE, download=False)
    assert hits == []
    # Without the variable the default is to download.
    monkeypatch.delenv("ICHSEG_OFFLINE")
    assert get_asset(FAKE).read_bytes() == PAYLOAD


def test_asset_without_url_explains_how_to_get_it(clean_env, monkeypatch):
    with pytest.raises(AssetNotFoundError) as info:
        get_asset("ct/ge-head_ct.nii.gz", download=True)
    assert "dcm2niix" in str(info.value)


def test_unwritable_cache_is_reported(clean_env, monkeypatch, http_server):
    base, files, _ = http_server
    files["/tiny.bin"] = PAYLOAD
    register(monkeypatch, url=f"{base}/tiny.bin")
    blocker = clean_env / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ICHSEG_CACHE_DIR", str(blocker))
    with pytest.raises(AssetNotFoundError, match="ICHSEG_CACHE_DIR"):
        get_asset(FAKE, download=True)


# ------------------------------------------------------------------------------------------
# fetch_assets and the command line


def test_fetch_assets_reports_all_failures(clean_env, monkeypatch):
    register(monkeypatch, "fake/a.bin")
    register(monkeypatch, "fake/b.bin")
    write(clean_env / "cache", "fake/a.bin")
    monkeypatch.setattr(
        assets, "ASSETS", {k: v for k, v in ASSETS.items() if k.startswith("fake/")}
    )
    with pytest.raises(AssetNotFoundError) as info:
        assets.fetch_assets("testdata", download=False)
    assert "1 of 2" in str(info.value) and "fake/b.bin" in str(info.value)
    write(clean_env / "cache", "fake/b.bin")
    found = assets.fetch_assets("testdata", download=False)
    assert set(found) == {"fake/a.bin", "fake/b.bin"}


def test_main_list_fetch_and_markdown(clean_env, monkeypatch, capsys):
    register(monkeypatch)
    monkeypatch.setattr(assets, "ASSETS", {FAKE: ASSETS[FAKE]})
    assert assets.main(["--group", "testdata", "--list"]) == 0
    assert f"{FAKE}" in capsys.readouterr().out
    # Offline (the test session default) and missing: exit status 1, the reason on stderr.
    assert assets.main(["--group", "testdata"]) == 1
    assert "ICHSEG_DATA_DIR" in capsys.readouterr().err
    write(clean_env / "cache", FAKE)
    assert assets.main(["--group", "all"]) == 0
    assert "ok  fake/tiny.bin" in capsys.readouterr().out
    assert assets.main(["--markdown", "--group", "testdata"]) == 0
    assert ASSETS[FAKE].sha256 in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# real data


@pytest.mark.realdata
@pytest.mark.parametrize("relpath", sorted(ASSETS))
def test_every_registry_asset_resolves_and_verifies(asset, relpath):
    path = asset(relpath)
    assert path.is_file()
    assert assets.file_sha256(path) == ASSETS[relpath].sha256


@pytest.mark.realdata
def test_registry_matches_manifest():
    manifests = [d / "MANIFEST.tsv" for d in assets.data_dirs() if (d / "MANIFEST.tsv").is_file()]
    if not manifests:
        msg = "no MANIFEST.tsv in ICHSEG_DATA_DIR; point ICHSEG_DATA_DIR at the shared data folder"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    with open(manifests[0], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    compared = 0
    for row in rows:
        if not row["source"].startswith("https://"):
            continue
        entry = ASSETS.get(row["path"])
        assert entry is not None, f"{row['path']} has a URL in MANIFEST.tsv but is not registered"
        assert entry.sha256 == row["sha256"], row["path"]
        assert entry.url == row["source"], row["path"]
        compared += 1
    assert compared >= 21
    manifest_sha = {row["path"]: row["sha256"] for row in rows}
    for relpath, entry in ASSETS.items():
        assert manifest_sha.get(relpath) == entry.sha256, relpath
