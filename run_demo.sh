#!/usr/bin/env bash
# Install ichseg into ./.venv, write a small synthetic BIDS dataset (two head-CT phantoms, one
# with a 20 mL hematoma) to ./demo/bids and segment it: derivatives in ./demo/derivatives.
# Model weights and the CT template come from ICHSEG_DATA_DIR, the cache, or are downloaded
# (verified by sha256) on first use.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh

python -m ichseg.bids_app.demo demo/bids
ichseg demo/bids demo/derivatives participant --work-dir demo/work "$@"
ichseg demo/bids demo/derivatives group
echo
echo "Group table (demo/derivatives/group_volumes.tsv); the true hemorrhage volumes are in demo/bids/participants.tsv:"
column -t -s $'\t' demo/derivatives/group_volumes.tsv 2>/dev/null || cat demo/derivatives/group_volumes.tsv
