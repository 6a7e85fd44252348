"""Interface writing the BIDS label table (``_dseg.tsv``) of the label maps."""

from __future__ import annotations

from nipype.interfaces.base import File, TraitedSpec

from ichseg.pipeline.interfaces.base import NodeInterface
from ichseg.pipeline.labels import write_dseg_tsv


class _LabelTableOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="BIDS _dseg.tsv label table")


class LabelTable(NodeInterface):
    """Write the label table of :mod:`ichseg.pipeline.labels` as a BIDS ``_dseg.tsv``."""

    output_spec = _LabelTableOutputSpec

    def _run_interface(self, runtime):
        write_dseg_tsv(self._output_path(runtime, "out_file", "dseg.tsv"))
        return runtime
