"""The OpenSSL-backed handshake engine: ``ssl.SSLObject`` over two ``MemoryBIO``s.

Theory of operation
-------------------
The engine owns the first bytes of the connection. It reads them with its own ClientHello
parser (``clienthello.py``) and chooses the route from the parsed hello *before* any byte
reaches OpenSSL; the route's own ``SSLContext`` then wraps the BIO pair and the buffered bytes
are replayed into it. A session made under one route can therefore never be resumed under
another (each context has its own session cache and ticket keys), and no ``sni_callback`` is
needed. Under ``engine: native`` the selecting engine reads the ClientHello instead and hands
over its reader and the parsed hello (``serve``, ``refuse_hello``).

Rules for driving the SSLObject (trio ``_ssl.py``, CPython ``sslproto.py``; the checklist in
docs/architecture.md):

* every call into the SSLObject is followed by a drain of the outgoing BIO, including the failure
  branch, so the alert OpenSSL wrote explaining a failed handshake reaches the client;
* ``SSLWantReadError`` is control flow ("feed me more"), every other ``SSLError`` during the
  handshake is terminal and is classified once, into a seed step and a reason;
* ``read()`` returning ``b""`` is close_notify; ``SSLEOFError`` after ``write_eof`` is a ragged
  EOF; both are reported, differently;
* TLS 1.3 session tickets pending right after ``do_handshake()`` are flushed at once;
* the client's identity is checked (``TLSRoute.decide``) before ``HandshakeComplete`` is emitted,
  so the proxy never connects upstream for a client that is not allowed.

What OpenSSL does not let us do: under TLS 1.3 the client has finished its side when the server
sees its certificate, and ``SSLObject`` cannot send an encrypted alert of our choosing. A client
refused by the allow-list therefore gets close_notify under TLS 1.3, and a plaintext
``access_denied`` alert (sent instead of our Finished) under TLS 1.2.
"""

from __future__ import annotations

import enum
import ssl

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mtlsproxy.engine.clienthello import ClientHello, ClientHelloReader
from mtlsproxy.engine.events import (
    ApplicationData,
    ClientHelloReceived,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    PeerClosed,
    ProtocolError,
    Tracer,
    TraceRecord,
)
from mtlsproxy.engine.interface import Clock, RouteSelector, TLSRoute
from mtlsproxy.engine.openssl_failures import classify
from mtlsproxy.engine.progress import (
    PhaseMarks,
    handshake_failed,
    peer_closed,
    timed_out,
)
from mtlsproxy.vocabulary.decision import Evidence
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step
from mtlsproxy.vocabulary.identity import PeerIdentity

MAX_RECORD_PLAINTEXT = 2**14  # RFC 8446 section 5.1, RFC 5246 section 6.2.1
TLS12_RECORD_VERSION = 0x0303

_PLAIN_HTTP_BODY = b"This port speaks TLS only: use https:// and a client certificate\n"
PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)

# TLS SignatureScheme code points (RFC 8446 section 4.2.3) by the key type that signs them.
_EC_SCHEMES = frozenset({0x0403, 0x0503, 0x0603})
_ED25519_SCHEMES = frozenset({0x0807})
_RSA_SCHEMES = frozenset({0x0804, 0x0805, 0x0806, 0x0809, 0x080A, 0x080B, 0x0401, 0x0501, 0x0601})


class _State(enum.Enum):
    CLIENT_HELLO = "client_hello"  # buffering until our parser has a whole ClientHello
    HANDSHAKE = "handshake"  # OpenSSL is running the handshake
    ESTABLISHED = "established"  # admitted; application data flows
    CLOSED = "closed"  # failed, or the session ended; nothing more is read


# The states, and the evidence a completed handshake gives, as module names: on Python 3.11 a
# member read from its enum class costs ~0.4 k instructions, and every receive() compares the
# state (records.py does the same for the content types).
_CLIENT_HELLO, _HANDSHAKE, _ESTABLISHED, _CLOSED = _State  # in definition order
_RESUMED, _CHECKED_BY_OPENSSL = Evidence.RESUMED, Evidence.CHECKED_BY_OPENSSL


