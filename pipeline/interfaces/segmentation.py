"""Interfaces for CNN inference in template space and mapping results back to the scan."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    TraitedSpec,
    isdefined,
    traits,
)

from ichseg.pipeline.cpu import PRECISIONS
from ichseg.pipeline.geometry import ants_affine_to_ras
from ichseg.pipeline.interfaces.base import NodeInterface, read_image, read_mask
from ichseg.pipeline.location import class_zones, read_region_names
from ichseg.pipeline.segmentation import (
    DEFAULT_GRID_SHIFTS,
    DEFAULT_HEMORRHAGE_SEED,
    DEFAULT_HEMORRHAGE_THRESHOLD,
    DEFAULT_MARGIN_MM,
    GRID_SHIFTS,
    probabilities_to_scan,
    segment_template_space,
)

LOGGER = logging.getLogger("nipype.interface")


def _hemorrhage_threshold_trait():
    """The labelling rule, an input of both the segmentation and the mapping back to the scan."""
    return traits.Either(
        None, traits.Range(0.0, 1.0), default=DEFAULT_HEMORRHAGE_THRESHOLD, usedefault=True,
        desc="total hemorrhage probability from which a voxel is blood (None: arg-max)")


def _hemorrhage_seed_trait():
    """The labelling's hysteresis, beside the threshold."""
    return traits.Either(
        None, traits.Range(0.0, 1.0), default=DEFAULT_HEMORRHAGE_SEED, usedefault=True,
        desc="a region of blood is kept only where it reaches this total hemorrhage probability (None: all)")


class _SegmentInputSpec(BaseInterfaceInputSpec):
    template_ct = File(exists=True, mandatory=True, desc="CT in HU on the 1 mm template grid")
    template_brain_mask = File(exists=True, mandatory=True, desc="brain mask on the template grid")
    model = traits.Str("blastct-v1", usedefault=True, desc="registered model name or weights path")
    device = traits.Str("cpu", usedefault=True, desc="torch device (cpu, cuda, cuda:1, ...)")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads for torch")
    margin_mm = traits.Float(DEFAULT_MARGIN_MM, usedefault=True, desc="margin around the brain that is segmented")
    network_input = traits.Enum("head", "brain", usedefault=True, desc="what the network sees")
    precision = traits.Enum(*PRECISIONS, usedefault=True,
                            desc="network precision (auto: fp32; see ichseg.pipeline.cpu.resolve_precision)")
    hemorrhage_threshold = _hemorrhage_threshold_trait()
    hemorrhage_seed = _hemorrhage_seed_trait()
    grid_shifts = traits.Range(1, len(GRID_SHIFTS), value=DEFAULT_GRID_SHIFTS, usedefault=True,
                               desc="moves of the CT over which the network is averaged (each about 0.7 of another run)")


class _SegmentOutputSpec(TraitedSpec):
    probabilities = File(exists=True, desc="class probabilities (x, y, z, class) over the ROI box")
    template_dseg = File(exists=True, desc="label map on the template grid")
    model_info = File(exists=True, desc="JSON: model name, weights and their sha256")
    qc = traits.Dict(desc="segmentation QC measures (see ichseg.pipeline.qc)")


class SegmentHemorrhage(NodeInterface):
    """Run the (ensemble of) DeepMedic network(s) on the template-space CT.

    Calls :func:`ichseg.pipeline.segmentation.segment_template_space`. The class probabilities
    cover only the box around the brain and its margin (their own affine), which keeps the
    file that the next node reads small.
    """

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        hu, ct_img = read_image(self.inputs.template_ct, np.float32)
        result = segment_template_space(
            hu, read_mask(self.inputs.template_brain_mask), ct_img.affine, self.inputs.model,
            self.inputs.device, self.inputs.precision,
            self.inputs.num_threads, self.inputs.network_input, self.inputs.margin_mm,
            self.inputs.hemorrhage_threshold, LOGGER.info, hemorrhage_seed=self.inputs.hemorrhage_seed,
            grid_shifts=self.inputs.grid_shifts,
        )
        self._results["qc"] = result.qc
        self._write_image(runtime, "probabilities", "probabilities_space-template.nii",
                          np.moveaxis(result.probabilities, 0, -1), ct_img, affine=result.box_affine)
        self._write_image(runtime, "template_dseg", "dseg_space-template.nii", result.labels, ct_img)
        self._write_json(runtime, "model_info", "model_info.json", result.info)
        return runtime


