"""Interface that tabulates class volumes in the scan's own space."""

from __future__ import annotations

import json

import nibabel as nib
from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ichseg.pipeline.geometry import ants_affine_to_ras
from ichseg.pipeline.interfaces.base import NodeInterface, read_image, read_mask
from ichseg.pipeline.location import locate_on_scan, read_region_names
from ichseg.pipeline.volumes import volume_row, volume_sidecar


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
    row = traits.Dict(desc="the table's row, for the report")
    metadata = traits.Dict(desc="the sidecar's content, for the report")


class TabulateVolumes(NodeInterface):
    """Volumes (mL) per class, total hemorrhage and brain, with their provenance.

    Calls :func:`ichseg.pipeline.volumes.volume_row` and
    :func:`~ichseg.pipeline.volumes.volume_sidecar`; the row and the sidecar are also
    outputs as values, so that the report does not read back the files just written.
    """

    input_spec = _TabulateInputSpec
    output_spec = _TabulateOutputSpec

    def _run_interface(self, runtime):
        labels, dseg = read_image(self.inputs.dseg)
        row, _ = volume_row(labels, dseg.affine, read_mask(self.inputs.brain_mask), self.inputs.qc,
                            self.inputs.warnings, self.inputs.location)
        self._results["row"] = row
        self._write_table(runtime, "out_tsv", "volumes.tsv", [row])
        with open(self.inputs.model_info) as fobj:
            model_info = json.load(fobj)
        sidecar = volume_sidecar(self.inputs.source_file, model_info, self.inputs.warnings,
                                 self.inputs.extra_metadata or None)
        self._results["metadata"] = sidecar
        self._write_json(runtime, "out_json", "volumes.json", sidecar)
        return runtime


class _LocateInputSpec(BaseInterfaceInputSpec):
    dseg = File(exists=True, mandatory=True, desc="label map on the original CT grid")
    transform = File(exists=True, mandatory=True, desc="ANTs affine (template -> scan points)")
    atlas = File(exists=True, mandatory=True, desc="region atlas in the template's world space")
    atlas_labels = File(exists=True, mandatory=True, desc="ROIIndex,ROIName table of the atlas")


class _LocateOutputSpec(TraitedSpec):
    regions_tsv = File(exists=True, desc="IPH and total hemorrhage (mL) per atlas region")
    location = traits.Dict(desc="summary columns: lobar_ml, deep_ml, ..., location, side")


class LocateHemorrhage(NodeInterface):
    """Map the atlas onto the scan through the inverse registration; volumes per region."""

    input_spec = _LocateInputSpec
    output_spec = _LocateOutputSpec

    def _run_interface(self, runtime):
        labels, dseg = read_image(self.inputs.dseg)
        rows, summary = locate_on_scan(labels, dseg.affine, ants_affine_to_ras(self.inputs.transform),
                                       nib.load(self.inputs.atlas), read_region_names(self.inputs.atlas_labels))
        self._write_table(runtime, "regions_tsv", "regions.tsv", rows)
        self._results["location"] = summary
        return runtime
