#!/usr/bin/env bash
# Model comparison: latentd against diffusers on one SD1.5-size random-weight pipeline
# folder, on one device, in one run. Writes the folder if missing (bench/sd15_diffusers.py
# --write-only), builds latentd (OpenBLAS and oneDNN on the CPU, scripts/build-cuda.sh for CUDA),
# runs `latentd bench` and then bench/sd15_diffusers.py alone, each timing the text
# encoder (2 prompts), the guided UNet step per size and row count, the VAE decode and a
# whole DDIM generation at the largest size (one warm-up, median of RUNS), and prints a
# markdown table of medians and latentd/diffusers ratios with both peak RSS figures.
#
#   bench/sd15-compare.sh                      # CPU, f32, 256 and 512, 20 steps (~25 min here)
#   DEVICE=cuda:0 ROWS=2,8,32 bench/sd15-compare.sh
#   SIZES=256 STEPS=0 RUNS=1 bench/sd15-compare.sh   # a quick check
#
# Settings (environment, defaults in brackets):
#   DEVICE [cpu]  DTYPE [f32 on the CPU, f16 on CUDA]  SIZES [256,512]  ROWS [2]
#   STEPS [20]  RUNS [3]  MODEL_DIR [/tmp/latentd-sd15]
#   PYTHON [/work/venv/bin/python]: with tests/fixtures/requirements.txt installed
#   LATENTD [built here]: a latentd binary to use instead of building one
#   LATENTD_FEATURES [openblas,onednn]: cargo features of the CPU build
#   OUT [a temporary folder]: where latentd.json and diffusers.json are kept
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

device="${DEVICE:-cpu}"
case "$device" in
  cpu) default_dtype=f32 ;;
  cuda*) default_dtype=f16 ;;
  *) echo "sd15-compare: DEVICE is cpu or cuda:N, not $device" >&2; exit 2 ;;
esac
dtype="${DTYPE:-$default_dtype}"
sizes="${SIZES:-256,512}"
rows="${ROWS:-2}"
steps="${STEPS:-20}"
runs="${RUNS:-3}"
model_dir="${MODEL_DIR:-/tmp/latentd-sd15}"
python="${PYTHON:-/work/venv/bin/python}"

if [[ -n "${OUT:-}" ]]; then
  work="$OUT"
  mkdir -p "$work"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi

echo "== the pipeline folder $model_dir" >&2
"$python" bench/sd15_diffusers.py "$model_dir" --write-only

latentd="${LATENTD:-}"
if [[ -z "$latentd" ]]; then
  echo "== building latentd (release)" >&2
  if [[ "$device" == cuda* ]]; then
    latentd="$(scripts/build-cuda.sh | tail -n1)"
  else
    cargo build --release --locked -p latentd-server --features "${LATENTD_FEATURES:-openblas,onednn}" --bin latentd >&2
    latentd="${CARGO_TARGET_DIR:-target}/release/latentd"
  fi
fi

bench_args=(--device "$device" --dtype "$dtype" --sizes "$sizes" --rows "$rows"
  --steps "$steps" --runs "$runs")
echo "== latentd bench" >&2
"$latentd" bench --model "$model_dir" "${bench_args[@]}" --json "$work/latentd.json" >&2
echo "== diffusers" >&2
"$python" bench/sd15_diffusers.py "$model_dir" "${bench_args[@]}" --json "$work/diffusers.json" >&2

python3 - "$work/latentd.json" "$work/diffusers.json" <<'EOF'
import json
import sys

ours, theirs = (json.load(open(path)) for path in sys.argv[1:3])


def key(m):
    return (m["part"], m["size"], m["rows"])


def label(part, size, rows):
    return {
        "text_encoder": "text encoder, 2 prompts",
        "unet_step": f"guided UNet step {size}x{size}, {rows} rows",
        "vae_decode": f"VAE decode {size}x{size}",
        "generation": f"whole generation {size}x{size}",
    }[part]


by_key = {key(m): m for m in theirs["measurements"]}
print(f"latentd on {ours['device']} ({ours['dtype']}) vs {theirs['version']} "
      f"on {theirs['device']} ({theirs['dtype']}, {theirs['threads']} threads)")
print()
print("| work | latentd median s | diffusers median s | ratio (latentd / diffusers) |")
print("|---|---:|---:|---:|")
for m in ours["measurements"]:
    other = by_key.get(key(m))
    if other is None:
        continue
    ratio = m["median_s"] / other["median_s"]
    print(f"| {label(*key(m))} | {m['median_s']:.3f} | {other['median_s']:.3f} | {ratio:.2f}x |")


def mib(value):
    return "n/a" if value is None else f"{value:.0f} MiB"


print(f"| peak RSS | {mib(ours['peak_rss_mib'])} | {mib(theirs['peak_rss_mib'])} | |")
if ours.get("peak_device_mib") is not None or theirs.get("peak_device_mib") is not None:
    print(f"| peak device memory | {mib(ours.get('peak_device_mib'))} | "
          f"{mib(theirs.get('peak_device_mib'))} | |")
EOF
