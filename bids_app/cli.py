"""The ``ichseg`` command line (BIDS-Apps convention): parse arguments, then hand over."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ichseg.bids_app.resources import SUBMIT_N_PROCS
from ichseg.pipeline import __version__
from ichseg.pipeline.cpu import PRECISIONS
from ichseg.pipeline.segmentation import GRID_SHIFTS
from ichseg.pipeline.settings import NETWORK_INPUTS, TRANSFORMS, MethodSettings


def _probability_or(word: str, what: str, one_allowed: bool):
    """An argparse type: a probability in (0, 1) (or (0, 1] with ``one_allowed``), or ``word``
    for None. The word is kept as ``none_word``, so that options can be written back
    (``ichseg.bids_app.slurm.task_arguments``)."""
    def parse(text: str) -> float | None:
        if text.strip().lower() == word:
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a probability or {word!r}, got {text!r}") from None
        if not (0.0 < value <= 1.0 if one_allowed else 0.0 < value < 1.0):
            raise argparse.ArgumentTypeError(f"the {what} must lie between 0 and 1, got {value:g}")
        return value
    parse.none_word = word
    return parse


_threshold = _probability_or("argmax", "threshold", one_allowed=False)
_seed = _probability_or("none", "seed probability", one_allowed=True)


def _margin_or_none(text: str) -> float | None:
    """An argparse type: a distance in mm (0 or more), or ``none`` for None."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a distance in mm or 'none', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"the distance must be 0 mm or more, got {value:g}")
    return value


_margin_or_none.none_word = "none"


#: Nipype execution plugins ``--nipype-plugin`` accepts.
#: Not the *Graph plugins: they return as soon as they have submitted, so ichseg could
#: neither hold the scans' locks nor record their failures (--submit does that instead).
NIPYPE_PLUGINS = ("MultiProc", "Linear", "SLURM", "SGE", "PBS")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value:g}")
    return value


