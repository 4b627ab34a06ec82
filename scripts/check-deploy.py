#!/usr/bin/env python3
"""Offline checks of deploy/ that schema validators cannot make on their own.

    check-deploy.py --compose-schema SCHEMA [--repo DIR]

1. deploy/compose.yaml against the Compose specification's JSON schema (SCHEMA: the
   schema file, or a docker-compose wheel that carries compose/config/compose_spec.json),
   then what the services must have: the variant's image and build arg, the model volume
   read-only, port 8080, the image's health probe, a stop grace longer than latentd's,
   and a GPU reservation for the CUDA service. The shared job store: a Redis service
   with a pinned image, only under a profile (not started by default), no published
   port, a health probe, `noeviction`; the latentd services pass LATENTD_JOB_STORE
   through but never one LATENTD_REPLICA_ID for all scaled containers; the redis:// URLs
   the file shows name that service.
2. deploy/kubernetes/: the objects refer to each other correctly (selectors, names,
   ports, claim), the probes use /health and /ready, the termination grace period covers
   preStop plus latentd's shutdown grace, and the pod's uid is the Dockerfile's USER.
   The shared job store: LATENTD_JOB_STORE's host and port are a Service of the folder
   whose pods listen there, one Redis (Recreate) with `noeviction` and a memory limit
   above its maxmemory, outside latentd's Service and PodDisruptionBudget, reachable
   through its NetworkPolicy; LATENTD_REPLICA_ID is the pod's name; no Service links.
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
# After the grace, latentd waits up to this long for its last writes to a shared job
# store (RunningServer::start in crates/latentd-server/src/http/mod.rs).
SHARED_DRAIN_SECS = 10
REDIS_PORT = 6379  # Redis's default port, and a redis:// URL's
# Room a Redis needs above `maxmemory` (allocator fragmentation, client buffers).
REDIS_MEMORY_HEADROOM = 1.25
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
        # The job store comes from the shell: it may be Redis.
        grace = seconds(svc.get("stop_grace_period", "10s"))
        needed = APP_GRACE_SECS + SHARED_DRAIN_SECS
        check((grace or 0) > needed, f"{name}: stop_grace_period > {APP_GRACE_SECS}s + {SHARED_DRAIN_SECS}s")
        devices = dig(svc, "deploy", "resources", "reservations", "devices") or []
        gpu = any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
        check(gpu == (variant == "cuda"), f"{name}: {'reserves' if gpu else 'no'} NVIDIA GPU")
        env = env_names(svc.get("environment"))
        check("LATENTD_JOB_STORE" in env, f"{name}: passes LATENTD_JOB_STORE through")
        shared_id = "LATENTD_REPLICA_ID" in env
        check(not shared_id, f"{name}: no LATENTD_REPLICA_ID (scaled containers would share it)")
    check_compose_redis(services, path.read_text())


def env_names(environment):
    """Variable names of a Compose `environment` (a list of NAME[=VALUE], or a mapping)."""
    if isinstance(environment, dict):
        return set(environment)
    return {str(item).split("=", 1)[0] for item in environment or []}


def redis_url(url):
    """(host, port) of a redis://[user[:password]@]host[:port][/db] URL, or None."""
    parts = re.fullmatch(r"redis://(?:[^@/]*@)?([A-Za-z0-9.-]+)(?::(\d+))?(?:/\d+)?", str(url))
    if not parts:
        return None
    return parts.group(1), int(parts.group(2) or REDIS_PORT)


def redis_option(args, name):
    """The value after `--name` in a redis-server command line, or None."""
    args = [str(a) for a in args or []]
    for i, arg in enumerate(args[:-1]):
        if arg == f"--{name}":
            return args[i + 1]
    return None


