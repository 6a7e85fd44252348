"""Store a workflow result under its BIDS derivative name.

A small cousin of niworkflows' ``DerivativesDataSink``: the name comes from
:func:`ichseg.pipeline.naming.derivative_path` (the one place that names outputs) for one
``kind`` of :data:`ichseg.pipeline.naming.DERIVATIVES`, and the file is copied byte for byte
(no re-encoding, no header edits) with an atomic rename, so an output is either absent or
complete. An uncompressed ``.nii`` for a ``.nii.gz`` kind is gzip-compressed on the way:
steps write uncompressed NIfTI, which the next step reads at once, and the compression
runs here, beside the steps that follow. A NIfTI derivative gets its JSON sidecar here too:
``Description``, ``Sources`` (the CT, as a BIDS URI) and the kind's metadata (labels).
"""

from __future__ import annotations

import json

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from ichseg.pipeline.fileutils import atomic_copy, atomic_gzip, atomic_write_text
from ichseg.pipeline.naming import (
    DERIVATIVES,
    derivative_path,
    sidecar_path,
    source_uri,
)


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = Directory(
        mandatory=True, desc="Output (derivatives) folder; created if it does not exist."
    )
    source_file = File(
        exists=False, mandatory=True, desc="The input CT the output derives from (its name)."
    )
    in_file = File(exists=True, mandatory=True, desc="The file to store.")
    kind = Str(mandatory=True, desc=f"Kind of output, one of: {', '.join(DERIVATIVES)}.")
    entities = traits.Dict(
        key_trait=Str,
        value_trait=Str,
        desc="Entities added to those of the kind, e.g. {'desc': 'overlay'} for a figure.",
    )


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="The stored derivative.")
    out_meta = File(desc="Its JSON sidecar (NIfTI derivatives only).")


class DerivativesDataSink(SimpleInterface):
    """Copy ``in_file`` to the derivative path of ``kind`` for ``source_file``.

    Examples
    --------
    >>> DerivativesDataSink(
    ...     base_directory="/out", source_file="/bids/sub-01/anat/sub-01_ct.nii.gz",
    ...     in_file="labels.nii.gz", kind="dseg",
    ... ).run()  # doctest: +SKIP
    # -> /out/sub-01/anat/sub-01_dseg.nii.gz
    """

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    # Like niworkflows: the outputs live outside the working directory, so a cached node
    # must not skip the copy (a user may have deleted the derivative since the last run).
    _always_run = True

    def _run_interface(self, runtime):
        kind = self.inputs.kind
        if kind not in DERIVATIVES:
            raise ValueError(
                f"DerivativesDataSink: unknown kind {kind!r}; choose one of: "
                f"{', '.join(DERIVATIVES)}."
            )
        entities = self.inputs.entities if isdefined(self.inputs.entities) else {}
        out_file = derivative_path(
            self.inputs.base_directory, self.inputs.source_file, kind, **entities
        )
        extension = DERIVATIVES[kind].extension
        in_file = str(self.inputs.in_file)
        if extension.endswith(".nii.gz") and in_file.endswith(".nii"):
            atomic_gzip(in_file, out_file)
        elif in_file.endswith(extension):
            atomic_copy(in_file, out_file)
        else:
            raise ValueError(
                f"DerivativesDataSink: {in_file} cannot be stored as {kind!r}, whose files end "
                f"with {extension!r}. Write the file in that format upstream (the sink copies "
                "bytes, and only gzips an uncompressed .nii)."
            )
        self._results["out_file"] = str(out_file)
        spec = DERIVATIVES[kind]
        if spec.has_sidecar:
            metadata = {"Description": spec.description, **spec.metadata,
                        "Sources": [source_uri(self.inputs.source_file)]}
            self._results["out_meta"] = str(atomic_write_text(
                sidecar_path(out_file), json.dumps(metadata, indent=2) + "\n"))
        return runtime
