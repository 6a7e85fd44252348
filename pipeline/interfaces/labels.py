"""Interface writing the BIDS label table (``_dseg.tsv``) of the label maps."""

from __future__ import annotations

import os

from nipype.interfaces.base import File, SimpleInterface, TraitedSpec

from ichseg.pipeline.labels import write_dseg_tsv


class _LabelTableOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="BIDS _dseg.tsv label table")


class LabelTable(SimpleInterface):
    """Write the label table of :mod:`ichseg.pipeline.labels` as a BIDS ``_dseg.tsv``."""

    output_spec = _LabelTableOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = str(write_dseg_tsv(os.path.join(runtime.cwd, "dseg.tsv")))
        return runtime
