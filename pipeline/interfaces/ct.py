"""Interfaces for loading/conforming a CT and extracting the brain."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ichseg.pipeline.brain import extract_brain
from ichseg.pipeline.geometry import voxel_sizes
from ichseg.pipeline.image import conform_ct, to_source_orientation
from ichseg.pipeline.interfaces.base import NodeInterface, read_image


class _ConformCTInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="head CT in HU (NIfTI)")
    sidecar = traits.Dict(desc="the CT's BIDS JSON sidecar (localizer/contrast checks)")


class _ConformCTOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="checked CT, float32, closest-RAS voxel axes")
    warnings = traits.List(traits.Str, desc="input problems that do not stop processing")
    qc = traits.Dict(desc="input measures for the QC columns (head_coverage_mm)")


class ConformCT(NodeInterface):
    """Check a head CT (errors stop the scan, warnings are kept) and reorient it to RAS axes."""

    input_spec = _ConformCTInputSpec
    output_spec = _ConformCTOutputSpec

    def _run_interface(self, runtime):
        out_file = self._output_path(runtime, "out_file", "ct_conformed.nii")
        checked = conform_ct(self.inputs.in_file, out_file, self.inputs.sidecar or None)
        self._results["warnings"] = list(checked.warnings)
        self._results["qc"] = dict(checked.measures)
        return runtime


class ConformedCTInputSpec(BaseInterfaceInputSpec):
    """The input of the steps that read the conformed CT."""

    in_file = File(exists=True, mandatory=True, desc="conformed CT in HU")


class _BrainExtractionOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="intracranial mask on the conformed grid (uint8)")


class BrainExtraction(NodeInterface):
    """CT brain (intracranial) extraction with thresholds and morphology.

    Calls :func:`ichseg.pipeline.brain.extract_brain`. An empty mask stops the scan with an
    error that names the file: every later step needs the brain.
    """

    input_spec = ConformedCTInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        hu, img = read_image(self.inputs.in_file, np.float32)
        mask = extract_brain(hu, voxel_sizes(img.affine))
        if not mask.any():
            raise RuntimeError(
                f"{self.inputs.in_file}: brain extraction found no intracranial tissue "
                "(-10..120 HU inside the skull); check that the file is a head CT in HU."
            )
        self._write_image(runtime, "out_mask", "brain_mask.nii.gz", mask.astype(np.uint8), img)
        return runtime


class _ToSourceGridInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image on the conformed (reoriented) grid")
    source_file = File(exists=True, mandatory=True, desc="the original CT")


class _ToSourceGridOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same voxels on the original CT's grid")


class ToSourceGrid(NodeInterface):
    """Undo the conforming reorientation (exact: axis flips and permutations only)."""

    input_spec = _ToSourceGridInputSpec
    output_spec = _ToSourceGridOutputSpec

    def _run_interface(self, runtime):
        data, img = read_image(self.inputs.in_file)
        source = nib.load(self.inputs.source_file)
        name = os.path.basename(self.inputs.in_file).replace(".nii.gz", "_source.nii.gz")
        self._write_image(runtime, "out_file", name, to_source_orientation(data, img.affine, source), source)
        return runtime
