"""The deployment files: Kubernetes manifests, Prometheus config and rules, the Grafana
dashboard, the Compose example and the Dockerfile stay consistent with the code (the configs
they embed load, the metric names they use exist) and pass their own tools' checks
(kubernetes-validate, promtool, hadolint) where those are installed."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlsproxy.config import load_config
from mtlsproxy.metrics import Metrics
from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import Client, RunningProxy, Upstream, eventually, start_proxy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SIDECAR = DEPLOY / "kubernetes" / "sidecar.yaml"
SERVICE_MONITOR = DEPLOY / "kubernetes" / "servicemonitor.yaml"
PROMETHEUS_RULE = DEPLOY / "kubernetes" / "prometheusrule.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "mtlsproxy-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "compose" / "mtlsproxy.yaml"
COMPOSE_PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
# A Kubernetes version whose schemas kubernetes-validate bundles (it has 1.25 to 1.37).
KUBERNETES_VERSION = "1.33.0"
CERTS_DIR = "/etc/mtlsproxy/certs"
CONFIG_PATH = "/etc/mtlsproxy/config.yaml"
ADMIN_PORT = 9100


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest(kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents(SIDECAR) if d.get("kind") == kind]
    return found


def proxy_container() -> dict[str, Any]:
    containers = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    (proxy,) = [c for c in containers if c["name"] == "mtlsproxy"]
    return proxy


def embedded_config() -> str:
    return manifest("ConfigMap")["data"]["config.yaml"]


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert {SIDECAR, SERVICE_MONITOR, PROMETHEUS_RULE, PROMETHEUS, RULES, COMPOSE} <= set(files)
    for path in files:
        docs = documents(path)
        assert docs, path
        assert all(isinstance(d, dict) for d in docs), path


def test_sidecar_manifests() -> None:
    kinds = sorted(d["kind"] for d in documents(SIDECAR))
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Service"]
    secret = manifest("Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["stringData"])
    service_ports = {p["name"]: p["port"] for p in manifest("Service")["spec"]["ports"]}
    assert service_ports == {"https": 8443, "metrics": ADMIN_PORT}
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ADMIN_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_proxy_container_is_locked_down_and_probed() -> None:
    proxy = proxy_container()
    security = proxy["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": ADMIN_PORT}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": ADMIN_PORT}
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"https": 8443, "metrics": ADMIN_PORT}


def test_volume_provides_the_config_and_every_file_it_names() -> None:
    """The image's default command reads /etc/mtlsproxy/config.yaml; the projected volume
    mounted at /etc/mtlsproxy must hold it and every certificate path the config names."""
    spec = manifest("Deployment")["spec"]["template"]["spec"]
    (mount,) = proxy_container()["volumeMounts"]
    assert mount["mountPath"] == "/etc/mtlsproxy"
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    provided, secret_keys = set(), set()
    for source in volume["projected"]["sources"]:
        for item in next(iter(source.values()))["items"]:
            provided.add(f"/etc/mtlsproxy/{item['path']}")
            if "secret" in source:
                secret_keys.add(item["key"])
    assert secret_keys <= set(manifest("Secret")["stringData"])
    named = set(re.findall(rf"{re.escape(CERTS_DIR)}/[\w.-]+", embedded_config()))
    assert named and named | {CONFIG_PATH} <= provided


def test_embedded_config_loads(pki: PkiFiles, tmp_path: Path) -> None:
    # The Secret's keys, filled from the development PKI the way deploy/README.md does.
    certs = tmp_path / "certs"
    certs.mkdir()
    for key, source in {
        "tls.crt": pki.server_cert,
        "tls.key": pki.server_key,
        "ca.crt": pki.client_ca_bundle,
        "ca.crl": pki.ca_crl,
    }.items():
        shutil.copy(source, certs / key)
    text = embedded_config()
    assert "listen: 0.0.0.0:8443" in text and "listen: 0.0.0.0:9100" in text
    local = text.replace(CERTS_DIR, str(certs)).replace("0.0.0.0:8443", "127.0.0.1:0")
    path = tmp_path / "config.yaml"
    path.write_text(local.replace("0.0.0.0:9100", "127.0.0.1:0"), encoding="utf-8")

    config = load_config(path)

    (listener,) = config.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 0)
    route = listener.default_route
    assert route.client_auth.mode == "require"
    assert (route.upstream.host, route.upstream.port) == ("127.0.0.1", 8080)
    assert config.metrics.host == "127.0.0.1"
    assert config.log.format == "json"


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [i for i in instructions if i.upper().startswith("FROM ")]
    assert len(froms) == 2 and all("python:3.12-slim" in f for f in froms)
    users = [i.split()[1] for i in instructions if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "10001" in users[-1]
    healthcheck = [i for i in instructions if i.upper().startswith("HEALTHCHECK ")]
    assert healthcheck and f"http://127.0.0.1:{ADMIN_PORT}/healthz" in healthcheck[0]
    assert 'ENTRYPOINT ["mtlsproxy"]' in instructions
    assert f'CMD ["run", "-c", "{CONFIG_PATH}"]' in instructions
    assert f"EXPOSE 8443 {ADMIN_PORT}" in instructions
    assert all("--no-cache-dir" in i for i in instructions if "pip install" in i)
    assert (ROOT / ".dockerignore").is_file()


def known_metric_names() -> set[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def test_metric_names_in_deploy_files_exist() -> None:
    known = known_metric_names()
    assert "mtlsproxy_handshakes_total" in known
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        used = set(re.findall(r"\bmtlsproxy_[a-z0-9_]*[a-z0-9]\b", path.read_text("utf-8")))
        assert used <= known, f"{path.relative_to(ROOT)}: unknown metrics {used - known}"


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = _promtool(promtool, PROMETHEUS)
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds promtool without Kubernetes service discovery: check the rest, with
        # the pod discovery swapped for a static target so the relabelling is still checked.
        config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["192.0.2.1:9100"]}]
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(config), encoding="utf-8")
        result = _promtool(promtool, copy)
    assert result.returncode == 0, result.stdout + result.stderr


def _promtool(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
