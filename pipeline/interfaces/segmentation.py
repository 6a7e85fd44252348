"""Interfaces for CNN inference in template space and mapping results back to the scan."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ichseg.pipeline.cpu import PRECISIONS
from ichseg.pipeline.geometry import ants_affine_to_ras, voxel_volume_ml
from ichseg.pipeline.labels import HEMORRHAGE_INDICES
from ichseg.pipeline.niftiio import save_like
from ichseg.pipeline.qc import segmentation_qc
from ichseg.pipeline.registration import warp_to_scan
from ichseg.pipeline.segmentation import (
    DEFAULT_HEMORRHAGE_THRESHOLD,
    DEFAULT_MARGIN_MM,
    crop_to_roi,
    label_map,
    region_of_interest,
    run_model,
)

LOGGER = logging.getLogger("nipype.interface")


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
    hemorrhage_threshold = traits.Either(
        None, traits.Range(0.0, 1.0), default=DEFAULT_HEMORRHAGE_THRESHOLD, usedefault=True,
        desc="total hemorrhage probability from which a voxel is blood (None: arg-max)")


class _SegmentOutputSpec(TraitedSpec):
    probabilities = File(exists=True, desc="class probabilities (x, y, z, class) over the ROI box")
    template_dseg = File(exists=True, desc="label map on the template grid")
    model_info = File(exists=True, desc="JSON: model name, weights and their sha256")
    qc = traits.Dict(desc="segmentation QC measures (see ichseg.pipeline.qc)")


class SegmentHemorrhage(SimpleInterface):
    """Run the (ensemble of) DeepMedic network(s) on the template-space CT."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        ct_img = nib.load(self.inputs.template_ct)
        hu = np.asanyarray(ct_img.dataobj, dtype=np.float32)
        brain = np.asanyarray(nib.load(self.inputs.template_brain_mask).dataobj) > 0
        roi = region_of_interest(brain, ct_img.affine, self.inputs.margin_mm)
        if self.inputs.network_input == "brain":
            hu = np.where(brain, hu, 0.0).astype(np.float32)
        probs, info = run_model(
            hu, roi, self.inputs.model, self.inputs.device, LOGGER.info,
            precision=self.inputs.precision, num_threads=self.inputs.num_threads,
        )

        labels = label_map(probs, self.inputs.hemorrhage_threshold)
        self._results["qc"] = segmentation_qc(probs, labels, brain, roi, voxel_volume_ml(ct_img.affine))
        box_probs, box_affine = crop_to_roi(probs, roi, ct_img.affine)
        self._results["probabilities"] = os.path.join(runtime.cwd, "probabilities_space-template.nii")
        # uncompressed: a 5-class float map is large and is read back at once by the next node
        save_like(np.moveaxis(box_probs, 0, -1), ct_img, self._results["probabilities"], affine=box_affine)
        self._results["template_dseg"] = os.path.join(runtime.cwd, "dseg_space-template.nii")
        save_like(labels, ct_img, self._results["template_dseg"])
        self._results["model_info"] = os.path.join(runtime.cwd, "model_info.json")
        info.update(network_input=self.inputs.network_input, margin_mm=self.inputs.margin_mm,
                    device=self.inputs.device, hemorrhage_threshold=self.inputs.hemorrhage_threshold)
        with open(self._results["model_info"], "w") as fobj:
            json.dump(info, fobj, indent=2)
        return runtime


class _ToScanInputSpec(BaseInterfaceInputSpec):
    probabilities = File(exists=True, mandatory=True, desc="template-space class probabilities")
    transform = File(exists=True, mandatory=True, desc="ANTs affine (template -> scan points)")
    source_file = File(exists=True, mandatory=True, desc="the original CT, whose grid is the target")
    hemorrhage_threshold = traits.Either(
        None, traits.Range(0.0, 1.0), default=DEFAULT_HEMORRHAGE_THRESHOLD, usedefault=True,
        desc="total hemorrhage probability from which a voxel is blood (None: arg-max)")


class _ToScanOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="label map on the original CT grid (uint8)")
    hemorrhage_probseg = File(exists=True, desc="P(IPH) + P(EAH) + P(IVH) on the original CT grid")


class ProbabilitiesToScan(SimpleInterface):
    """Map class probabilities back to the scan's own grid, then label it (:func:`label_map`)."""

    input_spec = _ToScanInputSpec
    output_spec = _ToScanOutputSpec

    def _run_interface(self, runtime):
        prob_img = nib.load(self.inputs.probabilities)
        probs = np.moveaxis(np.asanyarray(prob_img.dataobj, dtype=np.float32), -1, 0)
        source = nib.load(self.inputs.source_file)
        template_to_scan = ants_affine_to_ras(self.inputs.transform)
        scan_probs = warp_to_scan(probs, prob_img.affine, source.shape[:3], source.affine, template_to_scan)
        # Outside the segmented box every class but background has probability 0, and
        # background 1; linear interpolation is linear, so adding the missing mass to the
        # background channel equals warping with those per-class fill values.
        scan_probs[0] += np.clip(1.0 - scan_probs.sum(axis=0), 0.0, 1.0)
        labels = label_map(scan_probs, self.inputs.hemorrhage_threshold)
        hemorrhage = scan_probs[list(HEMORRHAGE_INDICES)].sum(axis=0)
        # uncompressed: the next steps read them at once; the derivative sinks compress
        self._results["dseg"] = os.path.join(runtime.cwd, "dseg.nii")
        self._results["hemorrhage_probseg"] = os.path.join(runtime.cwd, "hemorrhage_probseg.nii")
        save_like(labels, source, self._results["dseg"])
        save_like(np.clip(hemorrhage, 0, 1).astype(np.float32), source, self._results["hemorrhage_probseg"])
        return runtime
