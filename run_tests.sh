#!/usr/bin/env bash
# Install ichseg with its test tools into ./.venv and run the test suite.
# Tests that need the real CTs or the pretrained weights find them through ICHSEG_DATA_DIR
# (../shared/data is used when present); without them they are skipped (failed under CI=true).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh

python -m pytest -ra --durations=15 "$@"
