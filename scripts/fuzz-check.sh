#!/usr/bin/env bash
# Schema-driven fuzzing of a built `latentd` binary: serve the tiny SD1 fixture on a free
# port and run schemathesis against the document it serves (/openapi.json, which states
# this server's limits and model), with every check, a fixed seed and a time budget.
# Fails on any failure; prints the number of generated cases.
#
#   scripts/fuzz-check.sh PATH/TO/latentd
#
# LATENTD_FUZZ_VENV: a virtual environment to reuse (schemathesis is installed into it
# when missing); by default one is made in a temporary folder and removed after.
# LATENTD_FUZZ_SECONDS (default 180) and LATENTD_FUZZ_SEED (default 1) set the budget
# and the seed. scripts/fuzz_hooks.py makes the image files it sends real PNGs and keeps
# prompts within the token limit, scripts/schemathesis.toml takes /ready's 503 while
# saturated for what it is (see there why).
set -euo pipefail

bin="${1:?usage: fuzz-check.sh PATH/TO/latentd}"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
version="4.32.5"
seconds="${LATENTD_FUZZ_SECONDS:-180}"
seed="${LATENTD_FUZZ_SEED:-1}"

work="$(mktemp -d)"
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

venv="${LATENTD_FUZZ_VENV:-$work/venv}"
if [[ ! -x "$venv/bin/st" ]] || [[ "$("$venv/bin/st" --version 2>/dev/null)" != *"$version"* ]]; then
  echo "fuzz: installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
"$venv/bin/st" --version

# Small limits keep each case quick; the served document states them, so the fuzzer
# also checks that the document follows the server's flags.
LATENTD_CACHE_DIR="$work/cache" "$bin" serve --model "$root/tests/fixtures/sd1-tiny" --port 0 \
  --default-steps 4 --max-steps 8 --max-n 2 --max-queue 16 \
  >"$work/out" 2>"$work/err" &
pid=$!

port=""
for _ in $(seq 1 300); do
  port="$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$work/out" | head -n1)"
  [[ -n "$port" ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; echo "fuzz: server exited early" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$port" ]] || { cat "$work/err" >&2; echo "fuzz: no port logged" >&2; exit 1; }
echo "fuzz: serving on port $port; running schemathesis for ${seconds}s (seed $seed)"

status=0
(
  cd "$work"
  SCHEMATHESIS_HOOKS=fuzz_hooks PYTHONPATH="$root/scripts" "$venv/bin/st" --no-color \
    --config-file "$root/scripts/schemathesis.toml" run \
    "http://127.0.0.1:$port/openapi.json" \
    --checks all --seed "$seed" --max-time "$seconds" --workers 2 \
    --generation-database none --request-timeout 60
) >"$work/st.log" 2>&1 || status=$?
cat "$work/st.log"

cases="$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$work/st.log" | tail -n1)"
kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; echo "fuzz: the server died during the run" >&2; exit 1; }
echo "fuzz: ${cases:-?} cases generated"
if [[ "$status" != 0 ]]; then
  echo "fuzz: schemathesis reported failures (exit status $status)" >&2
  exit 1
fi
echo "fuzz: no failures"
