# syntax=docker/dockerfile:1
#
# latentd container image, CPU or CUDA, from one Dockerfile:
#
#   docker build -t latentd:latest-cpu .
#   docker build --build-arg VARIANT=cuda -t latentd:latest-cuda .
#
# VARIANT picks the builder and runtime stages by name (builder-cpu / builder-cuda,
# runtime-cpu / runtime-cuda); BuildKit builds only the stages the chosen ones need.
# Both variants compile with the same pinned Rust toolchain through the build scripts CI
# uses too: scripts/build-release.sh (CPU) and scripts/build-cuda.sh (CUDA, with NVIDIA's
# CUDA 13.0 wheels from PyPI as the toolkit). See deploy/README.md.

ARG VARIANT=cpu
ARG RUST_TOOLCHAIN=1.95.0

# ---------------------------------------------------------------------------- builders

FROM rust:${RUST_TOOLCHAIN}-slim-bookworm AS builder-cpu
# The CPU build takes its matrix products from OpenBLAS and its convolutions from oneDNN
# (the `openblas` and `onednn` features).
ENV LATENTD_FEATURES="openblas,onednn" \
    LATENTD_BUILD="scripts/build-release.sh" \
    CARGO_TARGET_DIR=/cargo-target/cpu
# Unpinned apt packages: the Debian archive drops superseded versions, so pins would break
# the build at the next security update; the base image tag is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas-dev libdnnl-dev \
 && rm -rf /var/lib/apt/lists/*

FROM rust:${RUST_TOOLCHAIN}-slim-bookworm AS builder-cuda
# No GPU is visible during `docker build`, so candle's kernels cannot detect the compute
# capability: they are compiled for this one (90 = H100/H200; 80 = A100, whose PTX is
# JIT-compiled on newer GPUs). The toolkit (pinned CUDA 13.0 wheels) is installed by
# scripts/build-cuda.sh into the cached target dir; it needs python3-venv and a C compiler
# (for the link-only libcuda stub).
ARG CUDA_COMPUTE_CAP=90
ENV LATENTD_BUILD="scripts/build-cuda.sh --runtime-libs /out/cuda-libs" \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CARGO_TARGET_DIR=/cargo-target/cuda
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*

# ------------------------------------------------------------------------------- build

# DL3006 (untagged image) misreads this: builder-* are stages of this file.
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the per-variant target dir (and the CUDA
# toolkit) between builds; the binary is copied out of the cache within the same step.
# LATENTD_BUILD is the variant's build script; it prints the binary's path on stdout.
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/cargo-target,sharing=locked \
    bin="$(bash ${LATENTD_BUILD})" \
 && install -D -m 0755 "${bin}" /out/latentd \
 && install -D -m 0755 scripts/healthcheck.sh /out/latentd-healthcheck

# ---------------------------------------------------------------------------- runtimes

FROM debian:bookworm-slim AS runtime-cpu
# OpenBLAS and oneDNN, which the CPU binary links (both pick their kernels for the CPU
# they run on).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas0-pthread libdnnl2 \
 && rm -rf /var/lib/apt/lists/*

# The CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC, cudart: the toolkit's own,
# copied out by scripts/build-cuda.sh); the driver (libcuda) is mounted in by the NVIDIA
# container toolkit at run time, which these variables ask for.
FROM debian:bookworm-slim AS runtime-cuda
COPY --from=build /out/cuda-libs/ /usr/local/lib/latentd-cuda/
# The home directory does not exist: keep the CUDA JIT cache somewhere writable.
ENV LD_LIBRARY_PATH=/usr/local/lib/latentd-cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_CACHE_PATH=/tmp/cuda-cache

# runtime-* are stages of this file (see DL3006 above).
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
# A fixed uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be chowned.
RUN groupadd --system --gid 10001 latentd \
 && useradd --system --uid 10001 --gid latentd --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin latentd
COPY --from=build /out/latentd /out/latentd-healthcheck /usr/local/bin/

ENV LATENTD_HOST=0.0.0.0 \
    LATENTD_PORT=8080 \
    LATENTD_LOG=info
VOLUME /models
EXPOSE 8080
USER 10001:10001

# `latentd-healthcheck` is scripts/healthcheck.sh: a bash /dev/tcp request, so the image
# carries no curl or wget. start-period covers loading a large model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["latentd-healthcheck", "/health"]

# SIGTERM starts the server's graceful shutdown (LATENTD_SHUTDOWN_GRACE_SECS, default 30):
# give `docker stop` a longer timeout than that (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["latentd"]
CMD ["serve"]
