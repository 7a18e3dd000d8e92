"""The selecting engine (``engine: native``): reads the ClientHello once, then picks an engine.

Theory of operation
-------------------
The first bytes of a connection go through a ``ClientHelloReader``. Once the ClientHello is
whole, this engine builds the engine that will run the connection and hands it the parsed
hello, every buffered byte and the connection's :class:`~mtlsproxy.engine.progress.PhaseMarks`
(read at the accept, so every phase is timed from the accept whichever engine runs it). From
then on every call is passed through.

* The native TLS 1.3 engine (:class:`~mtlsproxy.engine.native.engine.NativeEngine`) for a
  hello offering TLS 1.3 whose route has our credentials loaded.
* The OpenSSL engine (:class:`~mtlsproxy.engine.openssl.OpenSSLEngine`) for everything else:
  a hello the reader refuses (not TLS, plaintext HTTP, malformed, too old), so that there is
  one implementation of that behaviour (400 reply, alert, step and reason); a hello without
  TLS 1.3 in supported_versions (a TLS 1.2 client; a route with ``min_version: "1.3"`` makes
  OpenSSL refuse it itself), or one offering TLS 1.2 too but no TLS 1.3 suite we have; a route
  without loaded credentials.

``name`` says which engine runs the connection (``native`` until a choice, then ``native`` or
``openssl``): a metric label and log field. A connection that ends before its ClientHello is
whole (EOF, deadline) fails here, as the native engine would, at ``client_hello``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from mtlsproxy.engine.clienthello import TLS1_2, ClientHello, ClientHelloReader
from mtlsproxy.engine.events import ClientHelloReceived, Event, Tracer, note
from mtlsproxy.engine.interface import Clock, NativeRoute, RouteSelector, TLSRoute
from mtlsproxy.engine.native.engine import DEFAULT_CIPHER_SUITES, DEFAULT_GROUPS, NativeEngine
from mtlsproxy.engine.openssl import OpenSSLEngine
from mtlsproxy.engine.progress import PhaseMarks, handshake_failed, peer_closed, timed_out
from mtlsproxy.vocabulary.failures import HandshakeError, Step


class SelectingEngine:
    """One connection: the native engine for TLS 1.3, OpenSSL for the rest (see above).

    ``select_route`` maps the parsed ClientHello to a route; ``clock`` is a monotonic clock in
    seconds. ``cipher_suites`` and ``groups`` go to the native engine.
    """

    def __init__(
        self,
        select_route: RouteSelector,
        clock: Clock,
        trace: Tracer | None = None,
        *,
        cipher_suites: Sequence[int] = DEFAULT_CIPHER_SUITES,
        groups: Sequence[int] = DEFAULT_GROUPS,
    ) -> None:
        self._select_route = select_route
        self._trace = trace
        self._cipher_suites = tuple(cipher_suites)
        self._groups = tuple(groups)
        self._marks = PhaseMarks(clock)
        self._reader: ClientHelloReader | None = ClientHelloReader()  # until the choice
        self._chosen: NativeEngine | OpenSSLEngine | None = None
        self._closed = False  # ended before a ClientHello: nothing more is read

    def __repr__(self) -> str:
        return f"SelectingEngine({self._chosen!r})"

    @property
    def chosen(self) -> NativeEngine | OpenSSLEngine | None:
        """The engine running the connection, once the ClientHello chose it."""
        return self._chosen

    @property
    def delegated(self) -> bool:
        """True when the connection went to the OpenSSL engine."""
        return isinstance(self._chosen, OpenSSLEngine)

    # Public surface (engine.interface.Engine)

    @property
    def name(self) -> str:
        return self._chosen.name if self._chosen is not None else "native"

    @property
    def handshake_complete(self) -> bool:
        return self._chosen is not None and self._chosen.handshake_complete

    @property
    def route(self) -> TLSRoute | None:
        return self._chosen.route if self._chosen is not None else None

    def data_to_send(self) -> bytes:
        return self._chosen.data_to_send() if self._chosen is not None else b""

    def receive(self, data: bytes) -> list[Event]:
        if self._chosen is not None:
            return self._chosen.receive(data)
        if self._closed or not data or self._reader is None:
            return []
        try:
            hello = self._reader.feed(data)
        except HandshakeError as error:
            return self._openssl().refuse_hello(error)
        if hello is None:
            return []
        self._marks.mark_hello()
        if self._trace is not None:  # the fields cost a JA4: only when tracing
            note(self._trace, "<-", "ClientHello", **hello.trace_fields())
        if not self._native_version(hello):
            return self._openssl().serve(hello, self._select_route(hello))
        route = self._select_route(hello)
        if not route.credentials:
            return self._openssl().serve(hello, route)
        native = NativeEngine(
            _native(route), hello, self._marks, self._trace,
            cipher_suites=self._cipher_suites, groups=self._groups,
        )  # fmt: skip
        self._chosen = native
        reader, self._reader = self._reader, None  # the hello's bytes go with it
        rest = reader.buffered[reader.hello_size :]
        return [ClientHelloReceived(hello, route.name), *native.start(reader.message, rest)]

    def receive_eof(self) -> list[Event]:
        if self._chosen is not None:
            return self._chosen.receive_eof()
        return self._end_before_hello(peer_closed(Step.CLIENT_HELLO))

    def handle_timeout(self) -> list[Event]:
        if self._chosen is not None:
            return self._chosen.handle_timeout()
        return self._end_before_hello(timed_out(Step.CLIENT_HELLO))

    def send(self, data: bytes) -> None:
        if self._chosen is None:
            raise RuntimeError("send() before the handshake completed or after close")
        self._chosen.send(data)

    def close(self) -> None:
        if self._chosen is not None:
            self._chosen.close()
        else:
            self._closed = True

    # Choosing

    def _native_version(self, hello: ClientHello) -> bool:
        """TLS 1.3 offered, and not only suites we lack by a client that has TLS 1.2 too."""
        if not hello.offers_tls13:
            return False
        return TLS1_2 not in hello.supported_versions or any(
            suite in hello.cipher_suites for suite in self._cipher_suites
        )

    def _openssl(self) -> OpenSSLEngine:
        note(self._trace, "--", "handed to the OpenSSL engine (no TLS 1.3 for us in this hello)")
        engine = OpenSSLEngine(
            self._select_route, self._marks.clock, self._trace,
            reader=self._reader, marks=self._marks,
        )  # fmt: skip
        self._chosen = engine
        self._reader = None  # the OpenSSL engine's now, which drops it once replayed
        return engine

    def _end_before_hello(self, error: HandshakeError) -> list[Event]:
        if self._closed:
            return []
        self._closed = True
        self._marks.mark_end()
        return [handshake_failed(error, self._marks, None, alert=None)]


def _native(route: TLSRoute) -> NativeRoute:
    """A route with credentials is a ``NativeRoute`` (``ServerRoute`` is both)."""
    return cast("NativeRoute", route)
