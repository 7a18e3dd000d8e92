"""Every Prometheus metric of the proxy, and the one place engine events become observations.

Labels are bounded by construction: listener and route names come from the config, step and
reason from enums, version and cipher from OpenSSL's short fixed lists. Nothing a client sends
becomes a label value.
"""

from __future__ import annotations

import platform
import ssl

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

from mtlsproxy import __version__
from mtlsproxy.engine import engine_build
from mtlsproxy.engine.events import HandshakeComplete, HandshakeFailed
from mtlsproxy.metric_updates import Update, adder, observer

# Handshake phases take from ~100 us (our own work) to seconds (slow client networks).
PHASE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip
CONNECT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
HOUR, DAY = 3600.0, 86400.0
REMAINING_BUCKETS = (HOUR, 6 * HOUR, DAY, 2 * DAY, 7 * DAY, 30 * DAY, 90 * DAY, 365 * DAY)

OK = "none"  # step and reason label of a successful handshake

# A `_created` series per counter and histogram doubles the series count and no dashboard
# or alert of ours reads it (nginx, HAProxy and Envoy exporters export none).
disable_created_metrics()


class Metrics:
    """The proxy's collectors, registered in a registry of their own (one per proxy instance,
    so that tests running several proxies in one process do not add up)."""

    def __init__(self, engine: str = "openssl") -> None:
        # The updates of the labelled series observe_handshake and observe_upstream_connect
        # touch, by metric and label values: a ``labels()`` call validates and converts its
        # values and takes the metric's lock (a dozen of them per handshake were ~5 % of the
        # proxy's CPU per connection), and the public ``inc``/``observe`` check the child on
        # every call (``metric_updates``). The values are bounded (see the module docstring),
        # and these series are never removed.
        self._updates: dict[tuple[object, ...], Update] = {}
        # The same, the updates of all the series one admitted handshake counts (by its
        # labels' values), and the phase histograms by listener and phase: no key tuple each.
        self._admitted: dict[tuple[object, ...], tuple[Update, ...]] = {}
        self._phases: dict[str, dict[str, Update]] = {}
        self.registry = registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...
        ProcessCollector(registry=registry)
        self.handshakes = Counter(
            "mtlsproxy_handshakes",
            "TLS handshakes by result (ok, failed, refused, would_refuse), seed step and reason.",
            ["listener", "route", "result", "step", "reason"],
            registry=registry,
        )
        self.handshake_duration = Histogram(
            "mtlsproxy_handshake_duration_seconds",
            "Handshake phase durations: client_hello, server_flight, client_flight, verify, total.",
            ["listener", "phase"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        self.tls_sessions = Counter(
            "mtlsproxy_tls_sessions",
            "Admitted TLS sessions by protocol version and cipher suite.",
            ["listener", "version", "cipher"],
            registry=registry,
        )
        self.resumed_sessions = Counter(
            "mtlsproxy_tls_resumed_sessions",
            "Admitted TLS sessions that resumed an earlier session.",
            ["listener"],
            registry=registry,
        )
        self.client_auth = Counter(
            "mtlsproxy_client_auth",
            "Handshakes by whether the client presented a certificate and whether it verified.",
            ["listener", "presented", "verified"],
            registry=registry,
        )
        self.client_certificate_remaining = Histogram(
            "mtlsproxy_client_certificate_remaining_seconds",
            "Remaining validity of verified client certificates at handshake time.",
            ["listener"],
            buckets=REMAINING_BUCKETS,
            registry=registry,
        )
        self.connections_active = Gauge(
            "mtlsproxy_connections_active",
            "Open client connections.",
            ["listener"],
            registry=registry,
            multiprocess_mode="livesum",  # workers: the sum over the living ones
        )
        self.connections = Counter(
            "mtlsproxy_connections",
            "Accepted client connections.",
            ["listener"],
            registry=registry,
        )
        self.connections_rejected = Counter(
            "mtlsproxy_connections_rejected",
            "Client connections closed before admission (reason: max_connections, draining at "
            "accept; source_budget: at accept, a source past failed_handshakes_per_source; "
            "handshake_shed: the oldest handshake in flight past max_handshakes).",
            ["listener", "reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "mtlsproxy_bytes",
            "Application bytes forwarded (client_to_upstream, upstream_to_client).",
            ["listener", "direction"],
            registry=registry,
        )
        self.upstream_connect_duration = Histogram(
            "mtlsproxy_upstream_connect_duration_seconds",
            "Time to connect to the upstream.",
            ["listener", "route"],
            buckets=CONNECT_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "mtlsproxy_upstream_errors",
            "Upstream failures (connect_refused, connect_timeout, connect_error, reset, "
            "bad_response).",
            ["listener", "route", "reason"],
            registry=registry,
        )
        self.http_refused = Counter(
            "mtlsproxy_http_requests_refused",
            "HTTP requests the proxy answered itself (forward_identity: http), by the deciding "
            "http_authorization rule (its name or index; default: no rule matched; none: no "
            "rule decided) and reason: 403 not_verified, identity_not_allowed, denied; 400 "
            "unsafe_path, and, closing the connection, ambiguous_framing (request smuggling), "
            "malformed, too_large.",
            ["listener", "route", "rule", "reason"],
            registry=registry,
        )
        self.http_would_refuse = Counter(
            "mtlsproxy_http_requests_would_refuse",
            "HTTP requests forwarded in audit mode (http_authorization.enforce: false) that the "
            "rules would refuse, by the deciding rule (name or index; default) and reason "
            "(not_verified, identity_not_allowed, denied): what enforcing would answer with 403.",
            ["listener", "route", "rule", "reason"],
            registry=registry,
        )
        self.http2_errors = Counter(
            "mtlsproxy_http2_connection_errors",
            "HTTP/2 connections of HTTP mode ended by a connection error (GOAWAY), by the side "
            "that made it (client, upstream) and reason: rapid_reset, header_block_too_large, "
            "header_list_too_large, frame_too_large, too_many_streams, flow_control, "
            "content_length, malformed_headers, bad_preface, protocol_error, peer_goaway.",
            ["listener", "route", "side", "reason"],
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "mtlsproxy_certificate_expiry_timestamp_seconds",
            "notAfter of configured certificates (role: server, client_ca), Unix time; the "
            "serial keeps apart certificates with one subject (an ECDSA and an RSA one).",
            ["listener", "role", "subject", "serial"],
            registry=registry,
            multiprocess_mode="max",  # every worker reports the same value
        )
        self.crl_last_update = Gauge(
            "mtlsproxy_crl_last_update_timestamp_seconds",
            "thisUpdate of each loaded CRL, Unix time (CRL age = time() - this).",
            ["listener", "route", "issuer"],
            registry=registry,
            multiprocess_mode="max",  # every worker reports the same value
        )
        self.crl_next_update = Gauge(
            "mtlsproxy_crl_next_update_timestamp_seconds",
            "nextUpdate of each loaded CRL, Unix time; past it, clients it covers are refused.",
            ["listener", "route", "issuer"],
            registry=registry,
            multiprocess_mode="max",  # every worker reports the same value
        )
        self.config_reloads = Counter(
            "mtlsproxy_config_reloads",
            "Reloads by trigger (files: certificate/CA/CRL change; config: SIGHUP) and result.",
            ["trigger", "result"],
            registry=registry,
        )
        self.last_reload_success = Gauge(
            "mtlsproxy_config_last_reload_success_timestamp_seconds",
            "When the configuration or its files were last loaded successfully, Unix time.",
            registry=registry,
            multiprocess_mode="max",  # every worker reports the same value
        )
        self.build_info = Gauge(
            "mtlsproxy_build_info",
            "Build information; the value is 1.",
            ["version", "engine", "engine_build", "openssl", "python"],
            registry=registry,
            multiprocess_mode="max",  # every worker reports the same value
        )
        self.build_info.labels(
            __version__, engine, engine_build(), ssl.OPENSSL_VERSION, platform.python_version()
        ).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _update(self, metric: Counter | Gauge | Histogram, *labels: str) -> Update:
        """``metric.labels(*labels)``'s ``inc`` (or ``observe``), looked up once per label
        values."""
        key = (metric, *labels)
        update = self._updates.get(key)
        if update is None:
            series = metric.labels(*labels)
            update = observer(series) if isinstance(metric, Histogram) else adder(series)
            self._updates[key] = update
        return update

    def observe_upstream_connect(self, listener: str, route: str, seconds: float) -> None:
        self._update(self.upstream_connect_duration, listener, route)(seconds)

    def observe_handshake(
        self, listener: str, event: HandshakeComplete | HandshakeFailed, now: float
    ) -> None:
        """Count one finished handshake. ``now`` is Unix time, for remaining validity."""
        update = self._update
        phases = self._phases.get(listener)
        if phases is None:
            phases = self._phases[listener] = {}
        for phase, seconds in event.timings.as_dict().items():
            observe = phases.get(phase)
            if observe is None:
                observe = phases[phase] = update(self.handshake_duration, listener, phase)
            observe(seconds)
        route = event.route or "none"
        if isinstance(event, HandshakeComplete):
            refusal = event.would_refuse
            step, reason = (refusal.step, refusal.reason) if refusal else (OK, OK)
            presented, verified = event.client_certificate_presented, event.verified
            key = (listener, route, event.result, step, reason, event.version, event.cipher,
                   presented, verified)  # fmt: skip
            counted = self._admitted.get(key)
            if counted is None:
                counted = self._admitted[key] = (
                    update(self.handshakes, listener, route, event.result, step, reason),
                    update(self.tls_sessions, listener, event.version, event.cipher),
                    update(self.client_auth, listener, _bool(presented), _bool(verified)),
                )
            for count in counted:
                count(1.0)
            if event.session_reused:
                update(self.resumed_sessions, listener)(1.0)
            if event.identity is not None:
                remaining = event.identity.not_after.timestamp() - now
                update(self.client_certificate_remaining, listener)(remaining)
            return
        update(self.handshakes, listener, route, event.result, event.step, event.reason)(1.0)
        if event.step in ("client_certificate", "client_verify", "authorize"):
            presented = event.reason != "client_cert_missing"
            verified = event.step == "authorize"
            update(self.client_auth, listener, _bool(presented), _bool(verified))(1.0)


def _bool(value: bool) -> str:
    return "true" if value else "false"
