"""Asset lookup: the one place that knows where templates, model weights and test CTs live.

Every file ichseg needs at run time (CT template, BLAST-CT weights and config, localisation
atlas) and the real CT scans used by the test-suite are listed in :data:`ASSETS` with their
sha256 and a public download URL pinned to a commit. :func:`get_asset` finds a file, in order:

1. ``$ICHSEG_DATA_DIR/<relpath>`` when ``ICHSEG_DATA_DIR`` is set (a local folder laid out like
   the registry keys; tests and CI point it at the shared data folder);
2. the download cache ``$ICHSEG_CACHE_DIR/<relpath>`` (default ``$XDG_CACHE_HOME/ichseg`` or
   ``~/.cache/ichseg``);
3. a download (pooch: temporary file, sha256 check, rename) from the asset's URL into that
   cache, unless downloading is disabled
   (``download=False`` or ``ICHSEG_OFFLINE=1``).

Every file is checked against its sha256 wherever it is found. Pre-fetch on a machine with
internet with ``python -m ichseg.pipeline.assets --group runtime``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ichseg.pipeline.tsv import is_true

__all__ = [
    "ASSETS",
    "GROUPS",
    "PSEUDO_GROUPS",
    "Asset",
    "AssetError",
    "AssetNotFoundError",
    "AssetChecksumError",
    "UnknownAssetError",
    "get_asset",
    "asset_sha256",
    "file_sha256",
    "verify_file",
    "clear_hash_cache",
    "cache_dir",
    "data_dirs",
    "offline",
    "assets_in_group",
    "fetch_assets",
    "fetch_into",
    "markdown_table",
    "main",
]

#: Environment variables this module reads.
ENV_DATA_DIR = "ICHSEG_DATA_DIR"
ENV_CACHE_DIR = "ICHSEG_CACHE_DIR"
ENV_OFFLINE = "ICHSEG_OFFLINE"

#: Seconds to wait for a connection (and for each read) before a download gives up; short
#: enough that a machine without network fails fast, long enough for a slow mirror.
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Asset:
    """One registered file: where it lives relative to a data folder, its hash and its source."""

    relpath: str
    sha256: str
    url: str | None
    license: str
    group: str
    description: str = ""
    #: How to obtain the file when there is no download URL.
    note: str = ""


_BLAST = (
    "https://raw.githubusercontent.com/biomedia-mira/blast-ct/"
    "361e8c797fbcb276627a7941b39298bef563113b/blast_ct/data"
)
_ICHSEG_R = (
    "https://raw.githubusercontent.com/muschellij2/ichseg/"
    "5bbc18dd7d42b66df72404dabc20c71dd32594d3/inst"
)
_LIC_BLAST = "Apache-2.0 (blast-ct)"
_LIC_TEMPLATE = "GPL-2 (R package ichseg); template from Rorden et al. 2012 NeuroImage 61:957"

_MODEL_SHA = {
    1: "95f76e8b16fe42b6aa49388cb798e282c55cd70191544f4417445bb87803f99f",
    2: "44621a70866c5d4a69a2011f258d2c2f17d86af047d384f858a74ae0151e149c",
    3: "58c82cf9fa984266ffe56866e569241dfe41726f61101df963260da45fa4d120",
    4: "b4d344dfeda52a190280bef76bd0719744a8ce01e735d01fcd4e3fe1d8d04609",
    5: "5789d5d98f5a4507ffa5edec205026a26570a0444f09272de6dc06cdede92a99",
    6: "5dc30c4008b2ba6c76934ddef23db76cba962f76ce1c052ca067b94f187e0477",
    7: "af54c424b97f8dc4c62fe8c33af55d886d2dd444f4b55e9cab50f49af4084b86",
    8: "8f5d5a48c382300646517049c6b87ae3074a91ae0c7a85d292998272673d876e",
    9: "a255de8d04b670cbcbd0eda7c8bb7baf25d4a48a8606458000694b5062d7674c",
    10: "7bb4643c1317e6d5b7dbcbf44669d5653d3ae3d2f01a04a22f3b2f84416dbc05",
    11: "4a9e432244cf6c082f71b834b1aca6e6b9d44f514f2e52f07edd2f2802674121",
    12: "1d567f0ec5f1888b5ce6660314db9c51af9758c861f66f001c980f46fe6f49b3",
}

_TABLE: tuple[Asset, ...] = (
    # --- CT template (registration target) ------------------------------------------------
    Asset(
        "templates/scct_unsmooth_SS_0.01.nii.gz",
        "19ba89e7dab8b6e1afb5951126cf3c407b095f085d2da0f88d8f2fc74f241e54",
        f"{_ICHSEG_R}/scct_unsmooth_SS_0.01.nii.gz",
        _LIC_TEMPLATE,
        "templates",
        "Rorden CT template (HU), skull-stripped, 1 mm MNI grid 181x217x181",
    ),
    Asset(
        "templates/scct_unsmooth_SS_0.01_Mask.nii.gz",
        "787bfe935e159111730f232d93b13a5df52e5c1d2b383da480bf2483f76569be",
        f"{_ICHSEG_R}/scct_unsmooth_SS_0.01_Mask.nii.gz",
        _LIC_TEMPLATE,
        "templates",
        "brain mask of the 1 mm CT template",
    ),
    Asset(
        "templates/scct_unsmooth_SS_0.01_128x128x128.nii.gz",
        "060ebe1a705013613f4116654e819484768ec28f113c7e357b0a2a53744f9ebc",
        f"{_ICHSEG_R}/scct_unsmooth_SS_0.01_128x128x128.nii.gz",
        _LIC_TEMPLATE,
        "upstream",
        "CT template resampled to 1.5 mm, 128^3 (DeepBleed's registration target; not used by ichseg)",
    ),
    # --- BLAST-CT v1 weights and configuration ---------------------------------------------
    *(
        Asset(
            f"models/blastct-v1/model_{i}.pt",
            sha,
            f"{_BLAST}/saved_models/model_{i}.pt",
            _LIC_BLAST,
            "models",
            f"BLAST-CT v1 DeepMedic network {i} of 12 (PyTorch state dict, legacy format)",
        )
        for i, sha in _MODEL_SHA.items()
    ),
    Asset(
        "models/blastct-v1/config.json",
        "fe12d4d28bd14729d6f00dd65e1592f5a6fb41e0f087906402ffe3263d49a422",
        f"{_BLAST}/config.json",
        _LIC_BLAST,
        "models",
        "BLAST-CT v1 hyper-parameters (architecture, classes, intensity window, patch size)",
    ),
    # --- BLAST-CT localisation atlas -------------------------------------------------------
    Asset(
        "models/blastct-v1/atlas_template_space.nii.gz",
        "dd642826a0b45a7b726d775ca43245332ffb000fed6c0576915278150b597c0c",
        f"{_BLAST}/localisation_files/atlas_template_space.nii.gz",
        _LIC_BLAST,
        "atlas",
        "lobe/region atlas on the MNI152 1 mm grid (197x233x189)",
    ),
    Asset(
        "models/blastct-v1/ct_template_mask.nii.gz",
        "69473fa80c523cbf88c363c51cf7384bc9a938f75836cdccfcc3a81341489517",
        f"{_BLAST}/localisation_files/ct_template_mask.nii.gz",
        _LIC_BLAST,
        "upstream",
        "brain mask on the atlas grid (shipped with BLAST-CT's atlas; not used by ichseg)",
    ),
    Asset(
        "models/blastct-v1/atlas_labels.csv",
        "a51bf37443604c7981159c05be029520788d98c8a2b7d6b501212e56ce086cf4",
        f"{_BLAST}/localisation_files/atlas_labels.csv",
        _LIC_BLAST,
        "atlas",
        "names of the atlas regions",
    ),
    # --- real head CTs, for tests only (never shipped) -------------------------------------
    Asset(
        "ct/mistie-0034_ct.nii.gz",
        "dfaa5b0d308aff5969989cd2bc9d42410367c3f0a9270cc87b36d586de3d1e1d",
        "https://raw.githubusercontent.com/muschellij2/CT_Pipeline/"
        "d8bea6cdc688028ca866d604a41b4706740438ee/QC/Andrew/0034.nii.gz",
        "none stated; test use only",
        "testdata",
        "head CT with a large left deep intraparenchymal hemorrhage (0.5x0.5x6 mm)",
    ),
    Asset(
        "ct/deepbleed-brain_ct.nii.gz",
        "e8b0e71cc385fc91e1dfaf61b3086bface1c3e61bd8e4e10622ee3a8eaf241ee",
        "https://raw.githubusercontent.com/msharrock/deepbleed/"
        "c984035f0084719563733f876a9e95d63ef40bda/tmpfile.nii.gz",
        "CC BY-NC-ND 4.0; test use only",
        "testdata",
        "head CT already brain-extracted (skull set to 0)",
    ),
    Asset(
        "ct/ge-head_ct.nii.gz",
        "b53ba130aae1f7fde505e851732eedc4fe52689ecc91845b59b93b6adfeb36d2",
        None,
        "BSD-2-Clause (dcm_qa_ct)",
        "testdata",
        "GE HiSpeed head CT with 18.5 deg gantry tilt, no acute hemorrhage",
        note=(
            "no per-file download URL: it is the dcm2niix -z y conversion of the GE series of "
            "https://github.com/neurolabusc/dcm_qa_ct (In/GE); place it in ICHSEG_DATA_DIR"
        ),
    ),
    Asset(
        "lesion-shapes/HemSeg-500.zip",
        "53482652862b26e6926a8b4b251269107eb9c22faf6ad0644a462fa7e47d723c",
        None,
        "none stated; test use only",
        "testdata",
        "525 real hemorrhage masks (HemSeg-500: RSNA head CT grids, train/val/test splits), "
        "the shapes of the truth set (bench/make_truthset.py)",
        note=(
            "no per-file download URL: the labels of the HemSeg-500 set of "
            "https://github.com/songchangwei/3DCT-SD-IVH-ICH (commit 7b7db5f2), zipped; place it "
            "in ICHSEG_DATA_DIR"
        ),
    ),
)

#: The registry, keyed by the path relative to a data folder (the MANIFEST.tsv ``path``).
ASSETS: dict[str, Asset] = {a.relpath: a for a in _TABLE}

#: Real groups of :data:`ASSETS`, in display order.
#: ``upstream``: files of the distributions ichseg takes its assets from that it does not read
#: (kept for provenance and for comparisons); never fetched with the runtime group.
GROUPS: tuple[str, ...] = ("templates", "models", "atlas", "testdata", "upstream")
#: Groups made of other groups: what the app needs to run, and everything.
PSEUDO_GROUPS: dict[str, tuple[str, ...]] = {
    "runtime": ("templates", "models", "atlas"),
    "all": GROUPS,
}

#: Names of the assets other modules use most, so that a typo is an ImportError, not a miss.
TEMPLATE_CT = "templates/scct_unsmooth_SS_0.01.nii.gz"
LESION_SHAPES = "lesion-shapes/HemSeg-500.zip"
TEMPLATE_MASK = "templates/scct_unsmooth_SS_0.01_Mask.nii.gz"
TEMPLATE_CT_128 = "templates/scct_unsmooth_SS_0.01_128x128x128.nii.gz"
BLASTCT_CONFIG = "models/blastct-v1/config.json"
ATLAS = "models/blastct-v1/atlas_template_space.nii.gz"
ATLAS_LABELS = "models/blastct-v1/atlas_labels.csv"
ATLAS_BRAIN_MASK = "models/blastct-v1/ct_template_mask.nii.gz"


# ---------------------------------------------------------------------------------------------
# errors


class AssetError(Exception):
    """Base class of the errors of this module."""


class AssetNotFoundError(AssetError, FileNotFoundError):
    """An asset is in none of the local folders and could not be downloaded."""

    def __str__(self) -> str:  # FileNotFoundError would otherwise prefix "[Errno ...]"
        return str(self.args[0]) if self.args else ""


class AssetChecksumError(AssetError, ValueError):
    """A file's sha256 differs from the registered one (corrupt, truncated or wrong file)."""


