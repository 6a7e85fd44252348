# syntax=docker/dockerfile:1
#
# ichseg BIDS-App image. Build and run instructions: docs/docker.md.
#
#   docker build -t ichseg .                               # CUDA-enabled torch from PyPI (large)
#   docker build -t ichseg:cpu \
#     --build-arg TORCH_SPEC="torch==2.13.0+cpu" \
#     --build-arg PIP_EXTRA_ARGS="--index-url https://download.pytorch.org/whl/cpu" .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out ichseg /bids /out participant
#
# BASE_IMAGE: Debian 12 with python3 3.11 (the venv is copied between stages that must have the
# same interpreter). A local image made with debootstrap works too (docs/docker.md, tests).
ARG BASE_IMAGE=debian:bookworm-slim

# Stages: "wheels" (optional local wheels), "builder" (venv with ichseg and its dependencies),
# "assets" (optionally baked weights/templates), and the final runtime image, which gets only
# the venv and the assets: no compilers, no pip cache, no source tree.

# An empty stage by default. Replace it with a folder of wheels with
# `--build-context wheels=DIR` (BuildKit and podman/buildah let a named context override a stage
# of the same name) and point pip at it with --build-arg PIP_EXTRA_ARGS="--find-links /wheels".
FROM scratch AS wheels

# Likewise an empty stage for CA certificates: behind a TLS-intercepting proxy, pass the
# host's with `--build-context certs=/etc/ssl/certs --build-arg PIP_CERT=/certs/ca-certificates.crt`.
FROM scratch AS certs


FROM ${BASE_IMAGE} AS builder

# python3-venv gives ensurepip (Debian's python3 has no pip of its own); ca-certificates lets
# the optional asset pre-fetch (and pip, for index mirrors without bundled certs) speak HTTPS.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A venv, not the system site-packages: Debian marks them externally managed (PEP 668), and one
# folder is simple to copy into the runtime stage, where the same python3.11 lives at the same path.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, in its own layer: it is the biggest download and changes least often, so edits of
# ichseg's code reuse this layer. TORCH_SPEC/PIP_EXTRA_ARGS choose the build (CUDA from PyPI by
# default, or CPU from the PyTorch index or local wheels); PIP_EXTRA_ARGS applies to this step
# only, so that an --index-url meant for torch does not hide PyPI from the other dependencies.
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_ARGS=""
ARG PIP_CERT=""
RUN --mount=type=bind,from=wheels,target=/wheels --mount=type=bind,from=certs,target=/certs \
    pip install ${PIP_CERT:+--cert "$PIP_CERT"} ${PIP_EXTRA_ARGS} "${TORCH_SPEC}"

# The dependencies (setup.cfg's install_requires) in a layer of their own, before the code: an
# edit of ichseg's code then rebuilds a layer of about 1 MB instead of all of them (about 1 GB).
# The torch installed above satisfies ichseg's torch requirement, so pip keeps it.
COPY setup.cfg /src/
RUN --mount=type=bind,from=certs,target=/certs \
    python -c "import configparser; c = configparser.ConfigParser(); c.read('/src/setup.cfg'); print(c['options']['install_requires'])" > /tmp/requirements.txt \
 && pip install ${PIP_CERT:+--cert "$PIP_CERT"} -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Only what the package build needs (setup.cfg reads README.md for long_description).
COPY pyproject.toml README.md /src/
COPY ichseg /src/ichseg
COPY pipeline /src/pipeline
COPY bids_app /src/bids_app
# Not editable: the runtime stage gets the installed package, not /src. `pip check` fails the
# build when the dependencies installed above do not satisfy the package.
RUN --mount=type=bind,from=certs,target=/certs \
    pip install ${PIP_CERT:+--cert "$PIP_CERT"} --no-deps /src \
 && pip check


FROM builder AS assets
# PREFETCH_ASSETS=1 bakes the runtime assets (CT templates, BLAST-CT v1 weights and config,
# atlas; about 50 MB) into /opt/ichseg-data, each verified against its sha256. It downloads them
# from GitHub at build time, so it is off by default. With 0 the folder stays empty and is a
# mount point for a data folder at run time.
ARG PREFETCH_ASSETS=0
RUN mkdir -p /opt/ichseg-data \
 && if [ "${PREFETCH_ASSETS}" = "1" ]; then \
        NIPYPE_NO_ET=1 ICHSEG_CACHE_DIR=/opt/ichseg-data \
            python -m ichseg.pipeline.assets --group runtime; \
    elif [ "${PREFETCH_ASSETS}" != "0" ]; then \
        echo "PREFETCH_ASSETS must be 0 or 1, not '${PREFETCH_ASSETS}'" >&2; exit 1; \
    fi


FROM ${BASE_IMAGE}

# Runtime needs only the interpreter the venv links to, and CA certificates for the asset
# download (urllib uses the system trust store). torch, ANTsPy and SimpleITK wheels bundle
# their native libraries (libgomp included).
# The user "ichseg" (uid 1000) is the default; runs with any `--user UID:GID` work too, because
# HOME and the download cache are world-writable (sticky, like /tmp).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --user-group --shell /bin/bash ichseg \
 && mkdir -p /opt/ichseg-cache \
 && chmod 1777 /home/ichseg /opt/ichseg-cache

COPY --from=builder /opt/venv /opt/venv
COPY --from=assets /opt/ichseg-data /opt/ichseg-data

# ICHSEG_DATA_DIR: the baked assets, or a data folder mounted here (an empty folder is skipped).
# ICHSEG_CACHE_DIR: where missing assets are downloaded; mount a volume to keep them across runs.
# NIPYPE_NO_ET: nipype's start-up version check would stall on clusters without internet.
# OMP/BLAS at 1 thread: ichseg sets the threads of torch and ANTs itself (--omp-nthreads) and
# runs scans side by side (--n-procs), so libraries must not each spawn one thread per core.
# USER/LOGNAME: getpass.getuser() (called by some libraries, e.g. torch's caches) raises for a
# `--user UID` that has no passwd entry unless one of these is set.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/ichseg \
    USER=ichseg \
    LOGNAME=ichseg \
    ICHSEG_DATA_DIR=/opt/ichseg-data \
    ICHSEG_CACHE_DIR=/opt/ichseg-cache \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1

USER ichseg
WORKDIR /home/ichseg

# Smoke test at build time, as the unprivileged user: the CLI starts and every heavy dependency
# imports. HOME points elsewhere so that caches written by the imports stay out of the image.
RUN export HOME=/tmp/smoke \
 && ichseg --version \
 && ichseg --help > /dev/null \
 && python -c "import ichseg.pipeline.workflows.base, ichseg.bids_app.run, ants, torch, blast_ct, bids; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && python -m ichseg.pipeline.assets --list > /dev/null \
 && rm -rf /tmp/smoke

ENTRYPOINT ["ichseg"]
CMD ["--help"]

# Last, so that a new revision or date does not invalidate the cached layers above.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="ichseg" \
      org.opencontainers.image.description="BIDS-App that segments intracranial hemorrhage on non-contrast head CT and reports volumes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
