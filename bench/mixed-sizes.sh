#!/usr/bin/env bash
# Mixed sizes over HTTP on one model folder: a 512x512 job alone and then a 256x256 job
# alone, each on a fresh server; then, on another fresh server, the 512x512 job with the
# 256x256 one submitted DELAY seconds after it. Prints each request's time, each
# server's peak RSS (VmHWM), and whether the images beside each other equal the ones
# made alone.
#
#   LATENTD=target/release/latentd bench/mixed-sizes.sh
#
# Settings (environment, defaults in brackets): MODEL_DIR [/tmp/latentd-sd15, written
# by bench/sd15_diffusers.py --write-only], LATENTD [target/release/latentd], STEPS [4],
# DELAY [15].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

model_dir="${MODEL_DIR:-/tmp/latentd-sd15}"
latentd="${LATENTD:-target/release/latentd}"
steps="${STEPS:-4}"
delay="${DELAY:-15}"
work="$(mktemp -d)"
source bench/server.sh
trap 'stop_server; rm -rf "$work"' EXIT

# generate NAME SIDE SEED: one PNG request, its status and time printed.
generate() {
  curl -s "http://127.0.0.1:$port/v1/generate" -H 'content-type: application/json' \
    -H 'accept: image/png' -o "$work/$1.png" -w "$1 (${2}x$2): %{http_code} in %{time_total} s\n" \
    -d "{\"prompt\": \"a red circle above a blue square\", \"seed\": $3, \"steps\": $steps, \"width\": $2, \"height\": $2}"
}

# serve MODE: starts a server, runs MODE's requests, prints its peak RSS, stops it.
serve() {
  "$latentd" serve --model "$model_dir" --port 0 >"$work/$1.log" 2>"$work/$1.log.err" &
  pid=$!
  port="$(wait_for_port "$work/$1.log")"
  case "$1" in
    alone)
      generate big-alone 512 1
      generate small-alone 256 2
      ;;
    beside)
      generate big-beside 512 1 &
      local big=$!
      sleep "$delay"
      generate small-beside 256 2
      wait "$big"
      ;;
  esac
  echo "$1: server peak RSS $(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status") MiB"
  stop_server
}

serve alone
serve beside
for name in big small; do
  if cmp -s "$work/$name-alone.png" "$work/$name-beside.png"; then
    echo "$name: the image beside the other job equals the one made alone"
  else
    echo "$name: the images differ" >&2
    exit 1
  fi
done
