"""Interface that tabulates class volumes in the scan's own space."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ichseg.pipeline.labels import (
    BRAIN_VOLUME_COLUMN,
    IPH_INDEX,
    VOLUME_COLUMNS,
    volume_column_descriptions,
)
from ichseg.pipeline.location import (
    LOCATION_COLUMNS,
    locate,
    read_region_names,
    side_map,
)
from ichseg.pipeline.provenance import software_versions
from ichseg.pipeline.qc import qc_column_descriptions, qc_columns
from ichseg.pipeline.volumes import ABC2_COLUMNS, abc2_ml, label_volumes_ml


class _TabulateInputSpec(BaseInterfaceInputSpec):
    dseg = File(exists=True, mandatory=True, desc="label map on the original CT grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the original CT grid")
    model_info = File(exists=True, mandatory=True, desc="JSON written by SegmentHemorrhage")
    source_file = traits.Str(mandatory=True, desc="the input CT (recorded in the sidecar)")
    extra_metadata = traits.Dict(desc="further provenance to record (e.g. registration settings)")
    qc = traits.Dict(desc="QC measures (registration, segmentation) to tabulate and flag")
    warnings = traits.List(traits.Str, desc="input warnings of this scan")
    location = traits.Dict(desc="location summary columns (LocateHemorrhage)")


class _TabulateOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="one-row table of volumes (mL)")
    out_json = File(exists=True, desc="sidecar: column descriptions, model, weights, versions")
    volumes = traits.Dict(desc="the volumes as a dict")


class TabulateVolumes(SimpleInterface):
    """Volumes (mL) per class, total hemorrhage and brain, with their provenance."""

    input_spec = _TabulateInputSpec
    output_spec = _TabulateOutputSpec

    def _run_interface(self, runtime):
        dseg = nib.load(self.inputs.dseg)
        mask = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
        labels = np.asanyarray(dseg.dataobj)
        volumes = label_volumes_ml(labels, dseg.affine, mask)
        row = {column: round(volumes[column], 4) for column in VOLUME_COLUMNS}
        row["status"] = "ok"
        abc2 = abc2_ml(labels == IPH_INDEX, dseg.affine)
        row["iph_abc2_ml"] = round(abc2["abc2_ml"], 4)
        row["iph_abc2_unweighted_ml"] = round(abc2["abc2_unweighted_ml"], 4)
        qc = dict(self.inputs.qc or {})
        row.update(self.inputs.location or {})
        row.update({key: round(float(value), 4) for key, value in sorted(qc.items())})
        row.update(qc_columns(volumes[BRAIN_VOLUME_COLUMN], qc, list(self.inputs.warnings or [])))
        self._results["volumes"] = volumes
        self._results["out_tsv"] = os.path.join(runtime.cwd, "volumes.tsv")
        pd.DataFrame([row]).to_csv(self._results["out_tsv"], sep="\t", index=False, na_rep="n/a")
        with open(self.inputs.model_info) as fobj:
            model_info = json.load(fobj)
        sidecar = volume_column_descriptions()
        sidecar["status"] = {"Description": "Processing status of the scan", "Levels": {"ok": "processed"}}
        sidecar.update(ABC2_COLUMNS)
        sidecar.update(LOCATION_COLUMNS)
        sidecar.update(qc_column_descriptions())
        sidecar["Sources"] = [str(self.inputs.source_file)]
        sidecar["Warnings"] = list(self.inputs.warnings or [])
        sidecar["Model"] = model_info
        sidecar["SoftwareVersions"] = software_versions()
        if self.inputs.extra_metadata:
            sidecar.update(self.inputs.extra_metadata)
        self._results["out_json"] = os.path.join(runtime.cwd, "volumes.json")
        with open(self._results["out_json"], "w") as fobj:
            json.dump(sidecar, fobj, indent=2, default=str)
        return runtime


class _LocateInputSpec(BaseInterfaceInputSpec):
    dseg = File(exists=True, mandatory=True, desc="label map on the original CT grid")
    transform = File(exists=True, mandatory=True, desc="ANTs affine (template -> scan points)")
    atlas = File(exists=True, mandatory=True, desc="region atlas in the template's world space")
    atlas_labels = File(exists=True, mandatory=True, desc="ROIIndex,ROIName table of the atlas")


class _LocateOutputSpec(TraitedSpec):
    regions_tsv = File(exists=True, desc="IPH and total hemorrhage (mL) per atlas region")
    location = traits.Dict(desc="summary columns: lobar_ml, deep_ml, ..., location, side")


class LocateHemorrhage(SimpleInterface):
    """Map the atlas onto the scan through the inverse registration; volumes per region."""

    input_spec = _LocateInputSpec
    output_spec = _LocateOutputSpec

    def _run_interface(self, runtime):
        from ichseg.pipeline.geometry import ants_affine_to_ras, voxel_volume_ml
        from ichseg.pipeline.registration import warp_to_scan

        dseg = nib.load(self.inputs.dseg)
        atlas = nib.load(self.inputs.atlas)
        channels = np.stack([np.asanyarray(atlas.dataobj, dtype=np.float32),
                             side_map(atlas.shape[:3], atlas.affine).astype(np.float32)])
        regions, sides = warp_to_scan(channels, atlas.affine, dseg.shape[:3], dseg.affine,
                                      ants_affine_to_ras(self.inputs.transform), order=0)
        rows, summary = locate(np.asanyarray(dseg.dataobj), regions, sides, voxel_volume_ml(dseg.affine),
                               read_region_names(self.inputs.atlas_labels))
        self._results["regions_tsv"] = os.path.join(runtime.cwd, "regions.tsv")
        pd.DataFrame(rows).to_csv(self._results["regions_tsv"], sep="\t", index=False, na_rep="n/a")
        self._results["location"] = summary
        return runtime
