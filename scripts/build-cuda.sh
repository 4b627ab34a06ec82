#!/usr/bin/env bash
# Builds the CUDA binary of `latentd` on any x86-64 Linux machine, GPU or not: NVIDIA's
# CUDA 13.0 wheels from PyPI are the toolkit, so no system CUDA install is needed.
#
#   scripts/build-cuda.sh [--check] [--runtime-libs DIR]
#
#   --check              `cargo check` the CUDA build (all crates, tests included) instead of
#                        building: what CI runs to keep the cuda-only code compiling.
#   --runtime-libs DIR   also copy the CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC,
#                        cudart) into DIR, for an image without a CUDA install.
#
# In build mode the path of the binary is the last line on stdout; pip and cargo talk on
# stderr. Environment:
#   CUDA_COMPUTE_CAP     the GPU generation the kernels are compiled for (default 90: H100 and
#                        H200; 80: A100; 89: L4/L40). Newer GPUs JIT-compile the PTX.
#   LATENTD_CUDA_TOOLKIT where the toolkit lives (default: <target dir>/cuda-toolkit); made
#                        once, reused while the pins below are unchanged.
#   CARGO_TARGET_DIR     as for cargo (default: target). The binary is built under its
#                        cuda/ subfolder, so it never replaces the CPU build's binary.
#
# The toolkit is pinned: cudarc 0.19 rejects a newer nvcc, and the PTX of a newer one does
# not JIT on a 580 driver. The binary links libcuda.so.1 dynamically; here it is linked
# against a stub made from cudarc's list of driver functions (lib64/stubs, never shipped:
# at run time the driver's own libcuda is used). At run time the wheel libraries (or any CUDA 13
# install's, e.g. PyTorch cu130's) must be on LD_LIBRARY_PATH.
set -euo pipefail

mode=build
runtime_libs=""
while (($#)); do
  case "$1" in
    --check) mode=check; shift ;;
    --runtime-libs) runtime_libs="${2:?--runtime-libs needs a directory}"; shift 2 ;;
    --runtime-libs=*) runtime_libs="${1#--runtime-libs=}"; shift ;;
    -h | --help) sed -n '2,25s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$repo/$target_dir"
toolkit="${LATENTD_CUDA_TOOLKIT:-$target_dir/cuda-toolkit}"

wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-nvvm==13.0.88
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)
pins="${wheels[*]}"

# --- the toolkit: the wheels in a venv, a CUDA_ROOT of links into them, the libcuda stub
if [[ "$(cat "$toolkit/pins" 2>/dev/null)" != "$pins" ]]; then
  echo "build-cuda.sh: installing the CUDA 13.0 toolkit wheels into $toolkit" >&2
  rm -rf "$toolkit"
  mkdir -p "$toolkit"
  python3 -m venv "$toolkit/venv"
  "$toolkit/venv/bin/pip" install --quiet --disable-pip-version-check "${wheels[@]}" >&2
  cu13="$("$toolkit/venv/bin/python" -c \
    'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
  [[ -x "$cu13/bin/nvcc" ]] || { echo "build-cuda.sh: no nvcc in $cu13" >&2; exit 1; }

  root="$toolkit/root"
  mkdir -p "$root/lib64"
  for dir in bin include nvvm; do ln -s "$cu13/$dir" "$root/$dir"; done
  # The libraries under the names the linker looks for (the wheels ship only sonames).
  for lib in "$cu13"/lib/lib*.so.*; do
    name="$(basename "$lib")"
    ln -s "$lib" "$root/lib64/$name"
    ln -sf "$name" "$root/lib64/${name%%.so.*}.so"
  done
  # Link-only libcuda: one empty function per driver entry point cudarc declares.
  cudarc_src="$(cargo metadata --locked --format-version 1 --features latentd-server/cuda \
    --manifest-path "$repo/Cargo.toml" |
    python3 -c 'import json, sys, os
pkgs = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "cudarc"))')"
  grep -ho 'pub unsafe fn cu[A-Za-z0-9_]*' "$cudarc_src/src/driver/sys/mod.rs" |
    awk '{print "void " $4 "(void) {}"}' | sort -u >"$toolkit/libcuda_stub.c"
  [[ -s "$toolkit/libcuda_stub.c" ]] || { echo "build-cuda.sh: no driver functions found" >&2; exit 1; }
  # In lib64/stubs, where cudarc's build script looks and the loader never does (the
  # loader wants libcuda.so.1).
  mkdir -p "$root/lib64/stubs"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/stubs/libcuda.so" "$toolkit/libcuda_stub.c"
  echo "$pins" >"$toolkit/pins"
fi

root="$toolkit/root"
export CUDA_ROOT="$root" CUDA_HOME="$root" CUDA_PATH="$root"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LD_LIBRARY_PATH="$root/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

nvcc --version | grep -q 'release 13.0' || { echo "build-cuda.sh: nvcc is not CUDA 13.0" >&2; exit 1; }

if [[ "$mode" == check ]]; then
  cargo check --locked --workspace --all-targets --features latentd-server/cuda >&2
  exit 0
fi

cargo build --release --locked -p latentd-server --features cuda --bin latentd \
  --target-dir "$target_dir/cuda" >&2
binary="$target_dir/cuda/release/latentd"
[[ -x "$binary" ]] || { echo "build-cuda.sh: no binary at $binary" >&2; exit 1; }

if [[ -n "$runtime_libs" ]]; then
  mkdir -p "$runtime_libs"
  for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 \
    libnvrtc-builtins.so.13.0 libcudart.so.13; do
    cp -L "$root/lib64/$lib" "$runtime_libs/"
  done
fi
echo "$binary"