class UnknownAssetError(AssetError, KeyError):
    """A relpath that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise show the message in quotes
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------
# environment


def offline() -> bool:
    """True when ``ICHSEG_OFFLINE`` disables downloads (1, true, yes, on)."""
    return is_true(os.environ.get(ENV_OFFLINE))


def data_dirs() -> list[Path]:
    """Folders named by ``ICHSEG_DATA_DIR`` (several may be joined with ``os.pathsep``)."""
    raw = os.environ.get(ENV_DATA_DIR, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def cache_dir() -> Path:
    """The download cache: ``$ICHSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/ichseg``,
    else ``~/.cache/ichseg``."""
    explicit = os.environ.get(ENV_CACHE_DIR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ichseg"


# ---------------------------------------------------------------------------------------------
# hashing, with an in-process memo so that the 12 model files are hashed once per process


_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, memoised per (path, size, mtime) within this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        hit = _HASH_CACHE.get(key)
    if hit is not None:
        return hit
    digest = _hash_file(p)
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
    return digest


def clear_hash_cache() -> None:
    """Forget memoised hashes (tests use this; files are re-hashed on next use)."""
    with _HASH_LOCK:
        _HASH_CACHE.clear()


def verify_file(
    path: str | os.PathLike, sha256: str, *, what: str | None = None, fix: str | None = None
) -> Path:
    """Check a file against an expected sha256; raise :class:`AssetChecksumError` naming it.

    ``what`` prefixes the file in the message, ``fix`` replaces the default advice.
    """
    p = Path(path)
    got = file_sha256(p)
    if got != sha256.lower():
        label = f"{what} " if what else ""
        advice = fix or "Replace it with the right file."
        raise AssetChecksumError(
            f"{label}file {p} has sha256 {got}, expected {sha256}: it is corrupt, truncated "
            f"or a different version. {advice}"
        )
    return p


# ---------------------------------------------------------------------------------------------
# registry queries


def _lookup(relpath: str) -> Asset:
    key = str(relpath).replace("\\", "/").lstrip("/")
    try:
        return ASSETS[key]
    except KeyError:
        close = difflib.get_close_matches(key, list(ASSETS), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        groups = ", ".join(f"{g} ({len(assets_in_group(g))})" for g in GROUPS)
        raise UnknownAssetError(
            f"{relpath!r} is not a registered ichseg asset.{hint} Registered groups: {groups}; "
            f"list them all with `python -m ichseg.pipeline.assets --list`."
        ) from None


def asset_sha256(relpath: str) -> str:
    """The registered sha256 of an asset (raises :class:`UnknownAssetError` if unknown)."""
    return _lookup(relpath).sha256


def assets_in_group(group: str) -> list[Asset]:
    """Registry entries of a group (``templates``, ``models``, ``atlas``, ``testdata``,
    or the pseudo-groups ``runtime`` and ``all``)."""
    if group in PSEUDO_GROUPS:
        members = PSEUDO_GROUPS[group]
    elif group in GROUPS:
        members = (group,)
    else:
        valid = ", ".join((*GROUPS, *PSEUDO_GROUPS))
        raise ValueError(f"unknown asset group {group!r}; choose one of: {valid}")
    return [a for a in ASSETS.values() if a.group in members]


# ---------------------------------------------------------------------------------------------
# download


def _download(asset: Asset, target: Path) -> Path:
    """Fetch ``asset.url`` into ``target`` with pooch (temporary file, sha256 check, rename);
    return ``target``.

    Raises :class:`AssetChecksumError` on a hash mismatch (nothing left behind) and
    ``OSError`` (requests' errors are ``OSError``) on network failures.
    """
    import pooch

    from ichseg.pipeline import __version__

    assert asset.url is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    downloader = pooch.HTTPDownloader(
        progressbar=False, timeout=DOWNLOAD_TIMEOUT_S, headers={"User-Agent": f"ichseg/{__version__}"}
    )
    pooch.get_logger().setLevel("WARNING")  # ichseg says what it fetches, once
    sys.stderr.write(f"ichseg: downloading {asset.relpath} from {asset.url}\n")
    try:
        path = Path(pooch.retrieve(asset.url, known_hash=f"sha256:{asset.sha256}", fname=target.name,
                                   path=target.parent, downloader=downloader))
    except ValueError as exc:  # pooch: the downloaded file's hash is not the known one
        if "hash" not in str(exc).lower():
            raise
        raise AssetChecksumError(
            f"download of {asset.relpath} from {asset.url} did not have sha256 {asset.sha256}; "
            f"the file was discarded. The server returned different bytes (changed upstream, "
            f"proxy page or truncated transfer): retry, or place the right file in {ENV_DATA_DIR}."
        ) from None
    # pooch's temporary files are 0600; a cache filled at image build time (as root) must stay
    # readable by the user who runs the container.
    os.chmod(path, 0o644)
    sys.stderr.write(f"ichseg: downloaded {asset.relpath} ({path.stat().st_size / 1e6:.1f} MB, sha256 verified)\n")
    return path


def _unwritable(folder: Path) -> str | None:
    """None if ``folder`` can be created and written, else the reason why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {folder} ({exc.strerror or exc})"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable"
    return None


def _describe_network_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} {response.reason}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# lookup


