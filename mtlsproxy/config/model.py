"""The typed configuration. Built once by ``config.load``; the running code trusts it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from mtlsproxy.policy.model import ClientAuth
from mtlsproxy.policy.paths import PathAuthorization


class TLSVersion(enum.StrEnum):
    TLS1_2 = "1.2"
    TLS1_3 = "1.3"


class EngineKind(enum.StrEnum):
    """The handshake engine of a listener (README, "Handshake engines")."""

    OPENSSL = "openssl"  # ssl.SSLObject over memory BIOs
    NATIVE = "native"  # our TLS 1.3 server on ``cryptography``; TLS 1.2 handed to OpenSSL


class ForwardIdentity(enum.StrEnum):
    NONE = "none"
    PROXY_PROTOCOL_V2 = "proxy_protocol_v2"
    HTTP = "http"


class UpstreamProtocol(enum.StrEnum):
    """What HTTP mode speaks to the upstream (``forward_identity.upstream_protocol``), and so
    what it offers the client in ALPN."""

    HTTP1 = "http/1.1"  # ALPN http/1.1 only: every client is HTTP/1.1, so is the upstream
    H2C = "h2c"  # ALPN h2 only: every client is HTTP/2, the upstream h2c with prior knowledge
    AUTO = "auto"  # ALPN h2 and http/1.1: the upstream speaks what the client negotiated
    # ALPN h2 and http/1.1, the upstream HTTP/1.1 only: an HTTP/2 client's streams are
    # translated, each to an HTTP/1.1 request of its own (``forwarding.http2.gateway``)
    H2_TO_HTTP1 = "h2-to-http/1.1"


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """HTTP/2 limits of HTTP mode (``forward_identity.http2``), per connection.

    ``max_concurrent_streams``, ``max_header_list_size`` and ``initial_window_size`` are our
    SETTINGS to the client (RFC 9113 section 6.5.2) and are enforced, the window further bounded
    by ``limits.buffer_size`` (the connection window is ``limits.buffer_size``).
    ``max_resets``: client RST_STREAM frames accepted within ``reset_interval`` seconds; one
    more ends the connection with GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    """

    max_concurrent_streams: int = 100
    max_header_list_size: int = 32 * 1024
    initial_window_size: int = 65_535
    max_resets: int = 200
    reset_interval: float = 10.0


# Envoy's X-Forwarded-Client-Cert elements (SetCurrentClientCertDetails), in its order.
XFCC_FIELDS = ("by", "hash", "subject", "uri", "dns", "cert")
DEFAULT_XFCC_FIELDS = ("by", "hash", "subject", "uri", "dns")
# Where the client's address and scheme can be told (`forward_identity.forwarded`).
FORWARDED_FIELDS = ("x-forwarded-for", "x-forwarded-proto", "forwarded")
# What an extra identity header may carry (nginx's $ssl_client_* family).
HEADER_FIELDS = ("verify", "subject", "sha256", "spiffe_id", "serial", "cn", "uri", "dns")


@dataclass(frozen=True, slots=True)
class IdentityForwarding:
    """How the upstream learns who the client is (``forward_identity``).

    ``proxy_protocol_v2``: a PROXY v2 header with TLS TLVs opens each upstream connection
    (``include_certificate`` adds the leaf DER, ``crc32c`` a checksum). ``http``: every
    request gets ``X-Forwarded-Client-Cert`` with ``xfcc_fields`` (empty: no XFCC) and the
    ``headers`` map (header name -> one of HEADER_FIELDS); the same headers arriving from the
    client are removed first. ``forwarded`` adds X-Forwarded-For / X-Forwarded-Proto /
    Forwarded (RFC 7239) with the client's address; the client's own copies are removed unless
    ``trust_forwarded`` is set and the client presented a verified certificate (a trusted
    gateway in front), when ours are appended to its list. ``upstream_protocol`` and
    ``http2``: HTTP/2 on the client side (``UpstreamProtocol``, ``Http2Settings``).
    """

    mode: ForwardIdentity = ForwardIdentity.NONE
    xfcc_fields: tuple[str, ...] = DEFAULT_XFCC_FIELDS
    headers: tuple[tuple[str, str], ...] = ()
    forwarded: tuple[str, ...] = ()
    trust_forwarded: bool = False
    upstream_protocol: UpstreamProtocol = UpstreamProtocol.HTTP1
    http2: Http2Settings = field(default_factory=Http2Settings)
    include_certificate: bool = False
    crc32c: bool = False


class LogFormat(enum.StrEnum):
    JSON = "json"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class CertificateKeyPair:
    certificate: Path  # PEM: leaf first, then intermediates
    key: Path  # PEM, unencrypted


@dataclass(frozen=True, slots=True)
class SessionTickets:
    """engine native: TLS 1.3 session tickets (``tls.session_tickets``).

    ``keys``: a file of ticket keys, one base64 key of 32 random bytes or more per line, the
    first sealing new tickets and every one opening them (a Kubernetes Secret shared by every
    replica); None: keys shared by the supervisor's workers, or random in a single process.
    ``max_age``: seconds after a client was authenticated with its certificate (a full
    handshake) that its session may still be resumed (RFC 8446 section 4.6.1: 7 days at most).
    """

    keys: Path | None = None
    max_age: float = 24 * 60 * 60.0


@dataclass(frozen=True, slots=True)
class TLSSettings:
    certificates: tuple[CertificateKeyPair, ...]
    min_version: TLSVersion = TLSVersion.TLS1_2
    alpn: tuple[str, ...] = ()  # protocols we accept, in preference order; empty: no ALPN
    # engine native: pad what we send to a multiple of this many bytes (RFC 8446 section 5.4),
    # so record lengths reveal less about the content; 0: no padding.
    record_padding: int = 0
    session_tickets: SessionTickets = field(default_factory=SessionTickets)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where decrypted bytes go: ``host:port`` or ``unix:/path``."""

    host: str | None = None
    port: int | None = None
    unix_path: Path | None = None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. Defaults follow nginx/HAProxy practice (handshake 10 s like HAProxy's
    ``timeout client`` for TLS, connect 5 s, idle 300 s like Envoy's stream idle)."""

    handshake: float = 10.0
    connect: float = 5.0
    idle: float = 300.0
    drain: float = 30.0
    # After SIGTERM: keep accepting (with /readyz 503) this long before draining, so that
    # load balancers and Kubernetes endpoints stop sending new connections first.
    shutdown_delay: float = 0.0
    # After a final answer to a client (an alert, a GOAWAY, a closing 400/403): half-close and
    # discard what it still sends for up to this long before closing, so that unread bytes do
    # not turn the close into a reset that drops the answer at the client (nginx's
    # ``lingering_close``, whose ``lingering_timeout`` is 5 s; a refused client's in-flight
    # request arrives within a round trip). 0: close at once.
    lingering: float = 2.0


@dataclass(frozen=True, slots=True)
class FailedHandshakeBudget:
    """Per source address (IPv4, or IPv6 /64), per listener and worker: handshakes that may
    end without completing, as a token bucket of ``burst`` refilled at ``rate`` a second; each
    completed handshake gives one back. A source with nothing left has its new connections
    closed at accept (``proxy.source_budget``). 100 at once and 10 a second beyond what a
    source completes: a browser or a NAT gateway of well-behaved clients never fails that
    often for long, an abandoning flood from one address gets ~10 flights a second."""

    rate: float = 10.0
    burst: int = 100


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 10_000
    # Handshakes in flight (accepted, neither admitted nor failed) per listener; past it the
    # oldest is closed. 1024 is more than one worker completes in a second (~300-800 mutual
    # TLS handshakes per core) and a tenth of max_connections, so trickling ClientHellos can
    # hold neither the handshake state nor the connection slots of everyone else.
    max_handshakes: int = 1024
    # Bytes held per direction per connection before the other side is paused.
    buffer_size: int = 256 * 1024
    # None: off (``failed_handshakes_per_source: false``).
    failed_handshakes_per_source: FailedHandshakeBudget | None = FailedHandshakeBudget()


@dataclass(frozen=True, slots=True)
class Route:
    """One policy and upstream. ``sni`` holds exact names and ``*.`` wildcards; the default
    route of a listener has ``sni == ()`` and ``name == "default"``. ``http_authorization``:
    per-path rules for the requests of ``forward_identity: http`` (``policy.paths``)."""

    name: str
    sni: tuple[str, ...]
    tls: TLSSettings
    client_auth: ClientAuth
    upstream: Upstream
    forward_identity: IdentityForwarding = field(default_factory=IdentityForwarding)
    http_authorization: PathAuthorization = field(default_factory=PathAuthorization)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    host: str
    port: int
    engine: EngineKind
    default_route: Route
    routes: tuple[Route, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9100
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: LogFormat = LogFormat.JSON
    level: str = "info"  # debug | info | warning | error
    access: bool = True  # one line per connection at close


@dataclass(frozen=True, slots=True)
class ReloadSettings:
    """Certificate, key, CA and CRL files are re-read when their content changes, checked
    every ``interval`` seconds (cert-manager and SPIRE rotate certificates hourly)."""

    watch: bool = True
    interval: float = 5.0


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    listeners: tuple[Listener, ...]
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    workers: int = 1  # processes sharing the listening ports (SO_REUSEPORT)