def _json_object(text: str) -> dict:
    """A JSON object given inline or as the path of a JSON file."""
    import json

    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"neither a JSON object nor a readable file: {text!r} ({exc.strerror})") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object ({...})")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ichseg``."""
    parser = argparse.ArgumentParser(
        prog="ichseg",
        description=(
            "Segment intracranial hemorrhage on non-contrast head CT (BLAST-CT networks after "
            "brain extraction and registration to a CT template) and report volumes in mL."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Other commands: 'ichseg evaluate DERIVATIVES REFERENCES' compares the label maps "
               "with reference segmentations; 'ichseg train BIDS_DIR REFERENCES MODEL_DIR' fine-tunes "
               "a network on them; 'ichseg dicom2bids DICOM_DIR BIDS_DIR --participant-label L' adds "
               "a visit's DICOM head CT to a BIDS dataset; 'ichseg status OUTPUT_DIR' lists done, running, "
               "failed and pending scans; 'ichseg fetch-assets --dest DIR' puts the templates and weights "
               "into DIR for offline compute nodes (ichseg <command> --help).",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="where the BIDS derivatives are written")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"ichseg {__version__}")

    select = parser.add_argument_group("selecting scans")
    select.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                        help="participants to process (with or without 'sub-'); default: all")
    select.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                        help="sessions to process (with or without 'ses-'); default: all")
    select.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                        help='JSON of extra pybids queries, e.g. {"ct": {"acquisition": "axial"}}')
    select.add_argument("--scans-file", type=Path, metavar="FILE",
                        help="process only the CT files FILE lists (paths relative to BIDS_DIR, one "
                             "per line); --submit writes one per job")

    run = parser.add_argument_group("running")
    run.add_argument("-w", "--work-dir", type=Path, default=Path.cwd() / "work",
                     help="Nipype working directory; re-runs reuse it")
    run.add_argument("--n-procs", "--nprocs", type=int, default=None, metavar="N",
                     help="CPUs used in total, scans side by side (default: those this process may use: "
                          "its CPU affinity and container CPU quota count; "
                          f"with --submit, {SUBMIT_N_PROCS} per job)")
    run.add_argument("--omp-nthreads", type=int, default=None, metavar="N",
                     help="threads of one inference step (default: --n-procs, at most 8); registration "
                          "runs on one thread (deterministic transforms)")
    run.add_argument("--mem", "--mem-gb", dest="mem", type=_positive, default=None, metavar="GB",
                     help="memory in GB that the scans of one process may use together (Nipype "
                          "schedules within it; --submit asks Slurm for it); default: all of the "
                          "machine's, or what the scans of a job need when submitting")
    run.add_argument("--nipype-plugin", default="MultiProc", metavar="PLUGIN",
                     choices=NIPYPE_PLUGINS,
                     help="Nipype execution plugin: " + ", ".join(NIPYPE_PLUGINS) + " (SLURM, SGE and PBS "
                          "submit each step as a job from this one process, which waits for them)")
    run.add_argument("--nipype-plugin-args", type=_json_object, default=None, metavar="JSON",
                     help="arguments of the Nipype plugin, as JSON text or a JSON file, e.g. "
                          "'{\"sbatch_args\": \"--partition=short\"}'")
    run.add_argument("--device", default="cpu", help="torch device for inference: cpu, cuda, cuda:1, ...")
    run.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="network precision: auto = fp32 (bf16 moved some volumes by more than 1 %%, "
                          "docs/benchmarks.md); bf16 is fast on CPUs with AMX or AVX-512-BF16 and "
                          "on CUDA; fp16 is CUDA only")
    run.add_argument("--model", default=MethodSettings.model, metavar="NAME_OR_PATH",
                     help="registered model (blastct-v1, blastct-v1-ensemble) or a .pt file / folder")

    cluster = parser.add_argument_group("cluster (docs/hpc.md)")
    cluster.add_argument("--submit", choices=["slurm"], default=None,
                         help="submit the scans as a Slurm job array with a group-level job after it, "
                              "print the job ids and return; rerun it to submit what is not done")
    cluster.add_argument("--sbatch-args", default="", metavar="ARGS",
                         help="extra sbatch options for every job, e.g. '--partition=short --time=1:00:00'")
    cluster.add_argument("--scans-per-job", type=int, default=1, metavar="N",
                         help="scans per array task (more per task: fewer jobs, less start-up cost)")

    method = parser.add_argument_group("method")
    method.add_argument("--transform", choices=TRANSFORMS, default=MethodSettings.transform,
                        help="ANTs transform to the CT template (translation: no rotation, the head as scanned)")
    method.add_argument("--network-input", choices=NETWORK_INPUTS, default=MethodSettings.network_input,
                        help="the network sees the whole head or the extracted brain")
    method.add_argument("--margin-mm", type=float, default=MethodSettings.margin_mm,
                        help="margin around the brain mask where the network is run")
    method.add_argument("--hemorrhage-threshold", type=_threshold, default=MethodSettings.hemorrhage_threshold,
                        metavar="P|argmax",
                        help="total hemorrhage probability from which a voxel is labelled blood "
                             "(docs/method.md, accuracy); 'argmax' labels the most likely class")
    method.add_argument("--hemorrhage-seed", type=_seed, default=MethodSettings.hemorrhage_seed,
                        metavar="P|none",
                        help="keep a connected region of blood only if its total hemorrhage probability "
                             "reaches P somewhere (hysteresis; removes faint specks); 'none' keeps every region")
    method.add_argument("--ivh-margin-mm", type=_margin_or_none, default=MethodSettings.ivh_margin_mm,
                        metavar="MM|none",
                        help="label blood intraventricular only in a connected region that comes within MM of "
                             "the atlas's ventricles; elsewhere it takes its next most likely bleeding class "
                             "(docs/method.md, accuracy); 'none' leaves the network's class")
    method.add_argument("--eah-margin-mm", type=_margin_or_none, default=MethodSettings.eah_margin_mm,
                        metavar="MM|none",
                        help="label blood extra-axial only in a connected region that comes within MM of the "
                             "intracranial surface, the falx or the tentorium; elsewhere it takes its next most "
                             "likely bleeding class (docs/method.md, accuracy); 'none' leaves the network's class")
    method.add_argument("--grid-shifts", type=int, choices=range(1, len(GRID_SHIFTS) + 1),
                        default=MethodSettings.grid_shifts, metavar="N",
                        help=f"average the network over the CT moved by N of {len(GRID_SHIFTS)} fixed shifts, which "
                             "put its subsampled pathways at other phases of their grids (docs/method.md, "
                             "accuracy); each shift costs about 0.7 of another run of the network")

    out = parser.add_argument_group("messages")
    verbosity = out.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


#: ``ichseg <command> ...`` besides the BIDS-App's ``ichseg BIDS_DIR OUTPUT_DIR LEVEL``.
COMMANDS = {
    "evaluate": "ichseg.bids_app.evaluate:run_evaluate",
    "train": "ichseg.bids_app.train:run_train",
    "dicom2bids": "ichseg.bids_app.dicom2bids:run_dicom2bids",
    "status": "ichseg.bids_app.status:run_status",
    "fetch-assets": "ichseg.pipeline.assets:main",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ichseg`` console script; returns the exit status."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # nipype's version check stalls on closed networks
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        from importlib import import_module

        module, function = COMMANDS[argv[0]].split(":")
        return getattr(import_module(module), function)(argv[1:])
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ichseg").setLevel(level)

    from ichseg.bids_app.run import UserError, run_group, run_participant

    try:
        if args.analysis_level == "participant":
            return run_participant(args)
        return run_group(args)
    except UserError as exc:
        print(f"ichseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ichseg: interrupted; re-run the same command to finish what is missing", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