def get_asset(relpath: str, *, download: bool | None = None) -> Path:
    """Local path of a verified asset, downloading it into the cache if needed.

    ``download=None`` downloads unless ``ICHSEG_OFFLINE`` is set; ``True`` always may
    download; ``False`` never does. Raises :class:`UnknownAssetError`,
    :class:`AssetChecksumError` or :class:`AssetNotFoundError`.
    """
    asset = _lookup(relpath)
    tried: list[str] = []

    # 1. explicit data folders. A wrong file here is an error, not a reason to look further:
    #    the user pointed us at it, so silently using another copy would hide the problem.
    dirs = data_dirs()
    for folder in dirs:
        candidate = folder / asset.relpath
        if candidate.is_file():
            return verify_file(
                candidate,
                asset.sha256,
                what=f"{ENV_DATA_DIR} asset",
                fix=f"Replace it with the file from {asset.url or asset.note}, or unset "
                f"{ENV_DATA_DIR} to use the download cache instead.",
            )
        state = "" if folder.is_dir() else " (that folder does not exist)"
        tried.append(f"not in {ENV_DATA_DIR}: {candidate}{state}")
    if not dirs:
        tried.append(f"{ENV_DATA_DIR} is not set")

    # 2. the download cache
    cache = cache_dir()
    cached = cache / asset.relpath
    may_download = (not offline()) if download is None else bool(download)
    if cached.is_file():
        try:
            return verify_file(
                cached,
                asset.sha256,
                what="cached",
                fix="Delete it and fetch it again (`python -m ichseg.pipeline.assets`).",
            )
        except AssetChecksumError:
            if not may_download or asset.url is None:
                raise
            # A bad cache entry (e.g. edited by hand) is replaced by a fresh download below.
            tried.append(f"cached copy {cached} had a wrong sha256; downloading again")
    else:
        tried.append(f"not in the cache: {cached}")

    # 3. download
    if asset.url is None:
        tried.append(f"cannot be downloaded: {asset.note or 'no public URL'}")
    elif not may_download:
        if download is False:
            why = "download=False"
        else:
            why = f"{ENV_OFFLINE}={os.environ.get(ENV_OFFLINE)}"
        tried.append(f"downloading is disabled ({why})")
    elif (why_not := _unwritable(cached.parent)) is not None:
        tried.append(
            f"cannot download into the cache: {why_not}; set {ENV_CACHE_DIR} to a writable folder"
        )
    else:
        try:
            return _download(asset, cached)
        except AssetChecksumError:
            raise
        except OSError as exc:  # requests' errors (HTTP, connection, timeout) are OSErrors
            tried.append(f"download from {asset.url} failed: {_describe_network_error(exc)}")

    raise AssetNotFoundError(_not_found_message(asset, tried))


