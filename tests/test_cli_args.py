"""Parsing of the method options of the ``ichseg`` command line."""

from __future__ import annotations

import pytest

from ichseg.bids_app.cli import build_parser
from ichseg.pipeline.segmentation import DEFAULT_HEMORRHAGE_THRESHOLD

BASE = ["/bids", "/out", "participant"]


def test_hemorrhage_threshold_default_value_and_argmax():
    parser = build_parser()
    assert parser.parse_args(BASE).hemorrhage_threshold == DEFAULT_HEMORRHAGE_THRESHOLD
    assert parser.parse_args([*BASE, "--hemorrhage-threshold", "0.3"]).hemorrhage_threshold == 0.3
    assert parser.parse_args([*BASE, "--hemorrhage-threshold", "argmax"]).hemorrhage_threshold is None


@pytest.mark.parametrize("bad", ["1.5", "0", "half"])
def test_hemorrhage_threshold_rejects_what_is_not_a_probability(bad, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*BASE, "--hemorrhage-threshold", bad])
    assert "--hemorrhage-threshold" in capsys.readouterr().err
