"""Interfaces for ANTs registration of the CT brain to the CT template."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nipype.interfaces.base import File, TraitedSpec, traits

from ichseg.pipeline.interfaces.base import NodeInterface, read_image, read_mask
from ichseg.pipeline.interfaces.ct import ConformedCTInputSpec
from ichseg.pipeline.registration import align_for_atlas, to_template_space
from ichseg.pipeline.settings import ANTS_TRANSFORMS


class _RegisterInputSpec(ConformedCTInputSpec):
    brain_mask = File(exists=True, mandatory=True, desc="intracranial mask of in_file")
    template = File(exists=True, mandatory=True, desc="skull-stripped CT template (HU)")
    template_mask = File(exists=True, mandatory=True, desc="brain mask of the template")
    seed = traits.Int(1, usedefault=True, desc="ANTs random seed (reproducible sampling)")


class _RegisterToTemplateInputSpec(_RegisterInputSpec):
    transform_type = traits.Enum(*ANTS_TRANSFORMS.values(), usedefault=True, desc="ANTs transform model")
    atlas = traits.Bool(True, usedefault=True,
                        desc="with a Translation, also turn the head onto the template (atlas_transform, "
                        "aligned_ct, qc); False leaves that to an AlignForAtlas step")


class _AtlasOutputSpec(TraitedSpec):
    atlas_transform = File(exists=True, desc="ANTs transform (template -> scan points, ITK .mat) that turns "
                           "the head onto the template, for the atlas regions")
    aligned_ct = File(exists=True, desc="the CT turned onto the template with atlas_transform (the "
                      "registration check)")
    qc = traits.Dict(desc="registration_similarity (intensity correlation) and registration_dice, "
                     "inside the scan's field of view")


class _RegisterOutputSpec(_AtlasOutputSpec):
    out_transform = File(exists=True, desc="ANTs transform (template -> scan points), ITK .mat")
    template_ct = File(exists=True, desc="the CT (full head, HU) resampled on the template grid")
    template_brain_mask = File(exists=True, desc="the CT's brain mask on the template grid")


class _TemplateRegistration(NodeInterface):
    def _read_inputs(self) -> tuple:
        """CT (HU), its affine, brain mask, template image and template mask: the first
        arguments of the registration functions."""
        hu, ct_img = read_image(self.inputs.in_file, np.float32)
        return (hu, ct_img.affine, read_mask(self.inputs.brain_mask), nib.load(self.inputs.template),
                read_mask(self.inputs.template_mask, 0.5))

    def _write_alignment(self, runtime, alignment, template_img) -> None:
        self._write_image(runtime, "aligned_ct", "ct_space-template_aligned.nii",
                          alignment.aligned_ct.astype(np.float32), template_img)
        self._results["qc"] = alignment.qc


class RegisterToTemplate(_TemplateRegistration):
    """Register the brain to the template (ANTsPy) and resample the CT onto the template grid.

    Calls :func:`ichseg.pipeline.registration.to_template_space`. With a Rigid or Affine
    transform the atlas outputs are those of the same grid; with a Translation they come from
    a second, rigid registration (or from an :class:`AlignForAtlas` step, ``atlas=False``)."""

    input_spec = _RegisterToTemplateInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        inputs = self._read_inputs()
        template_img = inputs[3]
        result = to_template_space(
            *inputs, self._output_path(runtime, "out_transform", "template_to_ct.mat"),
            self.inputs.transform_type, self.inputs.seed,
            self._output_path(runtime, "atlas_transform", "template_to_ct_atlas.mat"), atlas=self.inputs.atlas,
        )
        self._write_image(runtime, "template_ct", "ct_space-template.nii", result.ct.astype(np.float32), template_img)
        self._write_image(runtime, "template_brain_mask", "brain_mask_space-template.nii",
                          result.brain_mask.astype(np.uint8), template_img)
        if result.atlas is None:
            del self._results["atlas_transform"]
        elif result.atlas.aligned_ct is result.ct:
            self._results["aligned_ct"] = self._results["template_ct"]
            self._results["qc"] = result.qc
        else:
            self._write_alignment(runtime, result.atlas, template_img)
        return runtime


class AlignForAtlas(_TemplateRegistration):
    """Turn the head onto the template with a rigid registration, for the atlas regions and the
    registration QC, while the network's grid keeps the head as scanned.

    Calls :func:`ichseg.pipeline.registration.align_for_atlas`."""

    input_spec = _RegisterInputSpec
    output_spec = _AtlasOutputSpec

    def _run_interface(self, runtime):
        inputs = self._read_inputs()
        alignment = align_for_atlas(
            *inputs, self._output_path(runtime, "atlas_transform", "template_to_ct_atlas.mat"), self.inputs.seed,
        )
        self._write_alignment(runtime, alignment, inputs[3])
        return runtime