class OpenSSLEngine:
    """Server side of one TLS connection, flight by flight.

    ``select_route`` maps the parsed ClientHello to a route; ``clock`` is a monotonic clock in
    seconds (the proxy passes ``time.perf_counter``), read at each flight to time the phases.

    The selecting engine (``engine: native``) hands a connection over after reading the
    ClientHello itself: it passes its ``reader`` (every byte so far) and ``marks`` (timed from
    the accept) and calls :meth:`serve` or :meth:`refuse_hello`.
    """

    def __init__(
        self,
        select_route: RouteSelector,
        clock: Clock,
        trace: Tracer | None = None,
        *,
        reader: ClientHelloReader | None = None,
        marks: PhaseMarks | None = None,
    ) -> None:
        self._select_route = select_route
        self._trace = trace
        self._state = _CLIENT_HELLO
        # Both until the handshake no longer needs them: the reader until its bytes are
        # replayed into OpenSSL, the hello until the handshake ends.
        self._hello_reader: ClientHelloReader | None = (
            reader if reader is not None else ClientHelloReader()
        )
        self._hello: ClientHello | None = None
        self._route: TLSRoute | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj: ssl.SSLObject | None = None
        self._to_send = bytearray()  # bytes we frame ourselves: the 400, a TLS 1.2 alert
        self._peer_closed = False  # PeerClosed was reported: nothing more will be read
        self._close_sent = False
        self._marks = marks if marks is not None else PhaseMarks(clock)

    # Public surface (engine.interface.Engine)

    @property
    def handshake_complete(self) -> bool:
        return self._state is _ESTABLISHED

    name = "openssl"

    @property
    def route(self) -> TLSRoute | None:
        return self._route

    def data_to_send(self) -> bytes:
        if not self._to_send:  # the usual case: only what OpenSSL wrote, taken without a copy
            return self._outgoing.read()
        out = bytes(self._to_send) + self._outgoing.read()
        self._to_send.clear()
        return out

    def receive(self, data: bytes) -> list[Event]:
        if self._state is _CLOSED or self._peer_closed or not data:
            return []
        if self._state is _CLIENT_HELLO:
            return self._receive_client_hello(data)
        self._incoming.write(data)
        if self._state is _HANDSHAKE:
            self._marks.mark_answer()
            return self._do_handshake()
        return self._read_application_data()

    def receive_eof(self) -> list[Event]:
        if self._state is _CLOSED or self._peer_closed:
            return []
        if self._state is _CLIENT_HELLO:
            return [self._fail(peer_closed(Step.CLIENT_HELLO))]
        self._incoming.write_eof()
        if self._state is _HANDSHAKE:
            return self._do_handshake()
        return self._read_application_data()

    def handle_timeout(self) -> list[Event]:
        if self._state not in (_CLIENT_HELLO, _HANDSHAKE):
            return []
        return [self._fail(timed_out(self._waiting_step()))]

    def send(self, data: bytes) -> None:
        if self._state is not _ESTABLISHED:
            raise RuntimeError("send() before the handshake completed or after close")
        if not data:  # SSLObject.write(b"") has meant EOF in some versions (trio)
            return
        assert self._sslobj is not None
        self._sslobj.write(data)

    def close(self) -> None:
        """Send close_notify. Reading goes on: the client may still have data in flight."""
        if self._sslobj is None or self._state is _CLOSED:
            self._state = _CLOSED
            return
        if self._close_sent:
            return
        self._close_sent = True
        try:
            self._sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is written; the client's answer is not awaited here
        except (ssl.SSLError, OSError):
            self._state = _CLOSED

    # Handshake flow

    def _receive_client_hello(self, data: bytes) -> list[Event]:
        assert self._hello_reader is not None
        try:
            hello = self._hello_reader.feed(data)
        except HandshakeError as error:
            return self.refuse_hello(error)
        if hello is None:
            return []
        self._marks.mark_hello()
        if self._trace is not None:  # the fields cost a JA4: only when tracing
            self._note("<-", "ClientHello", **hello.trace_fields())
        return self.serve(hello, self._select_route(hello))

    def refuse_hello(self, error: HandshakeError) -> list[Event]:
        """The reader refused the first bytes: a 400 to a plaintext HTTP client, else the
        reader's alert, and the failure (seed step 1)."""
        reader = self._hello_reader
        if error.reason is Reason.NOT_TLS and reader is not None and reader.looks_like_http:
            self._to_send += PLAIN_HTTP_RESPONSE
        elif error.alert is not None:
            # No version is agreed: the record version is the one OpenSSL writes here.
            version = reader.alert_record_version if reader is not None else TLS12_RECORD_VERSION
            self._to_send += _fatal_alert_record(error.alert, version)
        return [self._fail(error)]

    def serve(self, hello: ClientHello, route: TLSRoute) -> list[Event]:
        """Run the handshake for ``hello`` (read whole by the reader) under ``route``: the
        route's context wraps the BIO pair and every buffered byte is replayed into it."""
        self._hello = hello
        self._route = route
        self._sslobj = route.ssl_context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        assert self._hello_reader is not None
        self._incoming.write(self._hello_reader.buffered)
        self._hello_reader = None
        self._state = _HANDSHAKE
        return [ClientHelloReceived(hello, route.name), *self._do_handshake()]

    def _do_handshake(self) -> list[Event]:
        sslobj, route = self._sslobj, self._route
        assert sslobj is not None and route is not None
        started = self._marks.clock()
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            if self._marks.flight is None and self._outgoing.pending:
                self._marks.mark_flight()
                if self._trace is not None:
                    # OpenSSL writes the flight itself; past ServerHello it is encrypted.
                    self._note("->", "server flight", bytes=self._outgoing.pending)
            return []
        except ssl.SSLError as exc:
            error = classify(
                exc, self._waiting_step(), tls13=self._tls13(),
                flight_sent=self._marks.flight is not None,
            )  # fmt: skip
            return [self._fail(error)]
        leaf = sslobj.getpeercert(binary_form=True) if route.requests_client_certificate else None
        reused = sslobj.session_reused
        decision = route.decide(
            (leaf,) if leaf else (), _RESUMED if reused else _CHECKED_BY_OPENSSL
        )
        if decision.refusal is not None and not decision.admitted:
            return [self._refuse(decision.refusal.to_error(), decision.identity)]
        identity = decision.identity
        self._marks.mark_end(work_since=started)
        self._state = _ESTABLISHED
        # Both are set once the handshake is done; the fallbacks only keep the types honest.
        version = sslobj.version() or "unknown"
        cipher = (sslobj.cipher() or ("unknown",))[0]
        if self._trace is not None:  # describe() builds a string: only when tracing
            self._note("--", "handshake complete", version=version, cipher=cipher,
                       client=identity.describe() if identity else None)  # fmt: skip
        complete = HandshakeComplete(
            route=route.name,
            version=version,
            cipher=cipher,
            alpn=sslobj.selected_alpn_protocol(),
            client_certificate_presented=leaf is not None,
            identity=identity,
            session_reused=reused,
            timings=self._marks.timings(),
            client_certificate=leaf,
            verified=decision.verified,
            would_refuse=decision.would_refuse,
            server_certificate=server_certificate(route, self._hello, cipher),
        )
        self._hello = None
        # Application data may have arrived in the same read as the client's Finished.
        return [complete, *self._read_application_data()]

    def _refuse(self, error: HandshakeError, identity: PeerIdentity | None) -> HandshakeFailed:
        """The TLS handshake succeeded but the policy refuses the client (seed step 6)."""
        assert self._sslobj is not None
        version = self._sslobj.version()
        if version == "TLSv1.2":
            # Our CCS + Finished are still in the outgoing BIO: replace them with a plaintext
            # fatal alert, so the client learns why (RFC 5246 section 7.2.2).
            self._outgoing.read()
            alert = error.alert or Alert.ACCESS_DENIED
            self._to_send += _fatal_alert_record(alert, TLS12_RECORD_VERSION)
            error = HandshakeError(error.step, error.reason, error.detail, alert)
        else:
            self.close()
            error = HandshakeError(error.step, error.reason, error.detail, Alert.CLOSE_NOTIFY)
        return self._fail(error, identity=identity, version=version)

    # Incoming flow (after the handshake)

    def _read_application_data(self) -> list[Event]:
        assert self._sslobj is not None
        incoming = self._incoming
        if not incoming.pending and not incoming.eof and not self._sslobj.pending():
            return []  # nothing to decrypt: skip the SSLWantReadError (uvloop's trick)
        events: list[Event] = []
        # One buffer receives all the plaintext, record by record, instead of joining a list
        # of reads (the bulk path's largest cost). Its size bounds what can come out: the
        # ciphertext still in the BIO (plaintext is shorter: header and tag), what OpenSSL
        # decrypted and holds, and one record OpenSSL may have taken in part from the BIO
        # earlier (it buffers an incomplete record, which the BIO then no longer counts). The
        # buffer is handed on, never reused, so transports may keep it.
        size = incoming.pending + self._sslobj.pending() + MAX_RECORD_PLAINTEXT
        buffer = memoryview(bytearray(size))
        filled = 0
        read = self._sslobj.read
        try:
            while filled < size:
                count = read(size - filled, buffer[filled:])
                if not count:
                    events.append(PeerClosed(clean=True))
                    break
                filled += count
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            events.append(PeerClosed(clean=True))
        except (ssl.SSLEOFError, ssl.SSLSyscallError):
            events.append(PeerClosed(clean=False))
            self._state = _CLOSED
        except ssl.SSLError as exc:
            events.append(ProtocolError(f"{exc.reason or exc}"))
            self._state = _CLOSED
        if filled:
            events.insert(0, ApplicationData(buffer[:filled]))
        if any(isinstance(event, PeerClosed) for event in events):
            self._peer_closed = True
        return events

    # Failure classification: the one place OpenSSL errors become (step, reason, alert)

    def _waiting_step(self) -> Step:
        """The seed step we were waiting for when the handshake stopped. After our flight
        OpenSSL does not say how far the client got: its certificate when we asked for one,
        else its Finished (TLS 1.3) or key exchange (TLS 1.2)."""
        if self._route is not None and self._route.requests_client_certificate:
            after_flight = Step.CLIENT_CERTIFICATE
        else:
            after_flight = Step.CLIENT_FINISHED if self._tls13() else Step.KEY_EXCHANGE
        return self._marks.waiting_step(after_flight)

    def _tls13(self) -> bool:
        if self._sslobj is not None and self._sslobj.version() is not None:
            return self._sslobj.version() == "TLSv1.3"
        return self._hello is not None and self._hello.offers_tls13

    def _note(self, direction: str, message: str, **fields: object) -> None:
        if self._trace is not None:
            self._trace(TraceRecord(direction, message, fields))

    def _fail(
        self,
        error: HandshakeError,
        identity: PeerIdentity | None = None,
        version: str | None = None,
    ) -> HandshakeFailed:
        self._state = _CLOSED
        self._hello = self._hello_reader = None
        self._marks.mark_end()
        flushed = self._outgoing.read()
        self._to_send += flushed
        alert = _plaintext_alert(flushed) or error.alert
        self._note("->", "alert", alert=alert.name.lower() if alert else None,
                   step=str(error.step), reason=str(error.reason))  # fmt: skip
        return handshake_failed(
            error,
            self._marks,
            self._route.name if self._route else None,
            alert=alert,
            client_certificate_presented=identity is not None,
            identity=identity,
            version=version,
        )


