"""ichseg: intracranial hemorrhage segmentation and volumes on non-contrast head CT.

Python API (no Nipype, no BIDS dataset needed)::

    import ichseg
    result = ichseg.segment("head_ct.nii.gz", model="blastct-v1", device="cpu")
    result.volumes["hemorrhage_ml"]     # the row of the BIDS-App's _volumes.tsv
    result.dseg                          # label map on the CT's grid (nibabel image)

The BIDS-App is ``ichseg BIDS_DIR OUTPUT_DIR participant`` (:mod:`ichseg.bids_app`); the
steps, interfaces and workflows are in :mod:`ichseg.pipeline`.
"""

from __future__ import annotations

from ichseg.pipeline import __version__

__all__ = ["MethodSettings", "Segmentation", "__version__", "segment"]


def __getattr__(name: str):
    # Imported on first use: `import ichseg` (and the command line) stays fast.
    if name in ("segment", "Segmentation"):
        from ichseg.pipeline import api

        return getattr(api, name)
    if name == "MethodSettings":
        from ichseg.pipeline.settings import MethodSettings

        return MethodSettings
    raise AttributeError(f"module 'ichseg' has no attribute {name!r}")
