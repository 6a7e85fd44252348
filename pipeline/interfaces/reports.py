"""Interface that draws a scan's report figures and writes its HTML report."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from ichseg.pipeline.figures import plot_registration_check, plot_segmentation_mosaic
from ichseg.pipeline.interfaces.base import NodeInterface
from ichseg.pipeline.reports import write_scan_report


class _ScanReportInputSpec(BaseInterfaceInputSpec):
    source_file = Str(mandatory=True, desc="the input CT as given to the workflow (names the scan)")
    ct_file = File(exists=True, mandatory=True, desc="the original CT (HU), on the scan's grid")
    dseg = File(exists=True, mandatory=True, desc="label map on the scan's grid")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the scan's grid")
    template_ct = File(exists=True, mandatory=True, desc="the CT turned onto the template grid (the registration check)")
    template = File(exists=True, mandatory=True, desc="the CT template image (skull-stripped, HU)")
    volumes = traits.Dict(mandatory=True, desc="the scan's volume row: volumes, QC measures and flags "
                          "(TabulateVolumes.row)")
    metadata = traits.Dict(mandatory=True, desc="the volume table's sidecar: sources, warnings, model, "
                           "versions (TabulateVolumes.metadata)")
    scan_id = Str(desc="name of the scan in the report; default: from the BIDS name of source_file")
    n_slices = traits.Int(12, usedefault=True, desc="axial slices of the segmentation mosaic")
    radiological = traits.Bool(
        True, usedefault=True, desc="show patient's right on the image left (radiological convention)"
    )


class _ScanReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="self-contained HTML report (figures embedded)")
    mosaic_svg = File(exists=True, desc="segmentation mosaic (SVG; figure desc 'segmentation')")
    registration_svg = File(exists=True, desc="registration check (SVG; figure desc 'registration')")


def _scan_id(source_file: str) -> str:
    """``sub-01_ses-1`` from a BIDS source name; the bare file name otherwise."""
    try:
        from ichseg.pipeline.naming import scan_id

        return scan_id(source_file)
    except ValueError:
        name = Path(source_file).name
        for ext in (".nii.gz", ".nii"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name


class ScanReport(NodeInterface):
    """Draw the segmentation mosaic and the registration check; write the scan's HTML report.

    The HTML embeds both figures, so it is complete on its own; the SVGs are outputs too, for
    the ``figure`` derivatives (desc ``segmentation`` and ``registration``).
    """

    input_spec = _ScanReportInputSpec
    output_spec = _ScanReportOutputSpec

    def _run_interface(self, runtime):
        volumes = dict(self.inputs.volumes)
        metadata = dict(self.inputs.metadata)
        metadata.setdefault("Sources", [str(self.inputs.source_file)])
        scan = self.inputs.scan_id if isdefined(self.inputs.scan_id) else _scan_id(self.inputs.source_file)

        mosaic = self._output_path(runtime, "mosaic_svg", "segmentation.svg")
        registration = self._output_path(runtime, "registration_svg", "registration.svg")
        plot_segmentation_mosaic(
            self.inputs.ct_file, self.inputs.dseg, self.inputs.brain_mask, mosaic,
            n_slices=self.inputs.n_slices, volumes=volumes, radiological=self.inputs.radiological,
        )
        plot_registration_check(
            self.inputs.template_ct, self.inputs.template, registration,
            radiological=self.inputs.radiological,
        )
        report = self._output_path(runtime, "out_report", "report.html")
        write_scan_report(
            report,
            scan,
            volumes,
            {"segmentation": mosaic, "registration": registration},
            warnings=_warnings(metadata),
            metadata=metadata,
        )
        return runtime


def _warnings(metadata: dict) -> list[str]:
    found = metadata.get("Warnings") or []
    return [str(w) for w in found] if isinstance(found, list) else [str(found)]
