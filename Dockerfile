# syntax=docker/dockerfile:1
#
# latentd container image, CPU or CUDA, from one Dockerfile:
#
#   docker build -t latentd:latest-cpu .
#   docker build --build-arg VARIANT=cuda -t latentd:latest-cuda .
#
# VARIANT picks the builder and runtime stages by name (builder-cpu / builder-cuda,
# runtime-cpu / runtime-cuda); BuildKit builds only the stages the chosen ones need.
# Both variants compile with the same pinned Rust toolchain through
# scripts/build-release.sh, the build step CI uses too. See deploy/README.md.

ARG VARIANT=cpu
ARG RUST_TOOLCHAIN=1.95.0
ARG CUDA_VERSION=12.6.3

# ---------------------------------------------------------------------------- builders

FROM rust:${RUST_TOOLCHAIN}-slim-bookworm AS builder-cpu
# The CPU build takes its matrix products from OpenBLAS (the `openblas` feature).
ENV LATENTD_FEATURES="openblas" \
    CARGO_TARGET_DIR=/cargo-target/cpu
# Unpinned: see the note on the CUDA builder's apt packages below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas-dev \
 && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS builder-cuda
ARG RUST_TOOLCHAIN
# No GPU is visible during `docker build`, so candle's kernels cannot detect the compute
# capability: they are compiled for this one (80 = A100; its PTX is JIT-compiled on newer
# GPUs such as the H100; pass 90 to target Hopper natively).
ARG CUDA_COMPUTE_CAP=80
ENV LATENTD_FEATURES=cuda \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CARGO_TARGET_DIR=/cargo-target/cuda \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned apt packages: the Ubuntu archive drops superseded versions, so pins would break
# the build at the next security update; the base image tag is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_TOOLCHAIN}" \
 && rustc --version

# ------------------------------------------------------------------------------- build

# DL3006 (untagged image) misreads this: builder-* are stages of this file.
# hadolint ignore=DL3006
FROM builder-${VARIANT} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the per-variant target dir between builds;
# the binary is copied out of the cache within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/cargo-target,sharing=locked \
    bin="$(bash scripts/build-release.sh)" \
 && install -D -m 0755 "${bin}" /out/latentd \
 && install -D -m 0755 scripts/healthcheck.sh /out/latentd-healthcheck

# ---------------------------------------------------------------------------- runtimes

FROM debian:bookworm-slim AS runtime-cpu
# OpenBLAS, which the CPU binary links (it picks its kernels for the CPU it runs on).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas0-pthread \
 && rm -rf /var/lib/apt/lists/*

# The CUDA runtime image carries cudart, cuBLAS, cuRAND and NVRTC, which the binary links;
# the driver (libcuda) is mounted in by the NVIDIA container toolkit at run time.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS runtime-cuda
# The home directory does not exist: keep the CUDA JIT cache somewhere writable.
ENV CUDA_CACHE_PATH=/tmp/cuda-cache

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
