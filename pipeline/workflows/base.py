"""Top-level workflows: one sub-workflow per head CT, all run side by side by Nipype."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ichseg.pipeline import assets
from ichseg.pipeline.interfaces.ct import BrainExtraction, ConformCT, ToSourceGrid
from ichseg.pipeline.interfaces.labels import LabelTable
from ichseg.pipeline.interfaces.registration import AlignForAtlas, RegisterToTemplate
from ichseg.pipeline.interfaces.reports import ScanReport
from ichseg.pipeline.interfaces.segmentation import (
    ProbabilitiesToScan,
    SegmentHemorrhage,
)
from ichseg.pipeline.interfaces.volumes import LocateHemorrhage, TabulateVolumes
from ichseg.pipeline.settings import MethodSettings
from ichseg.pipeline.workflows.outputs import init_ct_derivatives_wf

#: Memory (GB) that each step may use at most, so that Nipype's MultiProc scheduler never
#: runs more scans side by side than the RAM allows (figures measured in bench/).
MEM_GB = {"conform": 0.5, "brain": 1.0, "register": 1.0, "segment": 2.5, "to_scan": 1.5, "tabulate": 0.3}


def init_ichseg_wf(
    ct_files: Sequence[str | Path],
    scan_ids: Sequence[str],
    output_dir: str | Path,
    work_dir: str | Path,
    sidecars: Sequence[dict] | None = None,
    crash_dir: str | Path | None = None,
    settings: MethodSettings = MethodSettings(),
    name: str = "ichseg_wf",
):
    """Build the participant-level workflow: one :func:`init_single_ct_wf` per CT image.

    Parameters
    ----------
    ct_files : list of paths
        Head CT images (NIfTI, HU) to process.
    scan_ids : list of str
        A unique, filesystem-safe name per image (e.g. ``sub-01_ses-1_run-1``).
    sidecars : list of dict
        BIDS JSON metadata of each image (optional).
    output_dir : path
        Root of the BIDS derivatives dataset.
    work_dir : path
        Nipype working directory; re-runs reuse what it holds.
    crash_dir : path
        Each scan's crash files go to ``crash_dir/<scan_id>/`` (as sMRIPrep's per-subject
        crash folders), so that a failure is attributed to its scan by where it lies.
        Default: Nipype's crash folder for all.
    settings : MethodSettings
        How every scan is processed (:class:`ichseg.pipeline.settings.MethodSettings`).

    Outputs
    -------
    Derivatives are written to ``output_dir`` by each sub-workflow.
    """
    workflow = pe.Workflow(name=name, base_dir=str(work_dir))
    sidecars = list(sidecars) if sidecars is not None else [{}] * len(ct_files)
    for ct_file, scan_id, sidecar in zip(ct_files, scan_ids, sidecars):
        single = init_single_ct_wf(
            ct_file=ct_file,
            output_dir=output_dir,
            sidecar=sidecar,
            settings=settings,
            name=_node_name(scan_id),
        )
        if crash_dir is not None:
            for node in single._get_all_nodes():
                node.config = {"execution": {"crashdump_dir": str(Path(crash_dir) / scan_id)}}
        workflow.add_nodes([single])
    return workflow


def _node_name(scan_id: str) -> str:
    """Nipype node names allow letters, digits and underscores only."""
    return "ct_" + "".join(ch if ch.isalnum() else "_" for ch in scan_id)


def init_single_ct_wf(
    ct_file: str | Path,
    output_dir: str | Path,
    sidecar: dict | None = None,
    settings: MethodSettings = MethodSettings(),
    name: str = "single_ct_wf",
):
    """Segment hemorrhage on one head CT and tabulate its volumes in the scan's own space.

    Steps: load/check/reorient, brain extraction, ANTs registration of the brain to the
    CT template, CNN inference over the brain in template space, inverse transform of the class
    probabilities to the scan's grid, label map, volumes.

    Parameters
    ----------
    ct_file : path
        The head CT (NIfTI, HU).
    output_dir : path
        Root of the BIDS derivatives dataset.
    sidecar : dict
        The CT's BIDS JSON metadata (checked for localizer/contrast series).
    settings : MethodSettings
        How the scan is processed (:class:`ichseg.pipeline.settings.MethodSettings`).

    Inputs
    ------
    ct_file
        The CT image (set from ``ct_file``).

    Outputs
    -------
    dseg, hemorrhage_probseg, brain_mask, template_ct, template_dseg, transform,
    volumes_tsv, volumes_json, qc, warnings
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["ct_file"]), name="inputnode")
    inputnode.inputs.ct_file = str(ct_file)
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=["dseg", "hemorrhage_probseg", "brain_mask", "template_ct", "template_dseg",
                    "transform", "volumes_tsv", "volumes_json", "qc", "warnings"]
        ),
        name="outputnode",
    )

    conform = pe.Node(ConformCT(sidecar=dict(sidecar or {})), name="conform", mem_gb=MEM_GB["conform"])
    brain = pe.Node(BrainExtraction(), name="brain_extraction", mem_gb=MEM_GB["brain"])
    templates = {"template": str(assets.get_asset(assets.TEMPLATE_CT)),
                 "template_mask": str(assets.get_asset(assets.TEMPLATE_MASK))}
    # With a translation the atlas needs a second, rigid registration: a step of its own, so
    # that it runs beside the first (each is single-threaded) instead of after it.
    separate_atlas = settings.ants_transform == "Translation"
    register = pe.Node(
        RegisterToTemplate(**templates, transform_type=settings.ants_transform, atlas=not separate_atlas),
        name="register",
        mem_gb=MEM_GB["register"],
    )
    if separate_atlas:
        atlas = pe.Node(AlignForAtlas(**templates), name="register_atlas", mem_gb=MEM_GB["register"])
        workflow.connect([(conform, atlas, [("out_file", "in_file")]),
                          (brain, atlas, [("out_mask", "brain_mask")])])
    else:
        atlas = register
    segment = pe.Node(
        SegmentHemorrhage(
            model=settings.model, device=settings.device, precision=settings.precision,
            num_threads=settings.omp_nthreads, network_input=settings.network_input,
            margin_mm=settings.margin_mm, hemorrhage_threshold=settings.hemorrhage_threshold,
            hemorrhage_seed=settings.hemorrhage_seed, grid_shifts=settings.grid_shifts,
        ),
        name="segment",
        n_procs=settings.omp_nthreads,
        mem_gb=MEM_GB["segment"],
    )
    to_scan = pe.Node(ProbabilitiesToScan(hemorrhage_threshold=settings.hemorrhage_threshold,
                                          hemorrhage_seed=settings.hemorrhage_seed,
                                          ivh_margin_mm=settings.ivh_margin_mm,
                                          eah_margin_mm=settings.eah_margin_mm),
                      name="probabilities_to_scan", mem_gb=MEM_GB["to_scan"])
    mask_to_source = pe.Node(ToSourceGrid(), name="brain_mask_to_source")
    if settings.ivh_margin_mm is not None or settings.eah_margin_mm is not None:
        to_scan.inputs.atlas = str(assets.get_asset(assets.ATLAS))
        to_scan.inputs.atlas_labels = str(assets.get_asset(assets.ATLAS_LABELS))
        workflow.connect(atlas, "atlas_transform", to_scan, "atlas_transform")
        workflow.connect(mask_to_source, "out_file", to_scan, "brain_mask")
    tabulate = pe.Node(
        TabulateVolumes(extra_metadata=settings.sidecar_metadata()),
        name="tabulate_volumes",
        mem_gb=MEM_GB["tabulate"],
    )
    locate = pe.Node(
        LocateHemorrhage(atlas=str(assets.get_asset(assets.ATLAS)),
                         atlas_labels=str(assets.get_asset(assets.ATLAS_LABELS))),
        name="locate_hemorrhage",
        mem_gb=MEM_GB["tabulate"],
    )
    label_table = pe.Node(LabelTable(), name="label_table")
    report = pe.Node(
        ScanReport(template=str(assets.get_asset(assets.TEMPLATE_CT))), name="scan_report", mem_gb=0.5
    )
    qc = pe.Node(
        niu.Function(function=_merge_dicts, input_names=["first", "second", "third"], output_names=["merged"]),
        name="merge_qc",
    )

    derivatives_wf = init_ct_derivatives_wf(output_dir)

    # fmt: off
    workflow.connect([
        (inputnode, conform, [("ct_file", "in_file")]),
        (conform, brain, [("out_file", "in_file")]),
        (conform, register, [("out_file", "in_file")]),
        (brain, register, [("out_mask", "brain_mask")]),
        (register, segment, [("template_ct", "template_ct"),
                             ("template_brain_mask", "template_brain_mask")]),
        (segment, to_scan, [("probabilities", "probabilities")]),
        (register, to_scan, [("out_transform", "transform")]),
        (inputnode, to_scan, [("ct_file", "source_file")]),
        (brain, mask_to_source, [("out_mask", "in_file")]),
        (inputnode, mask_to_source, [("ct_file", "source_file")]),
        (to_scan, tabulate, [("dseg", "dseg")]),
        (to_scan, locate, [("dseg", "dseg")]),
        (atlas, locate, [("atlas_transform", "transform")]),
        (locate, tabulate, [("location", "location")]),
        (locate, derivatives_wf, [("regions_tsv", "inputnode.regions")]),
        (mask_to_source, tabulate, [("out_file", "brain_mask")]),
        (segment, tabulate, [("model_info", "model_info")]),
        (inputnode, tabulate, [("ct_file", "source_file")]),
        (atlas, qc, [("qc", "first")]),
        (segment, qc, [("qc", "second")]),
        (conform, qc, [("qc", "third")]),
        (qc, tabulate, [("merged", "qc")]),
        (conform, tabulate, [("warnings", "warnings")]),
        (to_scan, outputnode, [("dseg", "dseg"), ("hemorrhage_probseg", "hemorrhage_probseg")]),
        (mask_to_source, outputnode, [("out_file", "brain_mask")]),
        (register, outputnode, [("template_ct", "template_ct"), ("out_transform", "transform")]),
        (segment, outputnode, [("template_dseg", "template_dseg")]),
        (tabulate, outputnode, [("out_tsv", "volumes_tsv"), ("out_json", "volumes_json")]),
        (qc, outputnode, [("merged", "qc")]),
        (conform, outputnode, [("warnings", "warnings")]),
        (inputnode, report, [("ct_file", "source_file"), ("ct_file", "ct_file")]),
        (to_scan, report, [("dseg", "dseg")]),
        (mask_to_source, report, [("out_file", "brain_mask")]),
        (atlas, report, [("aligned_ct", "template_ct")]),
        (tabulate, report, [("row", "volumes"), ("metadata", "metadata")]),
        (report, derivatives_wf, [("out_report", "inputnode.report"),
                                  ("mosaic_svg", "inputnode.segmentation_figure"),
                                  ("registration_svg", "inputnode.registration_figure")]),
        (inputnode, derivatives_wf, [("ct_file", "inputnode.source_file")]),
        (label_table, derivatives_wf, [("out_file", "inputnode.dseg_tsv")]),
        (to_scan, derivatives_wf, [("dseg", "inputnode.dseg"),
                                   ("hemorrhage_probseg", "inputnode.hemorrhage_probseg")]),
        (mask_to_source, derivatives_wf, [("out_file", "inputnode.brain_mask")]),
        (register, derivatives_wf, [("template_ct", "inputnode.template_ct"),
                                    ("out_transform", "inputnode.xfm")]),
        (segment, derivatives_wf, [("template_dseg", "inputnode.template_dseg")]),
        (tabulate, derivatives_wf, [("out_tsv", "inputnode.volumes"), ("out_json", "inputnode.volumes_json")]),
    ])
    # fmt: on
    return workflow


def _merge_dicts(first, second, third=None):
    """Merge the QC dictionaries of the steps (Nipype Function node: self-contained)."""
    merged = {}
    for part in (first, second, third):
        merged.update(part or {})
    return merged
