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
from ichseg.pipeline.registration import to_template_space


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
        transform = os.path.join(runtime.cwd, "template_to_ct.mat")
        template_img = nib.load(self.inputs.template)
        result = to_template_space(
            np.asanyarray(ct_img.dataobj, dtype=np.float32), ct_img.affine,
            np.asanyarray(nib.load(self.inputs.brain_mask).dataobj) > 0, template_img,
            np.asanyarray(nib.load(self.inputs.template_mask).dataobj) > 0.5, transform,
            self.inputs.transform_type, self.inputs.seed,
        )
        self._results["out_transform"] = transform
        # uncompressed: the next steps read them at once; the derivative sink compresses
        self._results["template_ct"] = os.path.join(runtime.cwd, "ct_space-template.nii")
        self._results["template_brain_mask"] = os.path.join(runtime.cwd, "brain_mask_space-template.nii")
        save_like(result.ct.astype(np.float32), template_img, self._results["template_ct"])
        save_like(result.brain_mask.astype(np.uint8), template_img, self._results["template_brain_mask"])
        self._results["qc"] = result.qc
        return runtime
