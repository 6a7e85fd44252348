"""``ichseg.segment``: the Python API gives what the BIDS-App writes for the same scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import ichseg
from ichseg.bids_app.cli import main
from ichseg.bids_app.demo import write_demo_dataset
from ichseg.pipeline.checks import InputImageError
from ichseg.pipeline.naming import derivative_path

pytestmark = [pytest.mark.realdata]  # the CT template and atlas come from the asset lookup


@pytest.fixture(scope="module")
def app_run(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("api")
    bids = write_demo_dataset(base / "bids", n_subjects=1)
    assert main([str(bids), str(base / "out"), "participant", "-w", str(base / "work"),
                 "--model", str(tiny_model), "--n-procs", "1"]) == 0
    return bids / "sub-01" / "anat" / "sub-01_ct.nii.gz", base / "out"


def _data(img):
    return np.asanyarray(img.dataobj)


@pytest.mark.parametrize("as_image", [False, True], ids=["path", "image"])
def test_segment_equals_the_bids_app(app_run, tiny_model, as_image):
    source, out = app_run
    ct = nib.load(source) if as_image else source
    result = ichseg.segment(ct, model=str(tiny_model), omp_nthreads=1)
    for kind in ("dseg", "hemorrhage_probseg", "brain_mask"):
        stored = nib.load(derivative_path(out, source, kind))
        mine = getattr(result, kind)
        np.testing.assert_array_equal(_data(mine), _data(stored), err_msg=kind)
        np.testing.assert_array_equal(mine.affine, stored.affine)
        assert mine.get_data_dtype() == stored.get_data_dtype(), kind
    table = pd.read_csv(derivative_path(out, source, "volumes"), sep="\t", na_values="n/a",
                        keep_default_na=False)
    pd.testing.assert_frame_equal(pd.DataFrame([result.volumes]).astype(table.dtypes.to_dict()), table,
                                  check_dtype=False)
    regions = pd.read_csv(derivative_path(out, source, "regions"), sep="\t", na_values="n/a",
                          keep_default_na=False)
    pd.testing.assert_frame_equal(result.regions.reset_index(drop=True), regions, check_dtype=False)
    assert result.metadata["Model"]["torch_threads"] == 1


def test_segment_saves_its_outputs(app_run, tiny_model, tmp_path):
    source, _ = app_run
    paths = ichseg.segment(source, model=str(tiny_model), omp_nthreads=1).save(tmp_path, prefix="sub-01")
    assert sorted(p.name for p in paths.values()) == sorted(p.name for p in tmp_path.iterdir())
    assert nib.load(paths["dseg"]).shape == nib.load(source).shape


def test_bad_input_raises_a_message_that_names_the_file(tmp_path):
    path = tmp_path / "flat_ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 30), np.int16), np.eye(4)), path)
    with pytest.raises(InputImageError, match="flat_ct.nii.gz"):
        ichseg.segment(path)


def test_import_is_light():
    """``import ichseg`` does not load the pipeline until the API is used."""
    import subprocess
    import sys

    code = "import sys, ichseg; print('ichseg.pipeline.api' in sys.modules, ichseg.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", ichseg.__version__]


def test_segment_leaves_the_callers_threads_and_subnormals(app_run, tiny_model):
    """The network runs with flush-to-zero and its own threads; the caller gets both back.

    In a fresh process: a torch thread pool started here would hang the Nipype workers that
    later tests fork from this process (tests/conftest.py).
    """
    import json
    import subprocess
    import sys

    source, _ = app_run
    code = f"""
import json, numpy as np, torch, ichseg
torch.set_num_threads(3)
result = ichseg.segment({str(source)!r}, model={str(tiny_model)!r}, omp_nthreads=2)
print(json.dumps({{"threads": torch.get_num_threads(), "model": result.metadata["Model"],
                  "torch_subnormal": bool((torch.full((1 << 20,), 1e-30) * 1e-10 != 0).all()),
                  "numpy_subnormal": bool(np.float32(1e-30) * np.float32(1e-10) != 0)}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["model"]["torch_threads"] == 2 and out["model"]["flush_denormal_verified"]
    assert out["threads"] == 3
    assert out["torch_subnormal"] and out["numpy_subnormal"]


def test_grid_shifts_average_the_network_and_are_recorded(app_run, tiny_model):
    source, _ = app_run
    one = ichseg.segment(source, model=str(tiny_model), omp_nthreads=1)
    two = ichseg.segment(source, model=str(tiny_model), omp_nthreads=1, grid_shifts=2)
    assert (one.metadata["Model"]["grid_shifts"], two.metadata["Model"]["grid_shifts"]) == (1, 2)
    # the subsampled pathways at another phase give other probabilities
    assert np.abs(_data(one.hemorrhage_probseg).astype(float) - _data(two.hemorrhage_probseg)).max() > 0
    with pytest.raises(ValueError, match="grid_shifts must be 1 to 4, not 5"):
        ichseg.segment(source, model=str(tiny_model), grid_shifts=5)