def _fatal_alert_record(alert: Alert, record_version: int) -> bytes:
    """A plaintext alert record (RFC 5246 section 7.2, RFC 8446 section 6): type 21, the
    record version, length 2, level fatal (2), description."""
    return bytes((0x15, *record_version.to_bytes(2, "big"), 0x00, 0x02, 0x02, alert))


def _plaintext_alert(flushed: bytes) -> Alert | None:
    """Which alert OpenSSL wrote last, when it is still plaintext (before encryption started):
    a record of type 21 holding (level, description), RFC 5246 section 7.2."""
    record = flushed[-7:]
    if len(record) != 7 or record[0] != 0x15 or record[3:5] != b"\x00\x02":
        return None
    try:
        return Alert(record[6])
    except ValueError:
        return None


def server_certificate(route: TLSRoute, hello: ClientHello | None, cipher: str) -> bytes | None:
    """Which of the route's certificates (DER leaf) OpenSSL used; ``SSLObject`` does not say.

    One certificate: that one. Several: TLS 1.2 names the key type in the suite (``ECDHE-ECDSA``
    or ``ECDHE-RSA``); in TLS 1.3 OpenSSL (with server preference) takes the first of its own
    signature schemes the client offers, ECDSA before Ed25519 before RSA.
    """
    credentials = route.credentials
    if len(credentials) <= 1 or hello is None:
        return credentials[0].chain_der[0] if credentials else None
    offered = set(hello.signature_algorithms)
    wanted: list[type] = []
    if "ECDSA" in cipher:
        wanted = [ec.EllipticCurvePublicKey]
    elif "RSA" in cipher:
        wanted = [rsa.RSAPublicKey]
    else:
        for schemes, key_type in (
            (_EC_SCHEMES, ec.EllipticCurvePublicKey),
            (_ED25519_SCHEMES, ed25519.Ed25519PublicKey),
            (_RSA_SCHEMES, rsa.RSAPublicKey),
        ):
            if offered & schemes:
                wanted.append(key_type)
    for key_type in wanted:
        for credential in credentials:
            if isinstance(credential.leaf.public_key(), key_type):
                return credential.chain_der[0]
    return credentials[0].chain_der[0]
