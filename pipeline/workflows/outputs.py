"""Writing a scan's results as BIDS derivatives."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ichseg.pipeline.interfaces.derivatives import DerivativesDataSink

#: The node that stores the volume table, last of a scan's outputs: its end marks a complete
#: scan (progress reporting counts it).
SCAN_COMPLETE_NODE = "ds_volumes"

#: Outputs written for every scan: input field -> (derivative kind of
#: ``ichseg.pipeline.naming.DERIVATIVES``, extra entities). The volume table is not listed:
#: it is written last, so that its presence means the scan's outputs are complete.
SCAN_DERIVATIVES = {
    "brain_mask": ("brain_mask", {}),
    "dseg": ("dseg", {}),
    "dseg_tsv": ("dseg_tsv", {}),
    "hemorrhage_probseg": ("hemorrhage_probseg", {}),
    "template_ct": ("template_ct", {}),
    "template_dseg": ("template_dseg", {}),
    "xfm": ("xfm", {}),
    "volumes_json": ("volumes_json", {}),
    "regions": ("regions", {}),
    "report": ("report", {}),
    "segmentation_figure": ("figure", {"desc": "segmentation"}),
    "registration_figure": ("figure", {"desc": "registration"}),
}


def init_ct_derivatives_wf(output_dir: str | Path, name: str = "ct_derivatives_wf"):
    """Copy one scan's results into the derivatives dataset under their BIDS names.

    Parameters
    ----------
    output_dir : path
        Root of the BIDS derivatives dataset.

    Inputs
    ------
    source_file
        The input CT (its entities name the outputs).
    brain_mask, dseg, dseg_tsv, hemorrhage_probseg, template_ct, template_dseg, xfm,
    volumes, volumes_json, regions, report, segmentation_figure, registration_figure
        Files to store (see ``SCAN_DERIVATIVES``).

    Outputs
    -------
    volumes
        Path of the stored volume table (written last: its presence marks a complete scan).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "volumes", *SCAN_DERIVATIVES]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["volumes"]), name="outputnode")
    done = pe.Node(niu.Merge(len(SCAN_DERIVATIVES)), name="all_other_outputs_written")
    for index, (field, (kind, entities)) in enumerate(SCAN_DERIVATIVES.items(), start=1):
        sink = pe.Node(
            DerivativesDataSink(base_directory=str(output_dir), kind=kind, entities=entities),
            name=f"ds_{field}",
            run_without_submitting=True,
        )
        workflow.connect([
            (inputnode, sink, [("source_file", "source_file"), (field, "in_file")]),
            (sink, done, [("out_file", f"in{index}")]),
        ])
    ds_volumes = pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), kind="volumes"),
        name=SCAN_COMPLETE_NODE,
        run_without_submitting=True,
    )
    # The volume table waits for every other output: a scan with a table is complete.
    gate = pe.Node(
        niu.Function(function=_pass_after, input_names=["in_file", "wait_for"], output_names=["out_file"]),
        name="volumes_after_all_outputs",
        run_without_submitting=True,
    )
    workflow.connect([
        (inputnode, gate, [("volumes", "in_file")]),
        (done, gate, [("out", "wait_for")]),
        (inputnode, ds_volumes, [("source_file", "source_file")]),
        (gate, ds_volumes, [("out_file", "in_file")]),
        (ds_volumes, outputnode, [("out_file", "volumes")]),
    ])
    return workflow


def _pass_after(in_file, wait_for):
    """Return ``in_file`` unchanged; ``wait_for`` only orders the workflow graph."""
    return in_file