def check_compose_redis(services, text):
    redis = {n: s for n, s in services.items() if str(s.get("image", "")).split(":")[0] == "redis"}
    check(len(redis) == 1, "one Redis service (the shared job store)")
    if len(redis) != 1:
        return
    (name, svc), = redis.items()
    image = str(svc["image"])
    pinned = re.fullmatch(r"redis:\d+\.\d+(\.\d+)?(-\w+)?", image) is not None
    check(pinned, f"{name}: image pinned to a release ({image})")
    check(bool(svc.get("profiles")), f"{name}: only under a profile (not started by default)")
    check(not svc.get("ports"), f"{name}: publishes no host port")
    test = [str(t) for t in dig(svc, "healthcheck", "test") or []]
    check("redis-cli ping" in " ".join(test), f"{name}: healthcheck runs redis-cli ping")
    command = svc.get("command") or []
    command = command.split() if isinstance(command, str) else command
    check(redis_option(command, "maxmemory") is not None, f"{name}: sets maxmemory")
    check(redis_option(command, "maxmemory-policy") == "noeviction", f"{name}: maxmemory-policy noeviction")
    port = int(redis_option(command, "port") or REDIS_PORT)
    urls = [redis_url(u) for u in re.findall(r"redis://[^\s`'\"]+", text)]
    check(
        bool(urls) and all(u == (name, port) for u in urls),
        f"redis:// URLs in compose.yaml name {name}:{port}",
    )


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


def env_var(container, name):
    return next((v for v in container.get("env", []) if v["name"] == name), {})


def redis_bytes(size):
    """Bytes of a Redis memory size: 1k = 1000, 1kb = 1024, ... (case-insensitive)."""
    parts = re.fullmatch(r"(\d+)([kmg]b?)?", str(size).strip().lower())
    if not parts:
        return None
    unit = parts.group(2) or ""
    power = {"": 0, "k": 1, "m": 2, "g": 3}[unit[:1]]
    return int(parts.group(1)) * (1024 if unit.endswith("b") else 1000) ** power


def k8s_bytes(quantity):
    """Bytes of a Kubernetes memory quantity such as 1536Mi or 2G."""
    parts = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity).strip())
    if not parts:
        return None
    unit = parts.group(2) or ""
    if unit.endswith("i"):
        scale = 1024 ** ("KMGT".index(unit[0]) + 1)
    else:
        scale = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[unit]
    return float(parts.group(1)) * scale


def container_port(pod_spec, target):
    """The containerPort a Service's targetPort (a name or a number) means in a pod."""
    for c in pod_spec.get("containers", []):
        for p in c.get("ports", []):
            if target in (p.get("name"), p.get("containerPort")):
                return p["containerPort"]
    return None


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
    drain = SHARED_DRAIN_SECS if redis_url(env_value(container, "LATENTD_JOB_STORE")) else 0
    check(pre_stop_secs > 0, "preStop sleeps so endpoints drain")
    check(
        budget > pre_stop_secs + app_grace + drain,
        f"terminationGracePeriodSeconds {budget} > preStop {pre_stop_secs} + app grace {app_grace}"
        f" + shared store drain {drain}",
    )

    gpus = {str(dig(container, "resources", k, "nvidia.com/gpu")) for k in ("requests", "limits")}
    check(gpus == {"1"}, "requests and limits nvidia.com/gpu: 1")
    user = re.search(r"^USER\s+(\d+)", dockerfile.read_text(), re.MULTILINE)
    run_as = dig(spec, "securityContext", "runAsUser")
    check(user is not None and run_as == int(user.group(1)), "runAsUser is the Dockerfile's USER")
    check(spec.get("enableServiceLinks") is False, "enableServiceLinks: false (no LATENTD_* link variables)")
    check_kubernetes_redis(objs, labels, container)


