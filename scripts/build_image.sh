#!/usr/bin/env bash
# Build the ichseg image with Podman, without a Docker daemon or registry access for the base:
# the Debian 12 base is made with debootstrap, the build runs with --isolation=chroot (which
# works where containers cannot be started). Run as root.
#
#   scripts/build_image.sh [TAG]            # default localhost/ichseg:latest
#
# ICHSEG_WHEELS=DIR     a folder with a torch wheel to install instead of PyPI's (--find-links)
# TORCH_SPEC=SPEC       the torch requirement (default: the Dockerfile's)
# DEBIAN_MIRROR=URL     where debootstrap fetches Debian (default http://deb.debian.org/debian)
# The host's CA bundle is handed to pip, for networks that intercept TLS.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/ichseg:latest}
BASE=${ICHSEG_BASE_IMAGE:-localhost/ichseg-base:bookworm}

if ! podman image exists "$BASE"; then
    echo "[ichseg] making the base image $BASE with debootstrap"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    debootstrap --variant=minbase bookworm "$tmp/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$tmp/debootstrap.log" \
        || { tail -20 "$tmp/debootstrap.log"; exit 1; }
    tar -C "$tmp/rootfs" -c . | podman import --quiet - "$BASE"
fi

args=(--isolation=chroot --build-arg "BASE_IMAGE=$BASE" -t "$TAG"
      --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
if [ -n "${ICHSEG_WHEELS:-}" ]; then
    args+=(--build-context "wheels=$ICHSEG_WHEELS" --build-arg "PIP_EXTRA_ARGS=--find-links /wheels")
fi
if [ -n "${TORCH_SPEC:-}" ]; then
    args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
fi
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    args+=(--build-context certs=/etc/ssl/certs --build-arg PIP_CERT=/certs/ca-certificates.crt)
fi
echo "[ichseg] podman build ${args[*]} ."
podman build "${args[@]}" .
