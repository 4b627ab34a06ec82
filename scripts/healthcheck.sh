#!/usr/bin/env bash
# Container health probe for latentd: exits 0 when GET PATH (default /health) answers 200,
# 1 otherwise. Installed in the image as `latentd-healthcheck`.
#
# Pure bash (/dev/tcp), so the runtime image needs neither curl nor wget: no extra
# packages to patch, and the probe does exactly one plain HTTP request (no redirects,
# no proxy variables). The server must answer within LATENTD_HEALTHCHECK_TIMEOUT seconds.
#
#   latentd-healthcheck [PATH]
#   LATENTD_HEALTHCHECK_HOST (default 127.0.0.1), LATENTD_PORT (default 8080)
set -uo pipefail

host="${LATENTD_HEALTHCHECK_HOST:-127.0.0.1}"
port="${LATENTD_PORT:-8080}"
path="${1:-/health}"
timeout="${LATENTD_HEALTHCHECK_TIMEOUT:-5}"

# Prints the status code of GET $path, or fails.
status_of() {
  exec 3<>"/dev/tcp/${host}/${port}" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' \
    "$path" "$host" "$port" >&3 || return 1
  local version code
  IFS=' ' read -r -t "$timeout" version code _ <&3 || return 1
  exec 3<&-
  [[ "$version" == HTTP/1.* ]] || return 1
  printf '%s\n' "${code%$'\r'}"
}

code="$(status_of 2>/dev/null)" || code="no answer"
if [[ "$code" == 200 ]]; then
  exit 0
fi
echo "latentd-healthcheck: GET ${path} on ${host}:${port}: ${code}" >&2
exit 1
