"""Interface for ANTs registration of the CT brain to the CT template."""

from __future__ import annotations

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

from ichseg.pipeline.niftiio import save_like
from ichseg.pipeline.registration import register_to_template, warp_to_template

#: HU given to template voxels outside the scan's field of view: air.
OUTSIDE_FOV_HU = -1000.0


class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="conformed CT in HU")
    brain_mask = File(exists=True, mandatory=True, desc="intracranial mask of in_file")
    template = File(exists=True, mandatory=True, desc="skull-stripped CT template (HU)")
    template_mask = File(exists=True, mandatory=True, desc="brain mask of the template")
    transform_type = traits.Enum("Rigid", "Affine", usedefault=True, desc="ANTs transform model")
    seed = traits.Int(1, usedefault=True, desc="ANTs random seed (reproducible sampling)")


class _RegisterOutputSpec(TraitedSpec):
    out_transform = File(exists=True, desc="ANTs affine (template -> scan points), ITK .mat")
    template_ct = File(exists=True, desc="the CT (full head, HU) resampled on the template grid")
    template_brain_mask = File(exists=True, desc="the CT's brain mask on the template grid")
    qc = traits.Dict(desc="registration_similarity (intensity correlation) and registration_dice, "
                     "inside the scan's field of view")


class RegisterToTemplate(SimpleInterface):
    """Register the brain to the template (ANTsPy) and resample the CT onto the template grid."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        ct_img = nib.load(self.inputs.in_file)
        ct = np.asanyarray(ct_img.dataobj, dtype=np.float32)
        mask = np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0
        transform = os.path.join(runtime.cwd, "template_to_ct.mat")
        result = register_to_template(
            ct, ct_img.affine, mask, self.inputs.template, transform,
            self.inputs.transform_type, self.inputs.seed,
        )
        template_img = nib.load(self.inputs.template)
        template_to_scan = result["template_to_scan"]
        # CT and mask in one pass (the sample coordinates are computed once). Interpolation is
        # linear, so warping CT - OUTSIDE_FOV_HU with fill 0 and adding it back is the CT
        # warped with fill OUTSIDE_FOV_HU.
        channels = np.stack([ct - OUTSIDE_FOV_HU, mask.astype(np.float32), np.ones_like(ct)])
        warped = warp_to_template(channels, ct_img.affine, template_img, template_to_scan)
        warped_ct = warped[0] + OUTSIDE_FOV_HU
        warped_mask = warped[1] >= 0.5
        in_view = warped[2] >= 0.5
        self._results["out_transform"] = transform
        # uncompressed: the next steps read them at once; the derivative sink compresses
        self._results["template_ct"] = os.path.join(runtime.cwd, "ct_space-template.nii")
        self._results["template_brain_mask"] = os.path.join(runtime.cwd, "brain_mask_space-template.nii")
        save_like(warped_ct.astype(np.float32), template_img, self._results["template_ct"])
        save_like(warped_mask.astype(np.uint8), template_img, self._results["template_brain_mask"])

        template = np.asanyarray(template_img.dataobj, dtype=np.float32)
        # Compared inside the scan's field of view only: a scan that covers part of the head
        # (flag_head_coverage) is judged on the part it has.
        template_mask = (np.asanyarray(nib.load(self.inputs.template_mask).dataobj) > 0.5) & in_view
        both = warped_mask & template_mask
        self._results["qc"] = {
            "registration_dice": float(2 * both.sum() / max(1, warped_mask.sum() + template_mask.sum())),
            "registration_similarity": (
                float(np.corrcoef(np.clip(warped_ct[both], 0, 100), template[both])[0, 1])
                if both.sum() > 10 else 0.0
            ),
        }
        return runtime
