"""Python API: segment one head CT without Nipype, in the spirit of TotalSegmentator.

>>> import ichseg
>>> result = ichseg.segment("sub-01_ct.nii.gz")                      # doctest: +SKIP
>>> result.volumes["hemorrhage_ml"], result.dseg.shape                # doctest: +SKIP

The steps are the same functions the Nipype interfaces call, in the same order and with the
same settings, so the result equals the BIDS-App's derivatives of that scan.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pandas as pd

from ichseg.pipeline import assets
from ichseg.pipeline.brain import extract_brain
from ichseg.pipeline.cpu import usable_cpus
from ichseg.pipeline.geometry import voxel_sizes
from ichseg.pipeline.image import conform_ct, to_source_orientation
from ichseg.pipeline.location import class_zones, locate_on_scan, read_region_names
from ichseg.pipeline.niftiio import image_like, save_like
from ichseg.pipeline.registration import to_template_space
from ichseg.pipeline.segmentation import probabilities_to_scan, segment_template_space
from ichseg.pipeline.settings import MethodSettings
from ichseg.pipeline.tsv import write_tsv
from ichseg.pipeline.volumes import volume_row, volume_sidecar

__all__ = ["Segmentation", "segment"]


@dataclass
class Segmentation:
    """What :func:`segment` returns. Images lie on the input CT's own grid."""

    dseg: nib.Nifti1Image  # label map (0 background, 1 IPH, 2 EAH, 3 oedema, 4 IVH)
    hemorrhage_probseg: nib.Nifti1Image  # P(IPH) + P(EAH) + P(IVH)
    brain_mask: nib.Nifti1Image
    volumes: dict[str, Any]  # the row of the _volumes.tsv: mL, ABC/2, location, QC
    regions: pd.DataFrame  # IPH and total hemorrhage (mL) per atlas region
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # the _volumes.json sidecar

    def save(self, folder: str | os.PathLike, prefix: str = "ct") -> dict[str, Path]:
        """Write the images (NIfTI) and tables (TSV) into ``folder``; return their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / f"{prefix}_{name}.nii.gz" for name in ("dseg", "hemorrhage_probseg", "brain_mask")}
        for name, path in paths.items():
            nib.save(getattr(self, name), path)
        paths["volumes"] = folder / f"{prefix}_volumes.tsv"
        write_tsv(pd.DataFrame([self.volumes]), paths["volumes"])
        paths["regions"] = folder / f"{prefix}_regions.tsv"
        write_tsv(self.regions, paths["regions"])
        return paths


def segment(
    ct: str | os.PathLike | nib.Nifti1Image,
    settings: MethodSettings | None = None,
    *,
    sidecar: dict | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Segmentation:
    """Segment intracranial hemorrhage on one head CT and measure it.

    Parameters
    ----------
    ct : path or nibabel image
        A head CT in Hounsfield units (NIfTI). Bad input raises
        :class:`ichseg.pipeline.checks.InputImageError` with a message that says what to fix.
    settings : MethodSettings
        How to process it (default: the command line's defaults, with up to 8 threads).
    **options
        Fields of :class:`~ichseg.pipeline.settings.MethodSettings` to change, e.g.
        ``model="blastct-v1-ensemble"``, ``device="cuda"``, ``hemorrhage_threshold=None``
        (arg-max), ``omp_nthreads=4``.
    sidecar : dict
        The CT's BIDS JSON metadata, checked for localizer and contrast series.
    log : callable
        Receives progress messages (e.g. ``print``).

    Returns
    -------
    Segmentation
        Label map, hemorrhage probability and brain mask on the CT's grid, the volume row,
        the regions table, the input warnings and the provenance.
    """
    settings = replace(settings or MethodSettings(omp_nthreads=min(8, usable_cpus())), **options)
    template_img = nib.load(assets.get_asset(assets.TEMPLATE_CT))
    template_mask = np.asanyarray(nib.load(assets.get_asset(assets.TEMPLATE_MASK)).dataobj) > 0.5
    atlas = nib.load(assets.get_asset(assets.ATLAS))
    region_names = read_region_names(assets.get_asset(assets.ATLAS_LABELS))
    say = log or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="ichseg-") as tmp:
        in_memory = isinstance(ct, nib.spatialimages.SpatialImage)
        if in_memory:
            source_file = os.path.join(tmp, "ct.nii")
            nib.save(ct, source_file)
        else:
            source_file = str(ct)
        conformed_file = os.path.join(tmp, "ct_conformed.nii")
        checked = conform_ct(source_file, conformed_file, sidecar)
        conformed = nib.load(conformed_file)
        hu = np.asanyarray(conformed.dataobj, dtype=np.float32)
        say("brain extraction")
        brain = extract_brain(hu, voxel_sizes(conformed.affine))
        if not brain.any():
            raise RuntimeError(f"{source_file}: brain extraction found no intracranial tissue "
                               "(-10..120 HU inside the skull); check that the file is a head CT in HU.")
        say("registration to the CT template")
        space = to_template_space(hu, conformed.affine, brain, template_img, template_mask,
                                  os.path.join(tmp, "template_to_ct.mat"), settings.ants_transform)
        say("segmentation")
        template_ct = space.ct.astype(np.float32)
        result = segment_template_space(
            template_ct, space.brain_mask, template_img.affine, settings.model, settings.device,
            settings.precision, settings.omp_nthreads, settings.network_input, settings.margin_mm,
            settings.hemorrhage_threshold, log, hemorrhage_seed=settings.hemorrhage_seed,
            grid_shifts=settings.grid_shifts)
        source = nib.load(source_file)
        # Through a file, as between the workflow's steps: the box's affine as NIfTI stores it.
        stored = nib.load(save_like(np.moveaxis(result.probabilities, 0, -1), template_img,
                                    os.path.join(tmp, "probabilities.nii"), affine=result.box_affine))
        mask = to_source_orientation(brain.astype(np.uint8), conformed.affine, source)
        zones = partial(class_zones, atlas, region_names, source.shape[:3], source.affine,
                        space.atlas.atlas_to_scan, settings.ivh_margin_mm, settings.eah_margin_mm, mask > 0)
        labels, hemorrhage = probabilities_to_scan(
            np.moveaxis(np.asanyarray(stored.dataobj, dtype=np.float32), -1, 0), stored.affine,
            source.shape[:3], source.affine, space.template_to_scan, settings.hemorrhage_threshold,
            hemorrhage_seed=settings.hemorrhage_seed, class_zones=zones)
        rows, location = locate_on_scan(labels, source.affine, space.atlas.atlas_to_scan, atlas, region_names)
        qc = {**space.qc, **result.qc, **checked.measures}
        warnings = list(checked.warnings)
        row, _ = volume_row(labels, source.affine, mask > 0, qc, warnings, location)
        metadata = volume_sidecar("<image>" if in_memory else source_file,
                                  result.info, warnings,
                                  settings.sidecar_metadata())
        return Segmentation(
            dseg=image_like(labels, source), hemorrhage_probseg=image_like(hemorrhage, source),
            brain_mask=image_like(mask, source), volumes=row, regions=pd.DataFrame(rows),
            warnings=warnings, metadata=metadata,
        )