def _not_found_message(asset: Asset, tried: Sequence[str]) -> str:
    group = asset.group
    what = asset.description or asset.group
    lines = [f"ichseg asset {asset.relpath!r} ({what}) is not available:"]
    lines += [f"  - {t}" for t in tried]
    lines.append(f"  URL: {asset.url or '(none)'}")
    lines.append(f"  sha256: {asset.sha256}")
    lines.append(
        f"To fix: set {ENV_DATA_DIR} to a folder that holds {asset.relpath}, or pre-fetch the "
        f"assets on a machine with internet with `python -m ichseg.pipeline.assets --group "
        f"{group}` and copy its cache folder ({ENV_CACHE_DIR}, default ~/.cache/ichseg) here."
    )
    return "\n".join(lines)


def fetch_assets(group: str = "runtime", *, download: bool | None = True) -> dict[str, Path]:
    """Make every asset of ``group`` available locally; return ``{relpath: path}``.

    Tries all of them first, then raises one :class:`AssetNotFoundError` listing every
    failure, so a pre-fetch run reports all missing files at once.
    """
    found: dict[str, Path] = {}
    failures: list[str] = []
    for asset in assets_in_group(group):
        try:
            found[asset.relpath] = get_asset(asset.relpath, download=download)
        except AssetNotFoundError as exc:
            failures.append(str(exc))
    if failures:
        raise AssetNotFoundError(
            f"{len(failures)} of {len(failures) + len(found)} assets of group {group!r} are "
            f"not available:\n\n" + "\n\n".join(failures)
        )
    return found


