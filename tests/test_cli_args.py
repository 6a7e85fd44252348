"""Parsing of the method options of the ``ichseg`` command line."""

from __future__ import annotations

import pytest

from ichseg.bids_app.cli import build_parser
from ichseg.pipeline.segmentation import (
    DEFAULT_EAH_MARGIN_MM,
    DEFAULT_HEMORRHAGE_SEED,
    DEFAULT_HEMORRHAGE_THRESHOLD,
    DEFAULT_IVH_MARGIN_MM,
)

BASE = ["/bids", "/out", "participant"]


def test_hemorrhage_threshold_default_value_and_argmax():
    parser = build_parser()
    assert parser.parse_args(BASE).hemorrhage_threshold == DEFAULT_HEMORRHAGE_THRESHOLD
    assert parser.parse_args([*BASE, "--hemorrhage-threshold", "0.3"]).hemorrhage_threshold == 0.3
    assert parser.parse_args([*BASE, "--hemorrhage-threshold", "argmax"]).hemorrhage_threshold is None


def test_hemorrhage_seed_default_value_and_none():
    parser = build_parser()
    assert parser.parse_args(BASE).hemorrhage_seed == DEFAULT_HEMORRHAGE_SEED
    assert parser.parse_args([*BASE, "--hemorrhage-seed", "0.9"]).hemorrhage_seed == 0.9
    assert parser.parse_args([*BASE, "--hemorrhage-seed", "1"]).hemorrhage_seed == 1.0
    assert parser.parse_args([*BASE, "--hemorrhage-seed", "none"]).hemorrhage_seed is None


@pytest.mark.parametrize("bad", ["1.5", "0", "all"])
def test_hemorrhage_seed_rejects_what_is_not_a_probability(bad, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, "--hemorrhage-seed", bad])
    assert "--hemorrhage-seed" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["1.5", "0", "half"])
def test_hemorrhage_threshold_rejects_what_is_not_a_probability(bad, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, "--hemorrhage-threshold", bad])
    assert "--hemorrhage-threshold" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "default"), [("ivh", DEFAULT_IVH_MARGIN_MM), ("eah", DEFAULT_EAH_MARGIN_MM)])
def test_class_margins_default_value_none_and_bad_values(option, default, capsys):
    parser = build_parser()
    name, flag = f"{option}_margin_mm", f"--{option}-margin-mm"
    assert getattr(parser.parse_args(BASE), name) == default
    assert getattr(parser.parse_args([*BASE, flag, "4.5"]), name) == 4.5
    assert getattr(parser.parse_args([*BASE, flag, "0"]), name) == 0.0
    assert getattr(parser.parse_args([*BASE, flag, "none"]), name) is None
    for bad in ("-1", "near"):
        with pytest.raises(SystemExit):
            parser.parse_args([*BASE, flag, bad])
        assert flag in capsys.readouterr().err


def test_array_tasks_get_the_options_as_given():
    """What --submit passes on to its tasks parses back to the same settings."""
    from ichseg.bids_app.slurm import task_arguments

    parser = build_parser()
    given = [*BASE, "--participant-label", "01", "--submit", "slurm", "--sbatch-args", "-p short",
             "--nprocs", "3", "--omp-nthreads", "1", "--mem", "6", "--model", "blastct-v1-ensemble",
             "--hemorrhage-threshold", "argmax", "--hemorrhage-seed", "none", "--ivh-margin-mm", "none", "--eah-margin-mm", "2", "--transform", "affine", "--grid-shifts", "3", "-vv"]
    args = parser.parse_args(given)
    forwarded = task_arguments(args, parser)
    assert "--participant-label" not in forwarded and "--submit" not in forwarded
    again = parser.parse_args([*BASE, *forwarded])
    for name in ("n_procs", "omp_nthreads", "mem", "model", "hemorrhage_threshold", "hemorrhage_seed",
                 "ivh_margin_mm", "eah_margin_mm", "transform", "grid_shifts", "verbose"):
        assert getattr(again, name) == getattr(args, name), name


@pytest.mark.parametrize("option, value", [("--mem", "0"), ("--nipype-plugin-args", "[1, 2]"),
                                           ("--nipype-plugin-args", "{bad"), ("--nipype-plugin", "SLURMGraph")])
def test_cluster_options_reject_bad_values(option, value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, option, value])
    assert option in capsys.readouterr().err


def test_nipype_plugin_args_from_a_file(tmp_path):
    path = tmp_path / "plugin.json"
    path.write_text('{"sbatch_args": "--mem=4G"}')
    args = build_parser().parse_args([*BASE, "--nipype-plugin", "SLURM", "--nipype-plugin-args", str(path)])
    assert args.nipype_plugin_args == {"sbatch_args": "--mem=4G"}


def test_submit_without_slurm_says_what_to_do(tmp_path, monkeypatch, capsys):
    from ichseg.bids_app.cli import main
    from ichseg.bids_app.demo import write_demo_dataset

    bids = write_demo_dataset(tmp_path / "bids", n_subjects=1)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main([str(bids), str(tmp_path / "out"), "participant", "--submit", "slurm"]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "5", "two"])
def test_grid_shifts_out_of_range_are_refused(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, "--grid-shifts", value])
    assert "--grid-shifts" in capsys.readouterr().err
