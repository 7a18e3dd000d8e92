"""One listening socket, its routes, its connection limit and what it reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from prometheus_client import Gauge

from mtlsproxy import logs
from mtlsproxy.config.model import EngineKind, Listener
from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import HandshakeComplete, HandshakeFailed
from mtlsproxy.engine.interface import Engine
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.forwarding.http.local import RequestRefusal
from mtlsproxy.forwarding.http2.faults import Http2Fault
from mtlsproxy.metric_updates import adder
from mtlsproxy.metrics import Metrics
from mtlsproxy.proxy.connection import ClientConnection
from mtlsproxy.proxy.source_budget import Refusal, SourceBudget, source_of
from mtlsproxy.routing.routes import RouteTable
from mtlsproxy.routing.tickets import ticket_key_files

# Pending connections the kernel queues before accept (nginx's default on Linux is 511).
LISTEN_BACKLOG: Final = 511
# Seconds between two log lines about shed handshakes (a flood sheds thousands a second).
SHED_LOG_INTERVAL: Final = 1.0


class ListenerRuntime:
    """What the connections of one listener share: routes, limits, metrics."""

    def __init__(
        self, listener: Listener, metrics: Metrics, routes: RouteTable, access_log: bool = True
    ) -> None:
        self.name = listener.name
        self.access_log = access_log
        self.metrics = metrics
        self.connections: set[ClientConnection] = set()
        # Handshakes in flight, oldest first (dicts keep insertion order): ``max_handshakes``;
        # when each was accepted and its source (``failed_handshakes_per_source``).
        self.handshaking: dict[ClientConnection, tuple[float, str]] = {}
        # Kept across reloads (a reload must not refill the buckets of a flood's sources).
        self.source_budget: SourceBudget | None = None
        self._shed_unlogged = 0
        self._shed_logged_at = -SHED_LOG_INTERVAL
        self.draining = False
        self.server: asyncio.Server | None = None
        # The updates of the series each connection touches (``metric_updates``), once.
        self._active = adder(metrics.connections_active.labels(self.name))
        self._accepted = adder(metrics.connections.labels(self.name))
        # Looked up once: a flood of refused sources reaches it thousands of times a second.
        refused = metrics.connections_rejected.labels(self.name, "source_budget")
        self._source_refused = adder(refused)
        self._bytes = {
            direction: adder(metrics.bytes.labels(self.name, direction))
            for direction in ("client_to_upstream", "upstream_to_client")
        }
        self._exported: list[tuple[Gauge, tuple[str, ...]]] = []
        self.install(listener, routes)

    def install(self, listener: Listener, routes: RouteTable) -> None:
        """Serve new connections with these settings and routes (at start and on reload);
        connections already open keep the routes they started with."""
        self.config = listener
        self.timeouts = listener.timeouts
        self.limits = listener.limits
        self.routes = routes
        budget = listener.limits.failed_handshakes_per_source
        if budget is None:
            self.source_budget = None
        elif self.source_budget is None:
            self.source_budget = SourceBudget(budget.rate, budget.burst)
        else:
            self.source_budget.configure(budget.rate, budget.burst)
        self._export_material()

    def new_engine(self, peer: str) -> Engine:
        """A handshake engine for one new connection, on the current routes (a reload swaps
        ``routes``; connections keep the table they started with). At debug level it traces
        every handshake message it sees."""
        trace = logs.tracer(self.name, peer)
        engine = SelectingEngine if self.config.engine is EngineKind.NATIVE else OpenSSLEngine
        return engine(self.routes.select, time.perf_counter, trace)

    def watched_files(self) -> tuple[Path, ...]:
        """Every certificate, key, CA bundle, CRL and session ticket key file the routes read."""
        paths: list[Path] = []
        for route in (self.config.default_route, *self.config.routes):
            for pair in route.tls.certificates:
                paths += (pair.certificate, pair.key)
            paths += [p for p in (route.client_auth.ca, route.client_auth.crl) if p is not None]
            paths += ticket_key_files(route)
        return tuple(dict.fromkeys(paths))

    def listening(self, reuse_port: bool = False) -> Coroutine[Any, Any, asyncio.Server]:
        """The loop's listen for this listener, for the caller to await and keep as ``server``
        (not a coroutine of ours: see ``ClientConnection._connect_upstream``)."""
        loop = asyncio.get_running_loop()
        return loop.create_server(
            partial(ClientConnection, self, loop),
            self.config.host,
            self.config.port,
            family=socket.AF_INET6 if ":" in self.config.host else socket.AF_INET,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )

    @property
    def port(self) -> int:
        # Untyped: its sockets are a tuple in typeshed and a list under uvloop, and the
        # compiled module checks what it reads against the declared type.
        server: Any = self.server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.go_away()

    # Connection bookkeeping

    def admit_connection(self, connection: ClientConnection, peer: object) -> bool:
        """Whether to serve a connection just accepted from ``peer`` (its socket address);
        one refused is closed at once by the caller, before any engine work."""
        self._accepted(1.0)
        if self.draining:
            self.metrics.connections_rejected.labels(self.name, "draining").inc()
            return False
        now = time.monotonic()
        source = source_of(str(peer[0])) if isinstance(peer, tuple) and peer else "-"
        if self.source_budget is not None:
            refusal = self.source_budget.admit(source, now)
            if refusal is not None:
                self._refuse_source(refusal)
                return False
        if len(self.connections) >= self.limits.max_connections:
            self.metrics.connections_rejected.labels(self.name, "max_connections").inc()
            logs.event(logging.WARNING, "max_connections reached", listener=self.name)
            return False
        self.connections.add(connection)
        self._active(1.0)
        self.handshaking[connection] = (now, source)
        if len(self.handshaking) > self.limits.max_handshakes:
            self._shed_oldest_handshake()
        return True

    def _shed_oldest_handshake(self) -> None:
        """Too many handshakes in flight: drop the one accepted first. A slowloris's trickling
        hellos are the oldest, a good client's handshake takes milliseconds: the attacker's go
        first, and its handshake state stays bounded."""
        oldest, (accepted, source) = next(iter(self.handshaking.items()))
        del self.handshaking[oldest]
        oldest.shed()
        self._settle(source, completed=False)
        self.metrics.connections_rejected.labels(self.name, "handshake_shed").inc()
        self._shed_unlogged += 1
        now = time.monotonic()
        if now - self._shed_logged_at >= SHED_LOG_INTERVAL:
            logs.event(
                logging.WARNING,
                "max_handshakes reached: the oldest handshakes were closed",
                listener=self.name,
                max_handshakes=self.limits.max_handshakes,
                shed=self._shed_unlogged,
                oldest_age_ms=round((now - accepted) * 1000, 1),
            )
            self._shed_logged_at, self._shed_unlogged = now, 0

    def handshake_done(self, connection: ClientConnection, completed: bool) -> None:
        """The connection's handshake ended, admitted (``completed``) or failed: it no longer
        counts, and its source pays for a failure or is paid back for a completion."""
        if (entry := self.handshaking.pop(connection, None)) is not None:
            self._settle(entry[1], completed)

    def release_connection(self, connection: ClientConnection) -> None:
        if (entry := self.handshaking.pop(connection, None)) is not None:
            self._settle(entry[1], completed=False)  # closed before its handshake ended
        if connection in self.connections:
            self.connections.discard(connection)
            self._active(-1.0)

    def _settle(self, source: str, completed: bool) -> None:
        """``failed_handshakes_per_source``: how a handshake from ``source`` ended."""
        if self.source_budget is None:
            return
        if completed:
            self.source_budget.complete(source, time.monotonic())
        else:
            self.source_budget.charge(source, time.monotonic())

    def _refuse_source(self, refusal: Refusal) -> None:
        """A source out of budget: counted every time, logged at most once per source every
        ``source_budget.REPORT_INTERVAL`` seconds (with the refusals since its last line)."""
        self._source_refused(1.0)
        if refusal.report:
            budget = self.limits.failed_handshakes_per_source
            logs.event(
                logging.WARNING,
                "failed_handshakes_per_source: too many handshakes from this source ended "
                "without completing; its new connections are closed at accept",
                listener=self.name,
                source=refusal.source,
                refused=refusal.report,
                rate=budget.rate if budget else None,
                burst=budget.burst if budget else None,
            )

    # Observations (metrics and log lines come from here only)

    def observe_handshake(
        self, peer: str, hello: ClientHello | None, event: HandshakeComplete | HandshakeFailed
    ) -> None:
        self.metrics.observe_handshake(self.name, event, time.time())
        logs.handshake(self.name, peer, hello, event)

    def observe_connection(self, record: logs.AccessRecord) -> None:
        """The access log line, at close (``log.access``)."""
        if self.access_log:
            logs.access(record)

    def observe_upstream_connect(self, route: str, seconds: float) -> None:
        self.metrics.observe_upstream_connect(self.name, route, seconds)

    def observe_refused_request(
        self, route: str, peer: str, refusal: RequestRefusal, outcome: HandshakeComplete | None
    ) -> None:
        """A request the proxy answered itself, or, in audit mode (not ``enforced``), one it
        forwarded that the rules would have refused: counted apart, logged as would-refuse."""
        counter = self.metrics.http_refused if refusal.enforced else self.metrics.http_would_refuse
        counter.labels(self.name, route, refusal.rule, refusal.reason).inc()
        logs.refused_request(self.name, route, peer, refusal, outcome)

    def observe_http2_error(self, route: str, peer: str, fault: Http2Fault) -> None:
        self.metrics.http2_errors.labels(self.name, route, fault.side, fault.reason).inc()
        logs.http2_error(self.name, route, peer, fault)

    def observe_upstream_error(self, route: str, reason: str) -> None:
        self.metrics.upstream_errors.labels(self.name, route, reason).inc()

    def count_bytes(self, direction: str, count: int) -> None:
        self._bytes[direction](count)

    def _export_material(self) -> None:
        """Expiry of our certificates and client CAs, and CRL freshness, for alerting. The
        series of replaced material are removed, so a rotated certificate leaves no stale
        expiry behind."""
        for gauge, labels in self._exported:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        self._exported.clear()
        metrics = self.metrics
        for route in self.routes.all_routes():
            for pair in route.config.tls.certificates:
                leaf = x509.load_pem_x509_certificate(pair.certificate.read_bytes())
                labels = (self.name, "server", _subject(leaf), f"{leaf.serial_number:x}")
                self._set(metrics.certificate_expiry, labels, leaf.not_valid_after_utc.timestamp())
            if route.policy.verifier is None:
                continue
            for ca in route.policy.verifier.ca_certificates:
                labels = (self.name, "client_ca", _subject(ca), f"{ca.serial_number:x}")
                self._set(metrics.certificate_expiry, labels, ca.not_valid_after_utc.timestamp())
            for loaded in route.policy.verifier.crls:
                labels = (self.name, route.name, loaded.issuer)
                self._set(metrics.crl_last_update, labels, loaded.crl.last_update_utc.timestamp())
                if loaded.next_update is not None:
                    self._set(metrics.crl_next_update, labels, loaded.next_update.timestamp())

    def _set(self, gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
        gauge.labels(*labels).set(value)
        self._exported.append((gauge, labels))


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()
