#!/usr/bin/env bash
# The one build step for release binaries of `latentd`, shared by the Dockerfile and CI.
#
#   scripts/build-release.sh [--features LIST] [--check]
#
#   --features LIST  Cargo features of latentd-server, e.g. `cuda` (default: $LATENTD_FEATURES,
#                    else none, the CPU build).
#   --check          `cargo check` the same selection instead of building: fast, no binary.
#
# In build mode the path of the binary is the only line on stdout; cargo talks on stderr.
# Honours CARGO_TARGET_DIR. Needs the committed Cargo.lock (--locked).
#
# `--features cuda` needs the CUDA toolkit even with --check: cudarc's build script runs
# `nvcc --version` and candle-kernels' compiles its kernels with nvcc. scripts/build-cuda.sh
# brings a pinned toolkit and builds the CUDA binary; use it instead.
set -euo pipefail

features="${LATENTD_FEATURES:-}"
mode=build
while (($#)); do
  case "$1" in
    --features) features="${2:?--features needs a value}"; shift 2 ;;
    --features=*) features="${1#--features=}"; shift ;;
    --check) mode=check; shift ;;
    -h | --help) sed -n '2,16s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-release.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

args=(--locked -p latentd-server)
if [[ -n "$features" ]]; then
  args+=(--features "$features")
fi

if [[ "$mode" == check ]]; then
  cargo check "${args[@]}"
  exit 0
fi

cargo build --release "${args[@]}" --bin latentd >&2

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$PWD/$target_dir"
binary="$target_dir/release/latentd"
[[ -x "$binary" ]] || { echo "build-release.sh: no binary at $binary" >&2; exit 1; }
echo "$binary"
