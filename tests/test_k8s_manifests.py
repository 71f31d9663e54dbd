"""The k8s/ manifests and the Dockerfile agree with the Kubernetes schemas and with the code.

No cluster, kubectl or kustomize is needed: every manifest is validated offline
with ``kubernetes_validate`` (strict: unknown fields fail), the kustomization is
checked by hand (every resource exists, every manifest is listed), and the values
the manifests repeat from the code (ports, paths, env var names, console scripts,
the health service name, the image's UID) are compared with the code's own
constants, so changing one side without the other fails here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import socket
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from router_common.catalog import load_catalog
from router_service import app as router_app
from router_service import defaults as router_defaults
from sidecar import defaults as sidecar_defaults
from sidecar.config import SidecarSettings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
EXAMPLE_SECRET = K8S / "provider-keys.example.yaml"
AUTH_SECRET = K8S / "router-auth.example.yaml"
#: Example Secrets: never applied by the kustomization, created by the operator.
EXAMPLE_SECRETS = sorted(K8S.glob("*.example.yaml"))
REDIS_SECRET = K8S / "redis-secret.example.yaml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
PROTO = ROOT / "proto" / "router" / "v1" / "router.proto"

#: Oldest Kubernetes the manifests target: native sidecars (init containers with
#: restartPolicy: Always) are on by default from 1.29, the preStop sleep action from 1.30.
MIN_K8S_VERSION = "1.30.0"
K8S_VERSIONS = sorted({MIN_K8S_VERSION, kubernetes_validate.utils.latest_version()})

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


# --------------------------------------------------------------------------- loading


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _is_manifest(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


@cache
def kustomization() -> dict[str, Any]:
    (doc,) = _yaml_docs(KUSTOMIZATION)
    assert doc["kind"] == "Kustomization"
    return doc


@cache
def manifest_files() -> tuple[Path, ...]:
    """k8s/*.yaml files made of Kubernetes objects (not the kustomization, not the catalog)."""
    files = []
    for path in sorted(K8S.glob("*.y*ml")):
        if path == KUSTOMIZATION:
            continue
        docs = _yaml_docs(path)
        if docs and all(_is_manifest(doc) for doc in docs):
            files.append(path)
    return tuple(files)


def generated_configmaps() -> Iterator[dict[str, Any]]:
    """What kustomize's configMapGenerator would emit (files: key = file name)."""
    for gen in kustomization().get("configMapGenerator", []):
        data = {}
        for entry in gen.get("files", []):
            key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (K8S / source).read_text(encoding="utf-8")
        labels = gen.get("options", {}).get("labels", {})
        yield {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": gen["name"],
                "namespace": kustomization()["namespace"],
                "labels": labels,
            },
            "data": data,
        }


@cache
def objects() -> tuple[dict[str, Any], ...]:
    """Every object the kustomization applies, plus the example Secret."""
    docs: list[dict[str, Any]] = []
    for path in manifest_files():
        docs.extend(_yaml_docs(path))
    docs.extend(generated_configmaps())
    return tuple(docs)


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def namespace_of(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("namespace") or kustomization()["namespace"]


# --------------------------------------------------------------------------- the code's facts


@cache
def project() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def script_for(module: str) -> str:
    """The console script whose entry point lives in ``module`` (e.g. router_service.cli)."""
    names = [n for n, target in project()["scripts"].items() if target.split(":")[0] == module]
    assert len(names) == 1, f"expected one console script for {module}, got {names}"
    return names[0]


ROUTER_SCRIPT = script_for("router_service.cli")  # router-service
SIDECAR_SCRIPT = script_for("sidecar.cli")  # router-sidecar


@cache
def router_health_service() -> str:
    """The name the router reports on grpc.health.v1, which must be ``<package>.<Service>``."""
    text = PROTO.read_text(encoding="utf-8")
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.MULTILINE)
    service = re.search(r"^service\s+(\w+)\s*\{", text, re.MULTILINE)
    assert package and service
    assert f"{package.group(1)}.{service.group(1)}" == router_app.SERVICE_NAME
    return router_app.SERVICE_NAME


@cache
def dockerfile() -> dict[str, Any]:
    """The final stage's USER, ENTRYPOINT, CMD, ENV and EXPOSE."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    info: dict[str, Any] = {"env": {}, "expose": set(), "entrypoint": [], "cmd": [], "user": None}
    for line in lines[last_from:]:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "USER":
            info["user"] = rest
        elif instr in ("ENTRYPOINT", "CMD"):
            info[instr.lower()] = json.loads(rest)  # exec form only: no shell in between
        elif instr == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                info["env"][key] = value
        elif instr == "EXPOSE":
            info["expose"].update(int(p.split("/")[0]) for p in rest.split())
    return info


def dockerfile_uid_gid() -> tuple[int, int | None]:
    user = dockerfile()["user"]
    assert user, "the Dockerfile must set USER"
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER must be numeric for runAsNonRoot checks, got {user!r}"
    return int(uid), int(gid) if gid else None


@cache
def catalog_keys() -> dict[str, str]:
    """ConfigMap key -> content, for the catalog ConfigMap(s)."""
    return {k: v for cm in find("ConfigMap") for k, v in cm.get("data", {}).items()}


# --------------------------------------------------------------------------- pod helpers


def image_repo() -> str:
    (entry,) = kustomization()["images"]
    return entry["name"]


def is_our_image(container: dict[str, Any]) -> bool:
    return container["image"].rsplit(":", 1)[0] == image_repo()


def argv(container: dict[str, Any]) -> list[str]:
    """The process command line, with Kubernetes' command/args vs ENTRYPOINT/CMD rules."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    assert is_our_image(container), f"{container['name']}: set command for third-party images"
    return [*dockerfile()["entrypoint"], *container.get("args", dockerfile()["cmd"])]


def program(container: dict[str, Any]) -> list[str]:
    """argv minus the image's ENTRYPOINT wrapper (tini --): the console script and its flags."""
    args = argv(container)
    entry = dockerfile()["entrypoint"]
    if is_our_image(container) and "command" not in container and entry:
        args = args[len(entry) :]
    return [PurePosixPath(args[0]).name, *args[1:]] if args else []


def flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name:
            assert i + 1 < len(args), f"{name} has no value"
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def env_value(container: dict[str, Any], name: str) -> str | None:
    for var in container.get("env", []):
        if var["name"] == name:
            return var.get("value")
    return None


def pod_owners() -> list[dict[str, Any]]:
    return [o for o in objects() if o["kind"] in POD_OWNERS]


def pod_spec(owner: dict[str, Any]) -> dict[str, Any]:
    return owner["spec"]["template"]["spec"]


def pod_labels(owner: dict[str, Any]) -> dict[str, str]:
    return owner["spec"]["template"]["metadata"].get("labels", {})


def all_containers(owner: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(owner)
    return [*spec.get("initContainers", []), *spec["containers"]]


def running(owner: dict[str, Any], script: str) -> list[dict[str, Any]]:
    return [c for c in all_containers(owner) if c.get("image") and program(c)[:1] == [script]]


def the_one(script: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The single workload running ``script`` and its container."""
    hits = [(o, c) for o in pod_owners() for c in running(o, script)]
    assert len(hits) == 1, f"expected exactly one container running {script}, got {len(hits)}"
    return hits[0]


def router() -> tuple[dict[str, Any], dict[str, Any]]:
    return the_one(ROUTER_SCRIPT)


def sidecar() -> tuple[dict[str, Any], dict[str, Any]]:
    return the_one(SIDECAR_SCRIPT)


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {
        p.get("name", str(p["containerPort"])): p["containerPort"]
        for p in container.get("ports", [])
    }


def match_labels(selector: dict[str, Any]) -> dict[str, str]:
    assert not selector.get("matchExpressions"), "this test only understands matchLabels"
    return selector.get("matchLabels", {})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector ({matchLabels: ...}) selects a pod with ``labels``."""
    return all(labels.get(k) == v for k, v in match_labels(selector).items())


def service_selects(svc: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Service's selector is a plain label map, not a LabelSelector."""
    selector = svc["spec"].get("selector")
    assert selector, f"Service {svc['metadata']['name']} has no selector"
    return all(labels.get(k) == v for k, v in selector.items())


def mount_for(
    owner: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volumeMount (and its volume) under which ``path`` lies, deepest first."""
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for mount in mounts:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            (volume,) = [v for v in pod_spec(owner)["volumes"] if v["name"] == mount["name"]]
            return mount, volume
    raise AssertionError(f"{container['name']}: nothing is mounted at {path}")


def assert_catalog_file(owner: dict[str, Any], container: dict[str, Any], path: str) -> None:
    mount, volume = mount_for(owner, container, path)
    assert "configMap" in volume, f"{path} must come from the catalog ConfigMap"
    assert not mount.get("subPath"), "mount the ConfigMap directory: subPath mounts never update"
    (cm,) = find("ConfigMap", volume["configMap"]["name"])
    key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    assert key in cm["data"], f"ConfigMap {cm['metadata']['name']} has no key {key!r}"


# --------------------------------------------------------------------------- kustomization & schema


def test_kustomization_lists_every_manifest_and_nothing_missing() -> None:
    k = kustomization()
    resources = k["resources"]
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization resource {name} does not exist"
    generated = {
        entry.split("=", 1)[-1] for gen in k.get("configMapGenerator", []) for entry in gen["files"]
    }
    for name in generated:
        assert (K8S / name).is_file(), f"configMapGenerator file {name} does not exist"
    listed = set(resources) | generated | {KUSTOMIZATION.name}
    for path in sorted(K8S.glob("*.y*ml")):
        if path in EXAMPLE_SECRETS:
            assert path.name not in resources, "the example Secret must not be applied by default"
            continue
        assert path.name in listed, f"{path.name} is neither a kustomization resource nor generated"
    assert EXAMPLE_SECRET.is_file()


def _schema_cases() -> Iterator[Any]:
    docs = [*objects(), *(d for path in EXAMPLE_SECRETS for d in _yaml_docs(path))]
    for doc in docs:
        for version in K8S_VERSIONS:
            yield pytest.param(
                doc, version, id=f"{doc['kind']}/{doc['metadata']['name']}@{version}"
            )


@pytest.mark.parametrize(("doc", "version"), list(_schema_cases()))
def test_manifest_matches_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_everything_in_one_namespace_that_is_created() -> None:
    ns = kustomization()["namespace"]
    assert find("Namespace", ns), f"no Namespace {ns} among the resources"
    for obj in objects():
        if obj["kind"] != "Namespace":
            assert namespace_of(obj) == ns, f"{obj['kind']}/{obj['metadata']['name']}"
    assert router_defaults.CONFIG_PATH_IN_CONTAINER  # imported facts exist
    assert sidecar_defaults.ROUTER_ADDRESS.split(":")[0].split(".")[1] == ns


# --------------------------------------------------------------------------- router


def test_router_container_ports_are_the_code_defaults() -> None:
    _, c = router()
    ports = container_ports(c)
    assert ports.get("grpc") == router_defaults.GRPC_PORT
    assert ports.get("http") == router_defaults.HTTP_PORT


def test_router_command_line_matches_ports_and_catalog_mount() -> None:
    owner, c = router()
    args = program(c)
    config = flag(args, "--config") or env_value(c, router_defaults.ENV_CONFIG)
    assert config == router_defaults.CONFIG_PATH_IN_CONTAINER
    assert_catalog_file(owner, c, config)
    for name, default, env in (
        ("--grpc-port", router_defaults.GRPC_PORT, router_defaults.ENV_GRPC_PORT),
        ("--http-port", router_defaults.HTTP_PORT, router_defaults.ENV_HTTP_PORT),
    ):
        value = flag(args, name) or env_value(c, env)
        assert value is None or int(value) == default, (
            f"{name}={value} but the pod declares {default}"
        )


def test_router_grpc_probes_target_the_grpc_port_and_health_service() -> None:
    _, c = router()
    service = router_health_service()
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c.get(kind)
        assert probe and "grpc" in probe, f"router needs a native grpc {kind}"
        assert probe["grpc"]["port"] == router_defaults.GRPC_PORT, kind
        assert probe["grpc"].get("service", "") in ("", service), kind
    assert c["readinessProbe"]["grpc"]["service"] == service, (
        "readiness must ask for the Router service"
    )


def test_router_rollout_and_shutdown() -> None:
    owner, c = router()
    spec = owner["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert selects(spec["selector"], pod_labels(owner))
    pod = pod_spec(owner)
    assert pod.get("topologySpreadConstraints") or pod.get("affinity", {}).get("podAntiAffinity")
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    # The router drains in-flight RPCs for Settings.drain_seconds after SIGTERM.
    drain = router_app.Settings(config_path=router_defaults.CONFIG_PATH_IN_CONTAINER).drain_seconds
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain, (
        f"grace {grace}s must exceed preStop {pre_stop}s + drain {drain}s"
    )


def test_prometheus_annotations_point_at_metrics() -> None:
    owner, _ = router()
    annotations = owner["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", "the router must be scraped"
    for o in pod_owners():
        ann = o["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true":
            continue
        assert ann.get("prometheus.io/path") == "/metrics"
        port = int(ann["prometheus.io/port"])
        declared = {p for c in all_containers(o) for p in container_ports(c).values()}
        assert port in declared, (
            f"{o['metadata']['name']}: scrape port {port} is not a container port"
        )
        # A loopback-only listener (the sidecar) cannot be scraped from outside the pod.
        for c in running(o, SIDECAR_SCRIPT):
            assert port not in container_ports(c).values()
    assert int(annotations["prometheus.io/port"]) == router_defaults.HTTP_PORT


def test_service_routes_named_ports_to_router_container() -> None:
    owner, c = router()
    ports = container_ports(c)
    services = [s for s in find("Service") if service_selects(s, pod_labels(owner))]
    # The ClusterIP Service, plus the headless one the sidecars resolve (gRPC only).
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(services) - len(headless) == 1
    for h in headless:
        (hp,) = h["spec"]["ports"]
        assert hp["targetPort"] == "grpc" and hp.get("appProtocol") == "grpc"
    (svc,) = [s for s in services if s not in headless]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    for name, expected, proto in (
        ("grpc", router_defaults.GRPC_PORT, "grpc"),
        ("http", router_defaults.HTTP_PORT, "http"),
    ):
        port = by_name[name]
        target = port.get("targetPort", port["port"])
        assert (ports[target] if isinstance(target, str) else target) == expected, name
        assert port.get("appProtocol") == proto, name
    for o in pod_owners():
        if o is not owner:
            for selecting in services:
                assert not service_selects(selecting, pod_labels(o)), "Service selects other pods"


def test_pdb_keeps_one_router_without_blocking_drains() -> None:
    owner, _ = router()
    (pdb,) = [
        p for p in find("PodDisruptionBudget") if selects(p["spec"]["selector"], pod_labels(owner))
    ]
    assert 1 <= pdb["spec"]["minAvailable"] < owner["spec"]["replicas"]


# --------------------------------------------------------------------------- network policy


def _peer_admits(peer: dict[str, Any], labels: dict[str, str], ns: str, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns})
    else:
        ns_ok = ns == policy_ns
    return ns_ok and selects(peer.get("podSelector", {}), labels)


def _rules_for(policy: dict[str, Any], port: int) -> list[dict[str, Any]]:
    return [
        r
        for r in policy["spec"].get("ingress", [])
        if any(p.get("port") == port for p in r.get("ports", []))
    ]


def test_network_policy_admits_only_sidecars_to_grpc_and_monitoring_to_http() -> None:
    router_owner, router_c = router()
    app_owner, _ = sidecar()
    (policy,) = [
        p
        for p in find("NetworkPolicy")
        if selects(p["spec"]["podSelector"], pod_labels(router_owner))
    ]
    assert match_labels(policy["spec"]["podSelector"]), "an empty podSelector would pick every pod"
    assert "Ingress" in policy["spec"]["policyTypes"]
    policy_ns = namespace_of(policy)

    grpc_rules = _rules_for(policy, router_defaults.GRPC_PORT)
    assert grpc_rules, "no ingress rule for the gRPC port"
    for rule in grpc_rules:
        assert rule.get("from"), "the gRPC port must not be open to everyone"
        for peer in rule["from"]:
            assert match_labels(peer.get("podSelector", {})), (
                "gRPC peers must be selected by pod label"
            )
    admitted = [
        peer
        for rule in grpc_rules
        for peer in rule["from"]
        if _peer_admits(peer, pod_labels(app_owner), namespace_of(app_owner), policy_ns)
    ]
    assert admitted, "the example app's pod labels are not admitted to the router's gRPC port"
    # A pod without the sidecar label (e.g. the router itself) is not admitted.
    assert not any(
        _peer_admits(peer, pod_labels(router_owner), namespace_of(router_owner), policy_ns)
        for rule in grpc_rules
        for peer in rule["from"]
    )

    http_rules = _rules_for(policy, router_defaults.HTTP_PORT)
    assert http_rules, "no ingress rule for the HTTP (metrics) port"
    for rule in http_rules:
        assert rule.get("from"), "the HTTP port must not be open to everyone"
        for peer in rule["from"]:
            assert "kubernetes.io/metadata.name" in match_labels(peer.get("namespaceSelector", {}))

    allowed = {p.get("port") for r in policy["spec"]["ingress"] for p in r.get("ports", [])}
    assert allowed <= set(container_ports(router_c).values()), (
        f"policy opens unknown ports {allowed}"
    )


# --------------------------------------------------------------------------- sidecar & example app


def test_sidecar_is_a_native_sidecar_init_container() -> None:
    owner, c = sidecar()
    assert c in pod_spec(owner).get("initContainers", []), "the sidecar must be an initContainer"
    assert c.get("restartPolicy") == "Always"


def test_sidecar_dials_the_router_service_grpc_port() -> None:
    _, c = sidecar()
    args = program(c)
    address = flag(args, "--router") or env_value(c, sidecar_defaults.ENV_ROUTER)
    address = address or sidecar_defaults.ROUTER_ADDRESS
    headless = address.startswith("dns:///")
    host, _, port = address.removeprefix("dns:///").rpartition(":")
    parts = host.split(".")
    assert len(parts) >= 2 and (len(parts) == 2 or parts[2] == "svc"), (
        f"{host} is not a Service name"
    )
    name, ns = parts[0], parts[1]
    services = [s for s in find("Service", name) if namespace_of(s) == ns]
    assert services, f"no Service {name} in namespace {ns}"
    (svc,) = services
    if headless:
        # dns:/// + round_robin only balances when DNS returns every pod.
        assert svc["spec"].get("clusterIP") == "None", f"{name} must be headless for dns:///"
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
    router_owner, router_c = router()
    assert service_selects(svc, pod_labels(router_owner))
    target = svc_port.get("targetPort", svc_port["port"])
    target = container_ports(router_c)[target] if isinstance(target, str) else target
    assert target == router_defaults.GRPC_PORT


def test_sidecar_listens_where_the_probes_and_the_app_look() -> None:
    owner, c = sidecar()
    args = program(c)
    listen = flag(args, "--listen") or env_value(c, sidecar_defaults.ENV_LISTEN)
    expected = f"{sidecar_defaults.LISTEN_HOST}:{sidecar_defaults.LISTEN_PORT}"
    assert listen in (None, expected)
    assert sidecar_defaults.LISTEN_PORT in container_ports(c).values()

    fallback = flag(args, "--fallback-catalog") or env_value(
        c, sidecar_defaults.ENV_FALLBACK_CATALOG
    )
    assert fallback, "the sidecar should get the catalog as its fallback"
    assert_catalog_file(owner, c, fallback)

    base = f"http://{sidecar_defaults.LISTEN_HOST}:{sidecar_defaults.LISTEN_PORT}"
    app_scripts = [" ".join(argv(x)) for x in pod_spec(owner)["containers"]]
    assert any(f"{base}/v1/chat/completions" in s for s in app_scripts), (
        "the app must call the sidecar"
    )
    models = set(load_catalog(K8S / "catalog.yaml").models)
    called = {m for s in app_scripts for m in re.findall(r'"model":\s*"([^"]+)"', s)}
    assert called and called <= models, f"the app asks for {called}, the catalog has {models}"


def _probe_url(probe: dict[str, Any]) -> tuple[str | None, int, str]:
    if "httpGet" in probe:
        get = probe["httpGet"]
        return get.get("host"), get["port"], get.get("path", "/")
    assert "exec" in probe, f"unsupported probe {probe}"
    (url,) = [a for a in probe["exec"]["command"] if a.startswith("http://")]
    parts = urlsplit(url)
    return parts.hostname, parts.port or 80, parts.path


def test_sidecar_probes_use_readyz_and_healthz_on_the_listen_port() -> None:
    _, c = sidecar()
    venv = dockerfile()["env"].get("VIRTUAL_ENV")
    for kind, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        probe = c.get(kind)
        assert probe, f"sidecar needs a {kind}"
        host, port, got = _probe_url(probe)
        assert (port, got) == (sidecar_defaults.LISTEN_PORT, path), kind
        if "httpGet" in probe:
            # The kubelet dials the pod IP, which a loopback-only listener never answers.
            assert not sidecar_defaults.LISTEN_HOST.startswith("127."), f"{kind} cannot use httpGet"
        else:
            assert host == sidecar_defaults.LISTEN_HOST, kind
            exe = probe["exec"]["command"][0]
            assert venv and PurePosixPath(exe).is_relative_to(venv), (
                f"{exe} is not in the image's venv"
            )


def test_sidecar_reads_provider_keys_from_the_secret() -> None:
    """As files (``--provider-keys-dir``): a key in the environment is readable in
    /proc/<pid>/environ and inherited by child processes. The app container, which
    shares the pod's network, mounts no key."""
    owner, c = sidecar()
    spec = owner["spec"]["template"]["spec"]
    assert not [e for e in c.get("envFrom", []) if "secretRef" in e]
    directory = flag(argv(c), "--provider-keys-dir")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    refs = [volume["secret"]["secretName"]]
    assert mount.get("readOnly") is True and "items" not in volume["secret"]  # every key
    for app in spec["containers"]:
        assert mount["name"] not in {m["name"] for m in app.get("volumeMounts", [])}
    (secret,) = _yaml_docs(EXAMPLE_SECRET)
    assert secret["kind"] == "Secret"
    assert refs == [secret["metadata"]["name"]]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    needed = {p.api_key_env for p in load_catalog(K8S / "catalog.yaml").providers.values()}
    assert needed <= keys, f"example Secret lacks {sorted(needed - keys)}"


# --------------------------------------------------------------------------- all pods, image


def test_env_var_names_are_ones_the_code_reads() -> None:
    from router_service.replication import cli_args as redis_args

    known = {
        v
        for mod in (router_defaults, sidecar_defaults, redis_args)
        for k, v in vars(mod).items()
        if k.startswith("ENV_")
    }
    # Every other sidecar setting is read from SIDECAR_<FIELD NAME>.
    known |= {f"SIDECAR_{f.name.upper()}" for f in dataclasses.fields(SidecarSettings)}
    for o in pod_owners():
        for c in all_containers(o):
            for var in c.get("env", []):
                if var["name"].startswith(("ROUTER_", "SIDECAR_")):
                    assert var["name"] in known, f"{c['name']}: unknown setting {var['name']}"


def test_every_container_is_locked_down_and_sized() -> None:
    for o in pod_owners():
        pod_sc = pod_spec(o).get("securityContext", {})
        for c in all_containers(o):
            sc = c.get("securityContext", {})
            where = f"{o['metadata']['name']}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert "memory" in res.get("limits", {}), where


def test_our_containers_run_as_the_dockerfile_user() -> None:
    uid, gid = dockerfile_uid_gid()
    ours = [(o, c) for o in pod_owners() for c in all_containers(o) if is_our_image(c)]
    assert ours
    for o, c in ours:
        pod_sc = pod_spec(o).get("securityContext", {})
        sc = c.get("securityContext", {})
        assert sc.get("runAsUser", pod_sc.get("runAsUser")) == uid, c["name"]
        # A pod-level value that a container overrides is still a trap for the next container.
        assert pod_sc.get("runAsUser", uid) == uid, o["metadata"]["name"]
        if gid is not None:
            assert sc.get("runAsGroup", pod_sc.get("runAsGroup", gid)) == gid, c["name"]
            assert pod_sc.get("runAsGroup", gid) == gid, o["metadata"]["name"]


def test_images_match_the_kustomization_and_the_project_version() -> None:
    (entry,) = kustomization()["images"]
    assert entry["newTag"] == project()["version"]
    for o in pod_owners():
        for c in all_containers(o):
            if is_our_image(c):
                assert c["image"] == f"{entry['name']}:{entry['newTag']}", c["name"]


def test_console_scripts_in_manifests_and_dockerfile_exist() -> None:
    scripts = set(project()["scripts"])
    used = {program(c)[0] for o in pod_owners() for c in all_containers(o) if is_our_image(c)}
    assert {ROUTER_SCRIPT, SIDECAR_SCRIPT} <= used
    assert used <= scripts, f"manifests run {used - scripts}, not console scripts"
    info = dockerfile()
    assert info["entrypoint"], "ENTRYPOINT must be set (exec form) so args name the script"
    cmd = info["cmd"]
    assert cmd and cmd[0] in scripts
    assert flag(cmd, "--config") == router_defaults.CONFIG_PATH_IN_CONTAINER
    venv = info["env"].get("VIRTUAL_ENV")
    assert venv and info["env"]["PATH"].split(":")[0] == f"{venv}/bin", "venv bin must lead PATH"
    expected = {router_defaults.GRPC_PORT, router_defaults.HTTP_PORT, sidecar_defaults.LISTEN_PORT}
    assert info["expose"] == expected


def test_k8s_catalog_matches_the_example_catalog() -> None:
    """kustomize cannot read outside k8s/, so the catalog is a copy; it must not drift."""
    from router_common.catalog import load_catalog

    assert load_catalog(ROOT / "k8s" / "catalog.yaml") == load_catalog(
        ROOT / "router_common" / "examples" / "catalog.yaml"
    )


# --------------------------------------------------------------------------- authentication


def _mount_path_of_secret(pod_spec: dict[str, Any], container: dict[str, Any], key: str) -> str:
    """Where ``key`` of the router-auth Secret appears in ``container``'s filesystem."""
    for volume in pod_spec["volumes"]:
        secret = volume.get("secret")
        if not secret or secret["secretName"] != "router-auth":
            continue
        items = {i["key"]: i["path"] for i in secret.get("items", [])} or None
        if items is not None and key not in items:
            continue
        for mount in container.get("volumeMounts", []):
            if mount["name"] == volume["name"]:
                assert "subPath" not in mount, "a subPath mount never sees Secret updates"
                return f"{mount['mountPath']}/{(items or {key: key})[key]}"
    raise AssertionError(f"router-auth key {key} is not mounted in {container['name']}")


def test_router_reads_its_tokens_file_from_the_mounted_secret() -> None:
    (secret,) = _yaml_docs(AUTH_SECRET)
    tokens = yaml.safe_load(secret["stringData"]["tokens.yaml"])
    for name, spec in tokens["callers"].items():
        assert spec["token_file"] in secret["stringData"], (
            f"{name}'s token file is not in the Secret"
        )
    (deployment,) = find("Deployment", "router")
    pod = deployment["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    args = router["args"]
    path = args[args.index("--auth-tokens") + 1]
    assert path == _mount_path_of_secret(pod, router, "tokens.yaml")
    assert "--allow-unauthenticated" not in args


def test_sidecar_sends_the_token_the_router_knows_and_the_app_has_none() -> None:
    (secret,) = _yaml_docs(AUTH_SECRET)
    tokens = yaml.safe_load(secret["stringData"]["tokens.yaml"])
    (deployment,) = [d for d in find("Deployment") if d["metadata"]["name"] != "router"]
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    args = sidecar["args"]
    path = args[args.index("--router-token-file") + 1]
    key = path.rpartition("/")[2]
    assert path == _mount_path_of_secret(pod, sidecar, key)
    caller = next(n for n, spec in tokens["callers"].items() if spec["token_file"] == key)
    assert {"rank", "report"} <= set(tokens["callers"][caller]["scopes"])
    for app in pod["containers"]:
        mounted = {m["name"] for m in app.get("volumeMounts", [])}
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        assert not mounted & secret_volumes, f"{app['name']} can read the router token"


# --------------------------------------------------------------------------- shared state (Redis)


def test_router_replicas_share_state_through_redis_from_a_secret() -> None:
    from router_service.replication import cli_args

    owner, c = router()
    assert owner["spec"]["replicas"] >= 2, "several replicas are the point of sharing state"
    env = {v["name"]: v for v in c.get("env", [])}
    url = env[cli_args.ENV_URL]["valueFrom"]["secretKeyRef"]
    (example,) = _yaml_docs(REDIS_SECRET)
    assert url["name"] == example["metadata"]["name"] and url["key"] in example["stringData"]
    password_file = env[cli_args.ENV_PASSWORD_FILE]["value"]
    mount, volume = mount_for(owner, c, password_file)
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    key = str(PurePosixPath(password_file).relative_to(mount["mountPath"]))
    assert {"key": "password", "path": key} in volume["secret"]["items"]
    # Never on the command line, where `ps` and the pod spec would show it.
    assert not any("redis" in a and "@" in a for a in program(c))


def test_example_redis_is_reachable_at_the_secrets_url() -> None:
    (example,) = _yaml_docs(REDIS_SECRET)
    parts = urlsplit(example["stringData"]["url"])
    assert parts.scheme in ("redis", "rediss") and parts.password is None
    name, ns = parts.hostname.split(".")[:2]
    (svc,) = find("Service", name)
    assert namespace_of(svc) == ns
    (sts,) = find("StatefulSet", "redis")
    assert service_selects(svc, pod_labels(sts))
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == (parts.port or 6379)]
    (c,) = pod_spec(sts)["containers"]
    assert container_ports(c)[port["targetPort"]] == 6379
    password_file = env_value(c, "REDIS_PASSWORD_FILE")
    assert password_file, "the Redis password must come from a mounted file"
    _, volume = mount_for(sts, c, password_file)
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    assert {"key": "password", "path": PurePosixPath(password_file).name} in volume["secret"][
        "items"
    ]
    # Only router pods are let in.
    (policy,) = find("NetworkPolicy", "redis")
    assert selects(policy["spec"]["podSelector"], pod_labels(sts))
    router_owner, _ = router()
    (rule,) = policy["spec"]["ingress"]
    assert all(selects(peer["podSelector"], pod_labels(router_owner)) for peer in rule["from"])


# --------------------------------------------------------------------------- the Deploy steps


def _secret_refs() -> dict[str, set[str]]:
    """Every Secret a pod of the kustomization uses, with the keys it reads (empty: all)."""
    refs: dict[str, set[str]] = {}
    for owner in objects():
        if owner["kind"] not in POD_OWNERS:
            continue
        spec = owner["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    refs.setdefault(e["secretRef"]["name"], set())
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
        for v in spec.get("volumes", []):
            if "secret" in v:
                keys = {item["key"] for item in v["secret"].get("items", [])}
                refs.setdefault(v["secret"]["secretName"], set()).update(keys)
    return refs


def _deploy_block() -> str:
    """The shell block of k8s/README.md's "Deploy" section, joined over backslashes."""
    text = (K8S / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ")


def test_deploy_steps_create_every_secret_the_pods_mount_before_applying() -> None:
    """Following k8s/README.md's Deploy block to the letter must give pods that start:
    a Secret a pod mounts or reads that the block never creates leaves the pod in
    ContainerCreating (missing volume) or CreateContainerConfigError. The router-auth
    Secret (--auth-tokens, the sidecar's token) was missing from it."""
    in_kustomization = {
        doc["metadata"]["name"]
        for resource in kustomization()["resources"]
        for doc in _yaml_docs(K8S / resource)
        if doc["kind"] == "Secret"
    }
    created: dict[str, set[str]] = {}
    apply_at = None
    lines = _deploy_block().splitlines()
    for n, line in enumerate(lines):
        words = shlex.split(line, comments=True)
        if "apply" in words and "-k" in words:
            apply_at = n
        if words[:1] != ["kubectl"] or "secret" not in words or "create" not in words:
            continue
        assert apply_at is None, f"Secret created after `kubectl apply -k`: {line}"
        name = words[words.index("generic") + 1]
        keys = set()
        for w in words:
            m = re.match(r"--from-(?:literal|file)=([^=]+)", w)
            if m:
                keys.add(m.group(1).rsplit("/", 1)[-1])
        created[name] = keys
    assert apply_at is not None
    for name, keys in _secret_refs().items():
        if name in in_kustomization:
            continue
        assert name in created, f"k8s/README.md's Deploy steps never create Secret {name!r}"
        assert keys <= created[name], f"Secret {name!r} lacks {sorted(keys - created[name])}"
    # The tokens file the router reads names the token files the Secret must hold.
    tokens_file = next(line for line in lines if "callers:" in line and "tokens.yaml" in line)
    for token_file in re.findall(r"token_file: ([\w.-]+)", tokens_file):
        assert token_file in created["router-auth"], token_file


#: Bytes per outcome in a stream entry, rounded up: the replication config's
#: documented bound is ~25 KB per entry of ``max_outcomes_per_entry`` (200) outcomes.
STREAM_BYTES_PER_OUTCOME = 125

_REDIS_SIZE = re.compile(r"(\d+)(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)
_REDIS_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_K8S_UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "M": 1000**2, "G": 1000**3}


def _redis_bytes(value: str) -> int:
    """A redis.conf memory size ("640mb") in bytes, with Redis's own unit rules."""
    m = _REDIS_SIZE.fullmatch(value)
    assert m, f"not a Redis memory size: {value!r}"
    return int(m.group(1)) * _REDIS_UNITS[(m.group(2) or "").lower()]


def _k8s_bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|M|G)?", str(value))
    assert m, f"unsupported quantity {value!r}"
    return int(m.group(1)) * _K8S_UNITS[m.group(2) or ""]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_server_binary() -> str:
    """Debian's redis-server, as the replication tests use (scripts/setup --redis)."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed: run scripts/setup --redis")
    return found


def _redis() -> tuple[dict[str, Any], dict[str, Any]]:
    (sts,) = find("StatefulSet", "redis")
    (c,) = pod_spec(sts)["containers"]
    return sts, c


def test_example_redis_holds_the_streams_worst_case() -> None:
    """maxmemory was 400mb with noeviction while the router's own config documents a
    500 MB worst case for the stream alone (20,000 entries x 25 KB): a busy fleet
    would fill Redis, which then refuses the routers' writes (OOM command not
    allowed) and replication stops. The container limit must also leave room above
    maxmemory for the forked AOF rewrite's copy-on-write pages, and the volume for
    the AOF growing to twice its base before a rewrite plus the new base."""
    from router_service.replication.config import ReplicationConfig

    sts, c = _redis()
    args = argv(c)
    assert flag(args, "--maxmemory-policy") == "noeviction"
    assert flag(args, "--appendonly") == "yes"
    maxmemory = _redis_bytes(flag(args, "--maxmemory") or "0")
    cfg = ReplicationConfig(url="redis://redis:6379/0")
    worst_stream = cfg.stream_max_entries * cfg.max_outcomes_per_entry * STREAM_BYTES_PER_OUTCOME
    assert maxmemory >= 1.2 * worst_stream, (
        f"maxmemory {maxmemory / 2**20:.0f} MiB is below 1.2 x the stream's worst case "
        f"{worst_stream / 2**20:.0f} MiB (checkpoint and leases come on top)"
    )
    limit = _k8s_bytes(c["resources"]["limits"]["memory"])
    assert limit >= 1.5 * maxmemory, f"memory limit {limit} leaves no room for the AOF fork"
    assert _k8s_bytes(c["resources"]["requests"]["memory"]) >= maxmemory
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    storage = _k8s_bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert storage >= 3 * maxmemory, f"a {storage} byte volume cannot hold the AOF's worst case"


def test_example_redis_password_is_in_no_command_line_or_environment() -> None:
    """The StatefulSet passed ``--requirepass $(REDIS_PASSWORD)``: the kubelet expands
    it into the container's OCI spec (``crictl inspect``, config.json on the node)
    and redis-server's /proc cmdline showed it until Redis set its process title."""
    _, c = _redis()
    for var in c.get("env", []):
        assert "valueFrom" not in var, f"{var['name']}: a Secret value in the environment"
    assert not any("$(" in a for a in argv(c)), "a $(VAR) expanded into the command line"
    assert flag(argv(c), "--requirepass") is None
    for v in c.get("envFrom", []):
        assert "secretRef" not in v


def test_secret_volumes_are_not_world_readable() -> None:
    """The router's redis-password volume had no defaultMode: 0644, readable by any
    UID in the container, unlike the router-auth volume (0440 with fsGroup)."""
    for o in pod_owners():
        for v in pod_spec(o).get("volumes", []):
            secret = v.get("secret")
            if not secret:
                continue
            modes = [secret.get("defaultMode", 0o644)]
            modes += [i["mode"] for i in secret.get("items", []) if "mode" in i]
            for mode in modes:
                assert mode & 0o007 == 0, f"{o['metadata']['name']}/{v['name']}: mode {mode:o}"


def test_example_redis_command_starts_redis_with_the_password_from_the_file(
    tmp_path: Path,
) -> None:
    """Runs the StatefulSet's own command line (the container's paths and port
    swapped for the test's) with a real redis-server: the password from the file is
    required, the shell has exec'd redis-server (PID 1 must get SIGTERM), and the
    password is in neither its command line nor its environment."""
    import os
    import signal
    import subprocess
    import time

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    _, c = _redis()
    args = argv(c)
    password = "0123456789abcdef" * 3
    pw_file = tmp_path / "password"
    pw_file.write_text(password)
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(tmp_path)
    args += ["--bind", "127.0.0.1"]
    env = {
        "PATH": f"{Path(_redis_server_binary()).parent}:/usr/bin:/bin",
        "REDIS_PASSWORD_FILE": str(pw_file),
    }
    for var in c.get("env", []):
        assert var["name"] == "REDIS_PASSWORD_FILE", f"unexpected env {var['name']}"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        authed = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:  # a raw connect: redis-py's own retries back off for seconds
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                pass
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        assert authed.ping()
        no_retry = Retry(NoBackoff(), 0)  # redis-py retries an AuthenticationError
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, retry=no_retry).set("k", "v")
        maxmemory = authed.config_get("maxmemory")["maxmemory"]
        assert int(str(maxmemory)) == _redis_bytes(flag(args, "--maxmemory") or "0")
        proc_dir = Path(f"/proc/{proc.pid}")
        if proc_dir.exists():
            assert (proc_dir / "comm").read_text().strip() == "redis-server", "sh did not exec"
            assert password.encode() not in (proc_dir / "cmdline").read_bytes()
            assert password.encode() not in (proc_dir / "environ").read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _shell_script_containers() -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(owner, container, script) for every container whose PID 1 is ``sh -c script``."""
    found = []
    for o in pod_owners():
        for c in all_containers(o):
            args = argv(c)
            if PurePosixPath(args[0]).name in ("sh", "bash", "ash") and args[1:2] == ["-c"]:
                found.append((o, c, args[2]))
    return found


def test_shell_pid1_containers_trap_sigterm() -> None:
    """A shell as PID 1 ignores SIGTERM without a trap (the kernel drops signals PID 1
    has no handler for): the example app's loop made every pod deletion wait the full
    terminationGracePeriodSeconds. A script either execs its program or traps TERM,
    with its long waits in the background (a trap runs only between commands)."""
    scripts = _shell_script_containers()
    assert scripts, "expected the example app's shell loop"
    for o, c, script in scripts:
        where = f"{o['metadata']['name']}/{c['name']}"
        if re.search(r"^\s*exec\s", script, re.MULTILINE):
            continue
        assert re.search(r"^\s*trap\s+.+\s(TERM|SIGTERM|15)\b", script, re.MULTILINE), (
            f"{where}: sh as PID 1 ignores SIGTERM without a trap"
        )
        for line in script.splitlines():
            if re.match(r"\s*(sleep|curl)\b", line) and not line.rstrip().endswith("\\"):
                assert line.rstrip().endswith("&"), f"{where}: {line.strip()!r} blocks the trap"


def test_example_app_script_ends_on_sigterm_as_pid1(tmp_path: Path) -> None:
    """The example app's own script, as PID 1 of a new PID namespace (as in its
    container), ends within seconds of SIGTERM; before the trap it ignored it."""
    import os
    import signal
    import subprocess
    import time

    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a PID namespace")
    probe = subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:  # a container without CAP_SYS_ADMIN, or seccomp refusing it
        pytest.skip(f"unshare --pid refused here: {probe.stderr.decode(errors='replace')[:200]}")
    (_, c, script) = next(
        s for s in _shell_script_containers() if s[0]["metadata"]["name"] == "example-app"
    )
    # Nothing listens on the port: curl fails at once and the loop reaches its sleep.
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
    shell = argv(c)[0] if Path(argv(c)[0]).exists() else "/bin/sh"
    proc = subprocess.Popen(
        [unshare, "--pid", "--fork", "--kill-child", shell, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        deadline = time.monotonic() + 10
        pid1 = None
        while pid1 is None or not Path(f"/proc/{pid1}/task/{pid1}/children").read_text().split():
            # The shell has a child (curl or sleep) only after its first line, the trap.
            if pid1 is None and children.read_text().split():
                pid1 = int(children.read_text().split()[0])
            assert time.monotonic() < deadline, "the script never started its loop"
            time.sleep(0.02)
        os.kill(pid1, signal.SIGTERM)
        proc.wait(timeout=5)  # the loop's own sleep is 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _probe_window_s(probe: dict[str, Any]) -> float:
    """How long a probe may keep failing before the kubelet acts on it."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_router_startup_probe_outwaits_redis_at_startup() -> None:
    """A starting replica waits up to ReplicationConfig.startup_timeout_s for Redis
    before it serves from an empty state; a startup probe that gave up sooner would
    restart a pod that is merely waiting for Redis, forever while Redis is down."""
    from router_service.replication.config import ReplicationConfig

    _, c = router()
    cfg = ReplicationConfig(url="redis://redis:6379/0")
    needed = cfg.startup_timeout_s + cfg.socket_timeout_s
    window = _probe_window_s(c["startupProbe"])
    assert window > needed, f"startupProbe gives {window}s, the Redis wait needs {needed}s"


def test_example_app_grace_covers_the_sidecars_drain() -> None:
    """On deletion the app container stops first, then the native sidecar gets SIGTERM
    and drains in-flight requests for --shutdown-grace-s (plus the cut wait), all
    inside one terminationGracePeriodSeconds."""
    from sidecar import app as sidecar_app

    owner, c = sidecar()
    grace = flag(program(c), "--shutdown-grace-s") or env_value(c, "SIDECAR_SHUTDOWN_GRACE_S")
    drain = float(grace) if grace else SidecarSettings().shutdown_grace_s
    needed = drain + sidecar_app._CUT_WAIT_S
    period = pod_spec(owner).get("terminationGracePeriodSeconds", 30)
    assert period > needed, f"terminationGracePeriodSeconds {period} <= sidecar drain {needed}s"
