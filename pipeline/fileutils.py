"""Atomic file writing: the one place where ichseg writes a derivative to its final name.

Every output is first written under a hidden temporary name in the destination folder and
then renamed with :func:`os.replace`, which is atomic on POSIX file systems as long as both
names are in the same folder. A crash, a full disk or a killed job therefore never leaves a
half-written file under a derivative name: either the old file or the complete new one is
there, and readers (the group level, a second participant-level run, a user) never see a
truncated image or table.

Temporary names look like ``.sub-01_dseg.tmp-<pid>-<random>.nii.gz``: the leading dot keeps
them out of pybids and BIDS-validator listings, the pid and random part keep concurrent
writers apart, and the original extension is kept so that writers that pick the format
from the name (nibabel: ``.nii.gz`` means gzip) write the right format.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_copy", "atomic_output", "atomic_write_text", "split_extension"]

# Compression suffixes that belong to the extension together with the suffix before them
# (``.nii.gz``, ``.tar.gz``): the temporary name must keep both.
_COMPRESSION_SUFFIXES = frozenset({".gz", ".bz2", ".xz", ".zst"})


def split_extension(name: str) -> tuple[str, str]:
    """Split a file name into stem and extension, keeping ``.nii.gz``-style extensions whole.

    >>> split_extension("sub-01_dseg.nii.gz")
    ('sub-01_dseg', '.nii.gz')
    >>> split_extension("group_volumes.tsv")
    ('group_volumes', '.tsv')
    >>> split_extension("README")
    ('README', '')
    """
    path = Path(name)
    suffixes = path.suffixes
    if not suffixes:
        return name, ""
    ext = suffixes[-1]
    if ext in _COMPRESSION_SUFFIXES and len(suffixes) > 1:
        ext = suffixes[-2] + ext
    return name[: -len(ext)], ext


def _reserve_temporary(path: Path) -> Path:
    """Create an empty, uniquely named temporary file next to ``path`` and return its name."""
    stem, ext = split_extension(path.name)
    while True:
        tmp = path.with_name(f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")
        try:
            # O_EXCL makes the name ours even if another process picks the same random part;
            # mode 0o666 lets the umask decide permissions, as for any ordinary file
            # (tempfile.mkstemp would leave every derivative readable by its owner only).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _fsync(path: Path) -> None:
    """Flush a file's content to disk so the rename never exposes an empty file after a crash."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; move it to ``path`` when the block succeeds.

    The parent folder of ``path`` is created if needed. The temporary file exists (empty)
    when the block starts, and any writer may overwrite it. If the block raises (including
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_output(out_dir / "sub-01_dseg.nii.gz") as tmp:  # doctest: +SKIP
    ...     nb.save(img, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _reserve_temporary(final)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation) and return the path."""
    final = Path(path)
    with atomic_output(final) as tmp:
        tmp.write_bytes(text.encode(encoding))
    return final


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the bytes of ``src`` to ``dst`` atomically and return ``dst``.

    Only the content is copied, not permissions or timestamps: an input in a read-only
    dataset must not produce a read-only derivative that a rerun could not replace.
    """
    source, final = Path(src), Path(dst)
    if not source.is_file():
        raise FileNotFoundError(f"Cannot copy {source}: it does not exist or is not a file.")
    with atomic_output(final) as tmp:
        shutil.copyfile(source, tmp)
    return final


def atomic_gzip(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the bytes of ``src`` gzip-compressed to ``dst`` atomically and return ``dst``.

    The gzip header carries no time or name, so the same input gives the same bytes. Level 1,
    as nibabel writes ``.nii.gz``: CT volumes compress little better at higher levels, and
    several times slower.
    """
    source, final = Path(src), Path(dst)
    if not source.is_file():
        raise FileNotFoundError(f"Cannot compress {source}: it does not exist or is not a file.")
    with atomic_output(final) as tmp, open(source, "rb") as fin, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
    return final


#: Names :func:`atomic_output` gives its temporary files (``.<stem>.tmp-<pid>-<hex><ext>``).
_TEMPORARY_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp-\d+-[0-9a-f]{8}(?P<ext>.*)$")


def remove_stale_temporaries(
    root: str | os.PathLike, owned: Callable[[str], bool] | None = None
) -> list[Path]:
    """Delete temporary files that a killed run left under ``root``; return what was removed.

    ``owned(final_name)`` picks the temporaries to remove by the name they were to get (for
    example, those of the scans this process holds the lock of); without it all are removed,
    which is only safe when no other process writes into ``root``.
    """
    removed = []
    for path in Path(root).rglob(".*.tmp-*"):
        match = _TEMPORARY_NAME.match(path.name)
        if not (match and path.is_file()):
            continue
        if owned is not None and not owned(match["stem"] + match["ext"]):
            continue
        path.unlink()
        removed.append(path)
    return removed
