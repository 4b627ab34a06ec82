#!/usr/bin/env python3
"""Offline checks of deploy/ that schema validators cannot make on their own.

    check-deploy.py --compose-schema SCHEMA [--repo DIR]

1. deploy/compose.yaml against the Compose specification's JSON schema (SCHEMA: the
   schema file, or a docker-compose wheel that carries compose/config/compose_spec.json),
   then what the services must have: the variant's image and build arg, the model volume
   read-only, port 8080, the image's health probe, a stop grace longer than latentd's,
   and a GPU reservation for the CUDA service.
2. deploy/kubernetes/: the objects refer to each other correctly (selectors, names,
   ports, claim), the probes use /health and /ready, the termination grace period covers
   preStop plus latentd's shutdown grace, and the pod's uid is the Dockerfile's USER.
   Schemas are kubernetes-validate's job (run separately); this checks the wiring.

Prints one line per check and exits 1 if any failed. Needs PyYAML and jsonschema.
"""

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

import jsonschema
import yaml

APP_GRACE_SECS = 30  # latentd's default LATENTD_SHUTDOWN_GRACE_SECS
PROBE_PATHS = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def load_schema(path):
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            schema = json.loads(wheel.read("compose/config/compose_spec.json"))
    else:
        schema = json.loads(path.read_text())
    # The 2021 schema shipped with docker-compose 1.29 predates the top-level project
    # `name` that Compose v2 reads; add it with the documented rule for project names.
    schema["properties"].setdefault("name", {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"})
    return schema


def dig(obj, *keys):
    """obj[k1][k2]..., or None where a level is missing or null."""
    for key in keys:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return None
        obj = obj[key]
    return obj


def seconds(duration):
    """Seconds of a Compose duration such as '45s' or '1m30s'."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", str(duration))
    if not parts or not any(parts.groups()):
        return None
    h, m, s = (int(g or 0) for g in parts.groups())
    return 3600 * h + 60 * m + s


def check_compose(path, schema):
    print(f"compose: {path}")
    doc = yaml.safe_load(path.read_text())
    # Draft 7, as docker-compose itself applied it (its $schema URL is not a known draft).
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    for error in errors:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        print(f"    {where}: {error.message}")
    check(not errors, "valid against the Compose specification schema")

    services = doc.get("services") or {}
    for variant in ("cpu", "cuda"):
        name = f"latentd-{variant}"
        svc = services.get(name)
        check(svc is not None, f"{name}: service exists")
        if svc is None:
            continue
        check(svc.get("image") == f"latentd:latest-{variant}", f"{name}: image latentd:latest-{variant}")
        check(dig(svc, "build", "args", "VARIANT") == variant, f"{name}: build arg VARIANT={variant}")
        check(svc.get("profiles") == [variant], f"{name}: profile {variant}")
        volumes = [str(v) for v in svc.get("volumes", [])]
        check(any(v.endswith(":/models:ro") for v in volumes), f"{name}: /models mounted read-only")
        ports = [str(p) for p in svc.get("ports", [])]
        check(any(p.endswith(":8080") for p in ports), f"{name}: publishes port 8080")
        test = dig(svc, "healthcheck", "test") or []
        check(test[:2] == ["CMD", "latentd-healthcheck"], f"{name}: healthcheck runs latentd-healthcheck")
        grace = seconds(svc.get("stop_grace_period", "10s"))
        check((grace or 0) > APP_GRACE_SECS, f"{name}: stop_grace_period > {APP_GRACE_SECS}s")
        devices = dig(svc, "deploy", "resources", "reservations", "devices") or []
        gpu = any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
        check(gpu == (variant == "cuda"), f"{name}: {'reserves' if gpu else 'no'} NVIDIA GPU")


def load_objects(paths):
    objects = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_value(container, name, default=None):
    for var in container.get("env", []):
        if var["name"] == name and "value" in var:
            return var["value"]
    return default


def check_kubernetes(folder, dockerfile):
    print(f"kubernetes: {folder}")
    objs = load_objects(sorted(folder.glob("*.yaml")) + sorted(folder.glob("keda/*.yaml")))
    deploy = objs.get(("Deployment", "latentd"))
    check(deploy is not None, "Deployment latentd exists")
    if deploy is None:
        return
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check(selects(deploy["spec"]["selector"]["matchLabels"], labels), "Deployment selector matches its pods")

    check(selects(dig(objs, ("Service", "latentd"), "spec", "selector"), labels), "Service selects the pods")
    service_ports = dig(objs, ("Service", "latentd"), "spec", "ports") or []
    check(all(p.get("targetPort") in ports for p in service_ports), "Service targets a named container port")
    pdb_selector = dig(objs, ("PodDisruptionBudget", "latentd"), "spec", "selector", "matchLabels")
    check(selects(pdb_selector, labels), "PodDisruptionBudget selects the pods")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        ref = dig(objs, (kind, "latentd"), "spec", "scaleTargetRef") or {}
        targets = ref.get("kind", "Deployment") == "Deployment" and ref.get("name") == "latentd"
        check(targets, f"{kind} scales Deployment latentd")

    claims = [dig(v, "persistentVolumeClaim", "claimName") for v in spec.get("volumes", [])]
    claims = [c for c in claims if c]
    check(claims and all(("PersistentVolumeClaim", c) in objs for c in claims), "model volume claims the PVC")
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    check(dig(mounts, "/models", "readOnly") is True, "/models mounted read-only")
    model = str(env_value(container, "LATENTD_MODEL", ""))
    check(model.startswith("/models/"), "LATENTD_MODEL is under /models")

    for probe, path in PROBE_PATHS.items():
        get = dig(container, probe, "httpGet") or {}
        check(get.get("path") == path and get.get("port") in ports, f"{probe} GETs {path} on the http port")
    scrape_port = dig(pod, "metadata", "annotations", "prometheus.io/port")
    check(scrape_port == str(ports.get("http")), "prometheus.io/port is the http port")

    pre_stop = dig(container, "lifecycle", "preStop", "exec", "command") or []
    pre_stop_secs = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] and len(pre_stop) == 2 else 0
    app_grace = int(env_value(container, "LATENTD_SHUTDOWN_GRACE_SECS", APP_GRACE_SECS))
    budget = spec.get("terminationGracePeriodSeconds", 30)
    check(pre_stop_secs > 0, "preStop sleeps so endpoints drain")
    check(
        budget > pre_stop_secs + app_grace,
        f"terminationGracePeriodSeconds {budget} > preStop {pre_stop_secs} + app grace {app_grace}",
    )

    gpus = {str(dig(container, "resources", k, "nvidia.com/gpu")) for k in ("requests", "limits")}
    check(gpus == {"1"}, "requests and limits nvidia.com/gpu: 1")
    user = re.search(r"^USER\s+(\d+)", dockerfile.read_text(), re.MULTILINE)
    run_as = dig(spec, "securityContext", "runAsUser")
    check(user is not None and run_as == int(user.group(1)), "runAsUser is the Dockerfile's USER")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compose-schema", type=Path, required=True)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    check_compose(args.repo / "deploy/compose.yaml", load_schema(args.compose_schema))
    check_kubernetes(args.repo / "deploy/kubernetes", args.repo / "Dockerfile")
    if failures:
        print(f"check-deploy: {len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
