# Shared set-up of run_demo.sh, run_tests.sh and .ci/run (source it, don't run it).
# Creates (or reuses) a virtual environment, installs ichseg and its test tools into it,
# and points the asset lookup at a local data folder when one is beside the checkout.
set -euo pipefail

ICHSEG_VENV=${ICHSEG_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$ICHSEG_VENV/bin/python" ]; then
    echo "[ichseg] creating the virtual environment $ICHSEG_VENV"
    "$PYTHON" -m venv "$ICHSEG_VENV"
fi
echo "[ichseg] installing ichseg and its dependencies into $ICHSEG_VENV (first time: a few minutes)"
"$ICHSEG_VENV/bin/python" -m pip install --quiet --upgrade pip
# torch is pinned: an unpinned torch can pull a several-GB CUDA build. Where pip is set up
# with a local CPU wheel (as on our CI), this takes it; elsewhere PyPI's build for the platform.
"$ICHSEG_VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$ICHSEG_VENV/bin/python" -m pip install --quiet -e ".[test]"

# shellcheck disable=SC1091
source "$ICHSEG_VENV/bin/activate"
export NIPYPE_NO_ET=1  # nipype's online version check stalls on closed networks
export MPLBACKEND=Agg
if [ -z "${ICHSEG_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    # A local copy of the weights/templates/test CTs (as on CI): no downloads needed.
    ICHSEG_DATA_DIR=$(cd ../shared/data && pwd)
    export ICHSEG_DATA_DIR
    echo "[ichseg] using local assets in $ICHSEG_DATA_DIR"
fi
