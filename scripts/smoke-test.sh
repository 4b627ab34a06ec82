#!/usr/bin/env bash
# Smoke test of a built `latentd` binary the way the container runs it: start
# `latentd serve` on a free port, probe it with the image's health check, generate one
# PNG over HTTP, then send SIGTERM and expect a clean, graceful exit. Without MODEL_DIR
# it serves the built-in model, as the container's default command does.
#
#   scripts/smoke-test.sh PATH/TO/latentd [MODEL_DIR]
set -euo pipefail

bin="${1:?usage: smoke-test.sh PATH/TO/latentd [MODEL_DIR]}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
model_args=()
if [[ -n "${2:-}" ]]; then model_args=(--model "$2"); fi

"$bin" --version
LATENTD_CACHE_DIR="$work/cache" "$bin" serve "${model_args[@]}" --port 0 --shutdown-grace-secs 20 \
  >"$work/out" 2>"$work/err" &
pid=$!

port=""
for _ in $(seq 1 100); do
  port="$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$work/out" | head -n1)"
  [[ -n "$port" ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; echo "smoke: server exited early" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$port" ]] || { cat "$work/err" >&2; echo "smoke: no port logged" >&2; exit 1; }
echo "smoke: serving on port $port"

LATENTD_PORT="$port" bash scripts/healthcheck.sh /health
LATENTD_PORT="$port" bash scripts/healthcheck.sh /ready

# One PNG through plain HTTP/1.1 over bash's /dev/tcp (no curl needed).
body='{"prompt":"a red circle","steps":4,"seed":1}'
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: image/png\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
  "${#body}" "$body" >&3
head -c 4096 <&3 >"$work/response" || true
exec 3<&-
grep -q "HTTP/1.1 200" "$work/response" || { cat "$work/response" >&2; echo "smoke: generate failed" >&2; exit 1; }
grep -aq "x-seed: 1" "$work/response" || { echo "smoke: no x-seed header" >&2; exit 1; }
grep -aq "PNG" "$work/response" || { echo "smoke: no PNG body" >&2; exit 1; }
echo "smoke: generated a PNG"

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[[ "$status" == 0 ]] || { cat "$work/err" >&2; echo "smoke: exit status $status after SIGTERM" >&2; exit 1; }
grep -q "shutting down" "$work/err" || { cat "$work/err" >&2; echo "smoke: no graceful shutdown logged" >&2; exit 1; }
echo "smoke: graceful shutdown on SIGTERM"
