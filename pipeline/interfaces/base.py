"""What ichseg's interfaces share: images read as arrays, results written into the node's folder.

Each interface is a thin caller of one plain function of :mod:`ichseg.pipeline` (the Python
API calls the same functions without Nipype). This module holds both ends of that call, so
that an interface says only which function it runs and what it names its outputs.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import SimpleInterface

from ichseg.pipeline.niftiio import save_like
from ichseg.pipeline.tsv import write_tsv


def read_image(path: str, dtype=None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """The voxels of a NIfTI file (as ``dtype`` when given) and the image (its grid)."""
    img = nib.load(path)
    return np.asanyarray(img.dataobj, dtype=dtype), img


def read_mask(path: str, above: float = 0.0) -> np.ndarray:
    """A mask file as booleans: voxels above ``above``."""
    return np.asanyarray(nib.load(path).dataobj) > above


class NodeInterface(SimpleInterface):
    """A SimpleInterface whose file outputs are written in the node's working folder.

    Steps write uncompressed NIfTI where the next step reads the file at once; the
    derivative sinks compress what is kept.
    """

    def _output_path(self, runtime, output: str, filename: str) -> str:
        """Record ``filename`` in the node's folder as the output ``output``; return its path."""
        self._results[output] = path = os.path.join(runtime.cwd, filename)
        return path

    def _write_image(self, runtime, output: str, filename: str, data: np.ndarray, like: nib.Nifti1Image,
                     affine=None) -> None:
        save_like(data, like, self._output_path(runtime, output, filename), affine=affine)

    def _write_json(self, runtime, output: str, filename: str, content: dict) -> None:
        with open(self._output_path(runtime, output, filename), "w") as fobj:
            json.dump(content, fobj, indent=2, default=str)

    def _write_table(self, runtime, output: str, filename: str, rows: list[dict]) -> None:
        write_tsv(pd.DataFrame(rows), self._output_path(runtime, output, filename))
