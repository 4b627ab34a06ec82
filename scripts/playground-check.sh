#!/usr/bin/env bash
# The playground in a real browser: installs Chromium from Debian's packages if it is
# missing and websocket-client into a temporary venv, then runs
# scripts/playground_check.py against a built `latentd` binary.
#
#   scripts/playground-check.sh PATH/TO/latentd
set -euo pipefail

bin="${1:?usage: playground-check.sh PATH/TO/latentd}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
browser="$(command -v chromium || true)"
if [[ -z "$browser" ]]; then
  sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  browser="$(command -v chromium)"
fi
"$browser" --version
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q websocket-client==1.8.0
"$venv/bin/python" scripts/playground_check.py "$bin" "$browser"
