"""One listening socket, its routes, its connection limit and what it reports."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from cryptography import x509

from mtlsproxy import logs
from mtlsproxy.config.model import Listener
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import HandshakeComplete, HandshakeFailed
from mtlsproxy.metrics import Metrics
from mtlsproxy.policy.routes import RouteTable
from mtlsproxy.proxy.connection import ClientConnection

# Pending connections the kernel queues before accept (nginx's default on Linux is 511).
LISTEN_BACKLOG = 511


class ListenerRuntime:
    """What the connections of one listener share: routes, limits, metrics."""

    def __init__(self, listener: Listener, metrics: Metrics) -> None:
        self.config = listener
        self.name = listener.name
        self.timeouts = listener.timeouts
        self.limits = listener.limits
        self.routes = RouteTable.for_listener(listener)
        self.metrics = metrics
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.server: asyncio.Server | None = None
        self._active = metrics.connections_active.labels(self.name)
        self._accepted = metrics.connections.labels(self.name)
        self._bytes = {
            direction: metrics.bytes.labels(self.name, direction)
            for direction in ("client_to_upstream", "upstream_to_client")
        }
        self._export_certificate_expiry()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: ClientConnection(self),
            self.config.host,
            self.config.port,
            family=socket.AF_INET6 if ":" in self.config.host else socket.AF_INET,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()

    # Connection bookkeeping

    def admit_connection(self, connection: ClientConnection) -> bool:
        self._accepted.inc()
        if self.draining:
            self.metrics.connections_rejected.labels(self.name, "draining").inc()
            return False
        if len(self.connections) >= self.limits.max_connections:
            self.metrics.connections_rejected.labels(self.name, "max_connections").inc()
            logs.event(logging.WARNING, "max_connections reached", listener=self.name)
            return False
        self.connections.add(connection)
        self._active.inc()
        return True

    def release_connection(self, connection: ClientConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self._active.dec()

    # Observations (metrics and log lines come from here only)

    def observe_handshake(
        self, peer: str, hello: ClientHello | None, event: HandshakeComplete | HandshakeFailed
    ) -> None:
        self.metrics.observe_handshake(self.name, event, time.time())
        logs.handshake(self.name, peer, hello, event)

    def observe_upstream_connect(self, route: str, seconds: float) -> None:
        self.metrics.upstream_connect_duration.labels(self.name, route).observe(seconds)

    def observe_upstream_error(self, route: str, reason: str) -> None:
        self.metrics.upstream_errors.labels(self.name, route, reason).inc()

    def count_bytes(self, direction: str, count: int) -> None:
        self._bytes[direction].inc(count)

    def _export_certificate_expiry(self) -> None:
        gauge = self.metrics.certificate_expiry
        for route in self.routes.all_routes():
            for pair in route.config.tls.certificates:
                leaf = x509.load_pem_x509_certificate(pair.certificate.read_bytes())
                subject = leaf.subject.rfc4514_string()
                gauge.labels(self.name, "server", subject).set(leaf.not_valid_after_utc.timestamp())
            if route.verifier is not None:
                for ca in route.verifier.ca_certificates:
                    gauge.labels(self.name, "client_ca", ca.subject.rfc4514_string()).set(
                        ca.not_valid_after_utc.timestamp()
                    )
