#!/usr/bin/env bash
# Serving comparison: latentd against a small diffusers + FastAPI server that runs one
# request at a time (bench/diffusers_server.py, the way most users wrap diffusers), on
# the same pipeline folder with the same load, sent by the loadtest example's --url
# mode. Each server is started alone, warmed up with one request, measured, and
# stopped; then a markdown table compares images/s and latency.
#
#   bench/serve-compare.sh
#   REQUESTS=8 CONCURRENCY=4 bench/serve-compare.sh     # a quick check
#
# Settings (environment, defaults in brackets):
#   MODEL [tests/fixtures/sd1-tiny]  REQUESTS [32]  CONCURRENCY [16]  STEPS [20]
#   SCHEDULER [ddim]  GUIDANCE [7.5]  WIDTH [64]  HEIGHT [64]
#   MAX_BATCH_ROWS [32, latentd serve's default]  MAX_QUEUE [max(64, REQUESTS)]
#   PYTHON [/work/venv/bin/python]: with torch, diffusers and bench/requirements.txt
#   LATENTD_FEATURES [none]: cargo features of latentd-server for the build
#   DEVICE [cpu]: cpu or cuda:N for both servers (latentd --devices, diffusers --device;
#     f16 on CUDA for both); a cuda device builds latentd with scripts/build-cuda.sh
#   LATENTD [built here]: a latentd binary to use instead of building one
# sd1-tiny's native size is 32x32 and latentd accepts up to twice that: 64x64 is its
# largest size, which diffusers accepts too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

model="${MODEL:-tests/fixtures/sd1-tiny}"
requests="${REQUESTS:-32}"
concurrency="${CONCURRENCY:-16}"
steps="${STEPS:-20}"
scheduler="${SCHEDULER:-ddim}"
guidance="${GUIDANCE:-7.5}"
width="${WIDTH:-64}"
height="${HEIGHT:-64}"
max_batch_rows="${MAX_BATCH_ROWS:-32}"
max_queue="${MAX_QUEUE:-$((requests > 64 ? requests : 64))}"
python="${PYTHON:-/work/venv/bin/python}"
features="${LATENTD_FEATURES:-}"
device="${DEVICE:-cpu}"

echo "== building latentd and the loadtest example (release)" >&2
build_args=(--release --locked -p latentd-server)
if [[ -n "$features" ]]; then build_args+=(--features "$features"); fi
target_dir="${CARGO_TARGET_DIR:-target}"
if [[ -n "${LATENTD:-}" ]]; then
  cargo build "${build_args[@]}" --example loadtest >&2
  latentd="$LATENTD"
elif [[ "$device" == cuda* ]]; then
  cargo build "${build_args[@]}" --example loadtest >&2
  latentd="$(scripts/build-cuda.sh | tail -n1)"
else
  cargo build "${build_args[@]}" --bin latentd --example loadtest >&2
  latentd="$target_dir/release/latentd"
fi
loadtest="$target_dir/release/examples/loadtest"

work="$(mktemp -d)"
source bench/server.sh
trap 'stop_server; rm -rf "$work"' EXIT

load=(--requests "$requests" --concurrency "$concurrency" --steps "$steps"
  --scheduler "$scheduler" --guidance "$guidance" --width "$width" --height "$height")
failed=0

# Warms the server at $1 up with one request, then sends the load; the loadtest's
# output goes to $2.
measure() {
  local base="$1" out="$2"
  "$loadtest" --url "$base" "${load[@]}" --requests 1 --concurrency 1 >"$out.warmup" ||
    { cat "$out.warmup" >&2; echo "serve-compare: warm-up request to $base failed" >&2; failed=1; }
  if ! "$loadtest" --url "$base" "${load[@]}" >"$out"; then failed=1; fi
  cat "$out" >&2
}

echo "== latentd (--max-batch-rows $max_batch_rows, --max-queue $max_queue)" >&2
"$latentd" serve --model "$model" --port 0 --max-batch-rows "$max_batch_rows" \
  --max-queue "$max_queue" --devices "$device" >"$work/latentd.log" 2>"$work/latentd.log.err" &
pid=$!
port="$(wait_for_port "$work/latentd.log")"
sizes='import json, sys; m = json.load(sys.stdin)["data"][0]
print("native %sx%s, largest %sx%s" % (m["native_width"], m["native_height"], m["max_width"], m["max_height"]))'
sizes="$(curl -fsS "http://127.0.0.1:$port/v1/models" | "$python" -c "$sizes" || echo "unknown")"
echo "model $model: size $sizes (GET /v1/models); the load asks for ${width}x${height}" >&2
measure "http://127.0.0.1:$port" "$work/latentd.out"
stop_server

echo "== diffusers + FastAPI (one request at a time)" >&2
"$python" bench/diffusers_server.py --model "$model" --port 0 --device "$device" \
  >"$work/diffusers.log" 2>"$work/diffusers.log.err" &
pid=$!
port="$(wait_for_port "$work/diffusers.log")"
measure "http://127.0.0.1:$port" "$work/diffusers.out"
stop_server

# Fields of the loadtest's result line: images/s, p50 ms, p95 ms, statuses.
field() {
  local out="$1" what="$2"
  case "$what" in
    ips) sed -n 's#.* \([0-9.]*\) images/s.*#\1#p' "$out" ;;
    p50) sed -n 's#.* p50 \([0-9]*\) ms.*#\1#p' "$out" ;;
    p95) sed -n 's#.* p95 \([0-9]*\) ms.*#\1#p' "$out" ;;
    statuses) sed -n 's#.*statuses {\([^}]*\)}.*#\1#p' "$out" ;;
  esac | head -n1
}
row() {
  local name="$1" out="$2"
  echo "| $name | $(field "$out" ips) | $(field "$out" p50) | $(field "$out" p95) | $(field "$out" statuses) |"
}

a="$(field "$work/latentd.out" ips)"
b="$(field "$work/diffusers.out" ips)"
echo
echo "$requests requests, $concurrency in flight, ${width}x${height}, $steps $scheduler steps, guidance $guidance, model $model"
echo
echo "| server | images/s | p50 ms | p95 ms | statuses |"
echo "|---|---:|---:|---:|---|"
row "latentd (--max-batch-rows $max_batch_rows)" "$work/latentd.out"
row "diffusers + FastAPI (one at a time)" "$work/diffusers.out"
echo
awk -v a="${a:-0}" -v b="${b:-0}" 'BEGIN {
  if (b > 0) printf "throughput ratio (latentd / diffusers): %.2fx\n", a / b
  else print "throughput ratio: n/a (no diffusers images)"
}'
if ((failed)); then
  echo "serve-compare: some answers were not 200 with a PNG (see above)" >&2
  exit 1
fi