def check_kubernetes_redis(objs, labels, container):
    """The shared job store: LATENTD_JOB_STORE reaches the Redis of this folder."""
    replica = dig(env_var(container, "LATENTD_REPLICA_ID"), "valueFrom", "fieldRef", "fieldPath")
    check(replica == "metadata.name", "LATENTD_REPLICA_ID is the pod's name (downward API)")
    store = env_value(container, "LATENTD_JOB_STORE")
    target = redis_url(store)
    check(target is not None, f"LATENTD_JOB_STORE is a redis:// URL ({store})")
    if target is None:
        return
    host, port = target
    # latentd-redis, latentd-redis.NAMESPACE, latentd-redis.NAMESPACE.svc[.cluster.local]
    service = objs.get(("Service", host.split(".")[0]))
    check(service is not None, f"LATENTD_JOB_STORE's host {host} is a Service here")
    if service is None:
        return
    svc_name = service["metadata"]["name"]
    svc_port = next((p for p in dig(service, "spec", "ports") or [] if p.get("port") == port), None)
    check(svc_port is not None, f"Service {svc_name} has LATENTD_JOB_STORE's port {port}")
    if svc_port is None:
        return
    selector = dig(service, "spec", "selector")
    backends = [
        d
        for (kind, _), d in objs.items()
        if kind in ("Deployment", "StatefulSet")
        and selects(selector, d["spec"]["template"]["metadata"]["labels"])
    ]
    check(len(backends) == 1, f"Service {svc_name} selects one workload's pods")
    if len(backends) != 1:
        return
    redis = backends[0]
    name = f"{redis['kind']} {redis['metadata']['name']}"
    pod = redis["spec"]["template"]
    redis_labels = pod["metadata"]["labels"]
    check(not selects(selector, labels), f"Service {svc_name} does not select latentd's pods")
    target_port = svc_port.get("targetPort", port)
    listen = container_port(pod["spec"], target_port)
    check(listen is not None, f"Service {svc_name}'s targetPort {target_port} is a port of {name}")
    if listen is None:
        return
    redis_container = next(
        c
        for c in pod["spec"]["containers"]
        if any(p.get("containerPort") == listen for p in c.get("ports", []))
    )
    args = (redis_container.get("command") or []) + (redis_container.get("args") or [])
    check(
        int(redis_option(args, "port") or REDIS_PORT) == listen,
        f"{name}: redis-server listens on containerPort {listen}",
    )
    check(redis["spec"].get("replicas", 1) == 1, f"{name}: exactly one replica (one queue)")
    if redis["kind"] == "Deployment":
        strategy = dig(redis, "spec", "strategy", "type")
        check(strategy == "Recreate", f"{name}: strategy Recreate (never two Redis at once)")
    check(redis_option(args, "maxmemory-policy") == "noeviction", f"{name}: maxmemory-policy noeviction")
    maxmemory = redis_bytes(redis_option(args, "maxmemory"))
    limit = k8s_bytes(dig(redis_container, "resources", "limits", "memory"))
    check(
        maxmemory is not None and limit is not None and limit >= REDIS_MEMORY_HEADROOM * maxmemory,
        f"{name}: memory limit >= {REDIS_MEMORY_HEADROOM} x maxmemory",
    )
    for probe in ("livenessProbe", "readinessProbe"):
        check(redis_container.get(probe) is not None, f"{name}: has a {probe}")
    for kind in ("Service", "PodDisruptionBudget"):
        obj = objs.get((kind, "latentd"))
        selector = dig(obj, "spec", "selector")
        if kind == "PodDisruptionBudget":
            selector = dig(selector, "matchLabels")
        check(not selects(selector, redis_labels), f"{kind} latentd does not select the Redis pods")
    # Where a NetworkPolicy isolates the Redis pods, one must admit latentd's pods.
    policies = [
        d
        for (kind, _), d in objs.items()
        if kind == "NetworkPolicy"
        and selects(dig(d, "spec", "podSelector", "matchLabels"), redis_labels)
        and "Ingress" in (dig(d, "spec", "policyTypes") or ["Ingress"])
    ]
    redis_ports = redis_container.get("ports", [])
    port_names = {listen} | {p.get("name") for p in redis_ports if p.get("containerPort") == listen}

    def admits(rule):
        # A podSelector without labels is every pod of the namespace.
        sources = [s["podSelector"] for s in rule.get("from", []) if "podSelector" in s]
        from_ok = not rule.get("from") or any(
            not (s or {}).get("matchLabels") or selects(s["matchLabels"], labels) for s in sources
        )
        ports = [p.get("port") for p in rule.get("ports", [])]
        return from_ok and (not ports or any(p in port_names for p in ports))

    if policies:
        ok = any(admits(rule) for policy in policies for rule in dig(policy, "spec", "ingress") or [])
        check(ok, f"a NetworkPolicy admits latentd's pods to {name} on port {listen}")


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
