"""Software versions recorded with every result, so a volume can be traced to its code."""

from __future__ import annotations

from importlib import metadata

from ichseg.pipeline import __version__

#: Distributions whose versions change results or their interpretation.
_DISTRIBUTIONS = ("torch", "antspyx", "blast-ct", "nipype", "nibabel", "numpy", "scipy", "pybids")


def software_versions() -> dict[str, str]:
    """Versions of ichseg and of the libraries that compute its results."""
    versions = {"ichseg": __version__}
    for name in _DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