class _ToScanInputSpec(BaseInterfaceInputSpec):
    probabilities = File(exists=True, mandatory=True, desc="template-space class probabilities")
    transform = File(exists=True, mandatory=True, desc="ANTs affine (template -> scan points)")
    source_file = File(exists=True, mandatory=True, desc="the original CT, whose grid is the target")
    hemorrhage_threshold = _hemorrhage_threshold_trait()
    hemorrhage_seed = _hemorrhage_seed_trait()
    # None by default here, as they need the atlas inputs; the workflow passes the settings'.
    ivh_margin_mm = traits.Either(
        None, traits.Range(0.0, None), default=None, usedefault=True,
        desc="IVH only in regions within this many mm of the atlas's ventricles (None: anywhere)")
    eah_margin_mm = traits.Either(
        None, traits.Range(0.0, None), default=None, usedefault=True,
        desc="EAH only in regions within this many mm of the intracranial surface, falx or tentorium "
             "(None: anywhere)")
    atlas = File(exists=True, desc="the region atlas in template space (with a margin)")
    atlas_labels = File(exists=True, desc="its label table (ROIIndex,ROIName)")
    atlas_transform = File(exists=True, desc="ANTs affine (template -> scan points) for the atlas")
    brain_mask = File(exists=True, desc="intracranial mask on the scan's grid (with eah_margin_mm)")


class _ToScanOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="label map on the original CT grid (uint8)")
    hemorrhage_probseg = File(exists=True, desc="P(IPH) + P(EAH) + P(IVH) on the original CT grid")


class ProbabilitiesToScan(NodeInterface):
    """Map class probabilities back to the scan's own grid, then label it (:func:`label_map`;
    with ``ivh_margin_mm`` and ``eah_margin_mm``, ventricular and extra-axial blood only where
    they can lie, :func:`~ichseg.pipeline.location.class_zones`)."""

    input_spec = _ToScanInputSpec
    output_spec = _ToScanOutputSpec

    def _run_interface(self, runtime):
        probabilities, prob_img = read_image(self.inputs.probabilities, np.float32)
        source = nib.load(self.inputs.source_file)
        zones = None
        if self.inputs.ivh_margin_mm is not None or self.inputs.eah_margin_mm is not None:
            def zones(near):  # reads the atlas and masks only for a scan that needs them
                return class_zones(
                    nib.load(self.inputs.atlas), read_region_names(self.inputs.atlas_labels), source.shape[:3],
                    source.affine, ants_affine_to_ras(self.inputs.atlas_transform), self.inputs.ivh_margin_mm,
                    self.inputs.eah_margin_mm,
                    read_mask(self.inputs.brain_mask) if isdefined(self.inputs.brain_mask) else None,
                    near=near)
        labels, hemorrhage = probabilities_to_scan(
            np.moveaxis(probabilities, -1, 0), prob_img.affine, source.shape[:3], source.affine,
            ants_affine_to_ras(self.inputs.transform), self.inputs.hemorrhage_threshold,
            hemorrhage_seed=self.inputs.hemorrhage_seed, class_zones=zones,
        )
        self._write_image(runtime, "dseg", "dseg.nii", labels, source)
        self._write_image(runtime, "hemorrhage_probseg", "hemorrhage_probseg.nii", hemorrhage, source)
        return runtime