def fetch_into(dest: str | os.PathLike, group: str = "runtime") -> dict[str, Path]:
    """Make ``dest`` a complete, verified asset folder for ``ICHSEG_DATA_DIR`` (e.g. a shared
    folder that offline compute nodes read); return ``{relpath: path in dest}``.

    Downloads go straight into ``dest`` (it is used as the cache); assets found in a data
    folder are copied. Every file in ``dest`` is then checked against its sha256.
    """
    from ichseg.pipeline.fileutils import atomic_copy

    dest = Path(dest).expanduser().absolute()
    previous = os.environ.get(ENV_CACHE_DIR)
    os.environ[ENV_CACHE_DIR] = str(dest)
    try:
        found = fetch_assets(group, download=None)
    finally:
        if previous is None:
            os.environ.pop(ENV_CACHE_DIR, None)
        else:
            os.environ[ENV_CACHE_DIR] = previous
    placed = {}
    for relpath, path in found.items():
        target = dest / relpath
        if path.absolute() != target:
            atomic_copy(path, target)
        placed[relpath] = verify_file(target, ASSETS[relpath].sha256, what=f"ichseg asset {relpath}:")
    return placed


def _status(asset: Asset) -> str:
    """Where an asset would be found now, without downloading or hashing."""
    for folder in data_dirs():
        if (folder / asset.relpath).is_file():
            return f"{ENV_DATA_DIR}: {folder / asset.relpath}"
    cached = cache_dir() / asset.relpath
    if cached.is_file():
        return f"cache: {cached}"
    return "missing"


