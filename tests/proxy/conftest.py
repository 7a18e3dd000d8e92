"""Fixtures for end-to-end tests: a config written from a template, a running proxy, upstreams."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtlsproxy.pki import PkiFiles
from tests.proxy.harness import RunningProxy, Upstream

ProxyFactory = Callable[..., RunningProxy]

LISTENER = """\
listeners:
  - name: {name}
    listen: 127.0.0.1:0
    tls:
      certificates:
        - {{certificate: {pki}/server.crt, key: {pki}/server.key}}
        - {{certificate: {pki}/server-rsa.crt, key: {pki}/server-rsa.key}}
      min_version: "{min_version}"
    client_auth:
{client_auth}
    upstream: {upstream}
    timeouts: {{handshake: {handshake_timeout}, connect: 2s, idle: {idle_timeout},
      lingering: {lingering}, drain: 2s}}
    limits:
      {{max_connections: {max_connections}, max_handshakes: {max_handshakes}, buffer_size: 64KiB}}
{routes}
metrics:
  listen: 127.0.0.1:0
log:
  format: text
  level: debug
"""

CLIENT_AUTH = {
    "none": "      mode: none",
    "request": "      mode: request\n      ca: {pki}/client-ca.pem\n      crl: {pki}/crls.pem",
    "require": "      mode: require\n      ca: {pki}/client-ca.pem\n      crl: {pki}/crls.pem",
}


@pytest.fixture(scope="module")
def echo() -> Iterator[Upstream]:
    """An echo upstream shared by a module's tests (they compare counters before and after)."""
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


def render_config(
    pki: PkiFiles,
    upstream: str,
    mode: str = "require",
    allow: list[str] | None = None,
    routes: str = "",
    min_version: str = "1.2",
    handshake_timeout: str = "5s",
    idle_timeout: str = "60s",
    lingering: str = "2s",
    max_connections: int = 100,
    max_handshakes: int = 100,
    name: str = "api",
    log_level: str = "debug",
    forward_identity: str | None = None,
    enforce: bool = True,
    listen: str = "127.0.0.1:0",
    engine: str = "openssl",
) -> str:
    """One listener on ``listen`` in front of ``upstream``, metrics on 127.0.0.1:0."""
    client_auth = CLIENT_AUTH[mode]
    if not enforce:
        client_auth += "\n      enforce: false"
    if allow:
        client_auth += "\n      allow:\n" + "\n".join(f"        - {rule}" for rule in allow)
    text = LISTENER.format(
        name=name,
        pki=pki.directory,
        min_version=min_version,
        client_auth=client_auth.format(pki=pki.directory),
        upstream=upstream,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        lingering=lingering,
        max_connections=max_connections,
        max_handshakes=max_handshakes,
        routes=textwrap.indent(routes.format(pki=pki.directory), "    ") if routes else "",
    )
    if forward_identity is not None:
        text = text.replace(
            f"    upstream: {upstream}\n",
            f"    upstream: {upstream}\n    forward_identity: {forward_identity}\n",
            1,
        )
    text = text.replace(
        "listen: 127.0.0.1:0\n    tls:", f"listen: {listen}\n    engine: {engine}\n    tls:", 1
    )
    return text.replace("level: debug", f"level: {log_level}")


@pytest.fixture
def make_proxy(tmp_path: Path, pki: PkiFiles, upstream: Upstream) -> Iterator[ProxyFactory]:
    """``make_proxy(mode="require", allow=[...], routes="...", ...)`` -> a running proxy;
    keyword arguments as for ``render_config``, ``upstream_address`` overrides the upstream."""
    running: list[RunningProxy] = []

    def factory(
        mode: str = "require", upstream_address: str | None = None, **options: Any
    ) -> RunningProxy:
        address = upstream_address or f"127.0.0.1:{upstream.port}"
        path = tmp_path / f"proxy-{len(running)}.yaml"
        path.write_text(render_config(pki, address, mode, **options))
        proxy = RunningProxy(path)
        running.append(proxy)
        return proxy

    yield factory
    for proxy in running:
        proxy.stop()