def markdown_table(group: str = "all") -> str:
    """The assets of a group as a Markdown table (relpath, license, sha256, URL), for the docs."""
    rows = [
        "| file | license | sha256 | source |",
        "|---|---|---|---|",
    ]
    for a in assets_in_group(group):
        src = f"[download]({a.url})" if a.url else (a.note or "no public URL")
        rows.append(f"| `{a.relpath}` | {a.license} | `{a.sha256}` | {src} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m ichseg.pipeline.assets [--group G] [--list] [--markdown]``."""
    choices = (*GROUPS, *PSEUDO_GROUPS)
    parser = argparse.ArgumentParser(
        prog="ichseg fetch-assets",
        description=(
            "Download and verify the files ichseg needs (templates, BLAST-CT weights, atlas) "
            f"into the cache ({cache_dir()}). Set {ENV_CACHE_DIR} to choose the cache folder, "
            f"{ENV_DATA_DIR} to use a folder you already have."
        ),
    )
    parser.add_argument(
        "--group",
        choices=choices,
        default="runtime",
        help="which assets: runtime = templates+models+atlas (default), all adds testdata",
    )
    parser.add_argument(
        "--list", action="store_true", help="show the assets and where they are; fetch nothing"
    )
    parser.add_argument(
        "--dest", type=Path, metavar="DIR",
        help=f"put every asset of the group into DIR and verify it (for offline compute nodes: "
             f"{ENV_OFFLINE}=1 {ENV_DATA_DIR}=DIR); default: the download cache",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the assets as a Markdown table"
    )
    args = parser.parse_args(argv)

    if args.markdown:
        print(markdown_table(args.group))
        return 0
    if args.list:
        for a in assets_in_group(args.group):
            print(f"{a.group:9s}  {a.relpath:50s}  {_status(a)}")
            print(f"{'':9s}  sha256 {a.sha256}  {a.url or a.note}")
        return 0
    try:
        found = fetch_into(args.dest, args.group) if args.dest else fetch_assets(args.group, download=None)
    except AssetError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for relpath, path in found.items():
        print(f"ok  {relpath}  {path}")
    if args.dest:
        print(f"All {len(found)} assets verified in {args.dest}. On machines without internet run "
              f"ichseg with {ENV_OFFLINE}=1 {ENV_DATA_DIR}={Path(args.dest).absolute()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
