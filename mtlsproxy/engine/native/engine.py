"""The native TLS 1.3 server engine: the ``Engine`` protocol on our own handshake.

Theory of operation
-------------------
The engine is built by the selecting engine (:mod:`mtlsproxy.engine.selecting`) once a
ClientHello is whole, offers TLS 1.3 and maps to a route with our credentials; everything else
(TLS 1.2, a hello the reader refuses, a route without credentials) goes to the OpenSSL engine
there, so this module knows nothing of OpenSSL. It starts with the hello already parsed
(:meth:`NativeEngine.start`) and the connection's :class:`~mtlsproxy.engine.progress.PhaseMarks`,
which were started at the accept.

For TLS 1.3 (RFC 8446) the engine runs a full handshake or a PSK resumption, never 0-RTT:
ClientHello -> [HelloRetryRequest -> ClientHello] -> ServerHello, (CCS), {EncryptedExtensions,
[CertificateRequest], Certificate, CertificateVerify, Finished} in one write; then the
client's [Certificate, CertificateVerify], Finished; then, for a client admitted without
``would_refuse``, one NewSessionTicket. The pieces live beside this module:

- :mod:`.server_flight`: negotiation, HelloRetryRequest, our flight;
- :mod:`.client_flight`: the client's Certificate, CertificateVerify, Finished, acting on the
  route's one policy decision (``route.decide``);
- :mod:`.resumption`: PSK acceptance and binder, ticket issuing (on :mod:`.tickets`);
- :mod:`.states`: the handshake states, each carrying its data and its seed step;
- :mod:`.post_handshake` and :mod:`.limits`: KeyUpdates, and what a client may make us do
  for nothing.

This module keeps the connection: records in and out, the state (changed only through
``_set_state``, the transition gate), what happens after the handshake (application data,
KeyUpdate, close_notify), and failures. A ``TLSAlert`` from any piece becomes a
``HandshakeError`` in one place (``_guarded``), at the seed step of the state it happened in.

Deliberate differences from the OpenSSL engine (both are consequences of owning the
handshake, and both are covered by the differential tests):

* a client refused by the allow-list gets an encrypted ``access_denied`` alert (OpenSSL can only
  send close_notify under TLS 1.3);
* in audit mode (``client_auth.enforce: false``) a certificate that fails verification is
  admitted as ``would_refuse`` with ``verified`` false (OpenSSL fails the handshake);
* a handshake that stops after the client's Certificate reports ``client_verify`` or
  ``client_finished`` as the waiting step (OpenSSL cannot tell and says
  ``client_certificate``), and a failure after a certificate was presented says so
  (``client_certificate_presented``).

The engine reads no clock of its own: phases are timed by the marks (the proxy's monotonic
clock) and tickets are dated by the route's ``wall_clock``. Secrets live in the ``KeySchedule``
and ``RecordProtection`` objects, whose reprs hide them; nothing here logs, and exception
details never carry key material.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Final

from mtlsproxy.engine.clienthello import ClientHello
from mtlsproxy.engine.events import (
    ApplicationData,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    PeerClosed,
    ProtocolError,
    Tracer,
    note,
)
from mtlsproxy.engine.interface import NativeRoute
from mtlsproxy.engine.native import client_flight, post_handshake, server_flight
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.alerts import TLSAlert, decode_alert
from mtlsproxy.engine.native.handshake_records import HandshakeRecords
from mtlsproxy.engine.native.key_schedule import nss_key_log
from mtlsproxy.engine.native.limits import UselessRecords
from mtlsproxy.engine.native.record_layer import (
    MAX_PLAINTEXT_LENGTH,
    InnerPlaintext,
    Record,
    RecordProtection,
    RecordReader,
    encode_record,
)
from mtlsproxy.engine.native.resumption import issue_ticket
from mtlsproxy.engine.native.states import (
    CLOSED,
    NEGOTIATING,
    TRANSITIONS,
    ClientFlightState,
    Closed,
    Established,
    ExpectCertificate,
    ExpectCertificateVerify,
    ExpectFinished,
    RetryRequested,
    State,
)
from mtlsproxy.engine.native.suites import (
    CIPHER_SUITES,
    CipherSuite,
    CipherSuiteId,
    NamedGroup,
)
from mtlsproxy.engine.progress import (
    PhaseMarks,
    handshake_failed,
    internal_error,
    peer_alert_error,
    peer_closed,
    timed_out,
)
from mtlsproxy.engine.records import ALERT, APPLICATION_DATA, HANDSHAKE, Message
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Step
from mtlsproxy.vocabulary.identity import PeerIdentity

DEFAULT_CIPHER_SUITES: Final = (
    CipherSuiteId.TLS_AES_128_GCM_SHA256,
    CipherSuiteId.TLS_AES_256_GCM_SHA384,
    CipherSuiteId.TLS_CHACHA20_POLY1305_SHA256,
)
DEFAULT_GROUPS: Final = (NamedGroup.X25519, NamedGroup.SECP256R1, NamedGroup.SECP384R1)

RECORD_VERSION: Final = 0x0303
_WARNING: Final = 1
_FATAL: Final = 2


@functools.lru_cache(maxsize=16)
def _negotiable(
    cipher_suites: tuple[int, ...], groups: tuple[int, ...]
) -> tuple[tuple[CipherSuite, ...], tuple[NamedGroup, ...]]:
    """The suites and groups of a configuration, looked up once (not per connection)."""
    return tuple(CIPHER_SUITES[code] for code in cipher_suites), tuple(map(NamedGroup, groups))


class NativeEngine:
    """Server side of one TLS 1.3 connection whose ClientHello was read (``hello``).

    ``route`` is the route selected from it (a ``NativeRoute``); ``marks`` time the phases
    from the accept. ``cipher_suites`` and ``groups`` restrict and order what we negotiate
    (server preference for suites; the client's key_share order for groups).
    """

    def __init__(
        self,
        route: NativeRoute,
        hello: ClientHello,
        marks: PhaseMarks,
        trace: Tracer | None = None,
        *,
        cipher_suites: Sequence[int] = DEFAULT_CIPHER_SUITES,
        groups: Sequence[int] = DEFAULT_GROUPS,
    ) -> None:
        self._route = route
        self._hello: ClientHello | None = hello  # until our answer to it is written
        self._client_random = hello.random
        self._marks = marks
        self._trace = trace
        self._suites, self._groups = _negotiable(tuple(cipher_suites), tuple(groups))
        self._state: State = NEGOTIATING
        self._records = RecordReader()
        self._messages = msgs.HandshakeAssembler()
        # Bytes, not a bytearray: the usual write is one record, and b"" + record is the record
        # itself, handed on by ``data_to_send`` without a copy.
        self._out = b""
        self._read: RecordProtection | None = None  # the client's traffic, once keyed
        self._write: RecordProtection | None = None  # ours, once keyed
        self._handshake_records = HandshakeRecords(hello.has_early_data)
        self._useless = UselessRecords()
        self._key_update_owed = False  # the client asked for ours (see post_handshake)
        self._peer_closed = False
        self._close_sent = False

    def __repr__(self) -> str:
        return f"NativeEngine(state={self._state.name})"

    # Public surface (engine.interface.Engine)

    @property
    def handshake_complete(self) -> bool:
        return isinstance(self._state, Established)

    @property
    def route(self) -> NativeRoute:
        return self._route

    name = "native"

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def start(self, message: bytes, rest: bytes = b"") -> list[Event]:
        """Answer the ClientHello (``message``: its bytes, header included); ``rest``: what
        the client sent after it in the same reads (a CCS, early data)."""

        def answer(_: list[Event]) -> None:
            hello, self._hello = self._hello, None  # nothing after our answer needs it
            assert hello is not None, "start() called twice"
            self._answer(hello, message, retry=None)

        events = self._guarded(answer)
        if rest and not events:
            self._records.feed(rest)
            events = self._process_records()
        return events

    def receive(self, data: bytes) -> list[Event]:
        if (
            type(self._state) is Established
            and not self._peer_closed
            and not self._messages.pending
        ):
            # The data path: a read that is one record of application data (a keep-alive
            # request) in one call; anything else is read by the way below, from its start.
            assert self._read is not None
            content = self._records.open_record(self._read, data)
            if content is not None:
                self._useless.progress()
                return [ApplicationData(content)]
        if isinstance(self._state, Closed) or self._peer_closed or not data:
            return []
        flight = isinstance(self._state, ClientFlightState)
        if flight:
            self._marks.begin_work()
        self._records.feed(data)
        events = self._process_records()
        if flight and isinstance(self._state, ClientFlightState):  # still waiting
            self._marks.end_work()
        return events

    def receive_eof(self) -> list[Event]:
        if isinstance(self._state, Closed) or self._peer_closed:
            return []
        if isinstance(self._state, Established):
            self._peer_closed = True
            return [PeerClosed(clean=False)]
        return [self._fail(peer_closed(self._step()))]

    def handle_timeout(self) -> list[Event]:
        if self._state.step is None:  # established or closed: no deadline
            return []
        return [self._fail(timed_out(self._step()))]

    def send(self, data: bytes) -> None:
        if not isinstance(self._state, Established) or self._close_sent:
            raise RuntimeError("send() before the handshake completed or after close")
        write = self._write
        assert write is not None
        if data and len(data) <= MAX_PLAINTEXT_LENGTH and not self._key_update_owed:
            # The data path: one record (a keep-alive answer), in one call.
            record = write.seal_application_data(data)
            if record is not None:  # else its key is due for an update: the loop sends one
                self._out += record
                return
        # Records joined once: ``_out`` is bytes, and adding a bulk write's records to it one
        # by one would copy it again for each.
        records = [self._out]
        for start in range(0, len(data), MAX_PLAINTEXT_LENGTH):
            if self._key_update_owed or write.needs_key_update:
                records.append(self._key_update())
                write = self._write
                assert write is not None
            records.append(
                write.encrypt(APPLICATION_DATA, data[start : start + MAX_PLAINTEXT_LENGTH])
            )
        self._out = b"".join(records)

    def close(self) -> None:
        """Send close_notify. Reading goes on: the client may still have data in flight."""
        if not isinstance(self._state, Established):
            self._set_state(CLOSED)
            return
        if self._close_sent:
            return
        self._close_sent = True
        self._send_alert(Alert.CLOSE_NOTIFY, level=_WARNING)

    def debug_traffic_secrets(self) -> dict[str, bytes]:
        """NSS key-log labels -> secrets, for tests comparing with a client's key log.

        Never call this outside tests and never log its result.
        """
        negotiated = getattr(self._state, "negotiated", None)
        return {} if negotiated is None else nss_key_log(negotiated.schedule)

    @property
    def client_random(self) -> bytes:
        return self._client_random

    # The state gate

    def _set_state(self, state: State) -> None:
        """Every state change goes through here: it must be one ``TRANSITIONS`` allows, and
        the first state expecting the client's flight marks our flight as written."""
        current = self._state
        if not isinstance(state, Closed) and type(state) not in TRANSITIONS[type(current)]:
            raise RuntimeError(f"no transition from {current.name} to {state.name}")
        if isinstance(state, ClientFlightState) and not isinstance(current, ClientFlightState):
            self._marks.mark_flight()
        self._state = state

    def _step(self) -> Step:
        """The seed step the handshake waits for now (the state knows)."""
        return self._state.step or Step.CLIENT_FINISHED

    # The ClientHello(s) and our answer

    def _answer(self, hello: ClientHello, message: bytes, retry: RetryRequested | None) -> None:
        """Our answer to a ClientHello, written, and the state that follows it."""
        answer = server_flight.answer(
            hello, message, self._route, self._suites, self._groups,
            now=self._wall_seconds, retry=retry, trace=self._trace,
        )  # fmt: skip
        self._out += answer.records
        if isinstance(answer, server_flight.Flight):
            self._write = answer.write
            self._read = answer.read
        self._set_state(answer.state)

    def _second_client_hello(self, state: RetryRequested) -> None:
        message = self._messages.next_message()
        if message is None:
            return
        hello = server_flight.second_hello(state, message, alone=not self._messages.pending)
        self._handshake_records.second_hello()
        self._answer(hello, message.raw, retry=state)

    def _wall_seconds(self) -> int:
        return int(self._route.wall_clock().timestamp())

    # Records

    def _process_records(self) -> list[Event]:
        """Drain the record reader; every record is handled before the next is read."""
        app_data: list[bytes | memoryview] = []

        def drain(events: list[Event]) -> None:
            while not isinstance(self._state, Closed) and not self._peer_closed:
                if isinstance(self._state, Established) and not self._messages.pending:
                    # Every complete application-data record in one call (the data path);
                    # what is not one comes back decrypted, or is left to the one-record way.
                    assert self._read is not None
                    found = len(app_data)
                    inner = self._records.open_application_data(self._read, app_data)
                    if len(app_data) > found:
                        self._useless.progress()
                    if inner is not None:
                        events += self._established_inner(inner, app_data)
                        continue
                record = self._records.next_record()
                if record is None:
                    break
                if isinstance(self._state, Established):
                    assert self._read is not None
                    events += self._established_inner(self._read.decrypt(record), app_data)
                else:
                    events += self._handshake_record(record)

        events = self._guarded(drain)
        if app_data:
            data = app_data[0] if len(app_data) == 1 else b"".join(app_data)
            if not events:  # the data path: nothing else happened
                return [ApplicationData(data)]
            # Application data comes first: it was read before whatever ended the session.
            index = next(
                (i for i, e in enumerate(events) if not isinstance(e, HandshakeComplete)),
                len(events),
            )
            events.insert(index, ApplicationData(data))
        return events

    def _guarded(self, work: Callable[[list[Event]], None]) -> list[Event]:
        """Run ``work`` (which appends events); whatever it raises ends the handshake or the
        session here, the one place an alert becomes a ``HandshakeError`` (at the seed step
        of the current state). A bug never escapes to the proxy's event loop."""
        events: list[Event] = []
        try:
            work(events)
        except client_flight.Refused as refused:
            events.append(self._refuse(refused))
        except client_flight.Unverified as unverified:
            events.append(self._fail(unverified.error, presented=True))
        except TLSAlert as alert:
            if isinstance(self._state, Established):
                events.append(self._protocol_error(alert.alert, alert.detail))
            else:
                events.append(self._fail(alert.to_handshake_error(self._step())))
        except HandshakeError as error:
            events.append(self._fail(error))
        except Exception as exc:
            if isinstance(self._state, Established):
                events.append(self._protocol_error(Alert.INTERNAL_ERROR, type(exc).__name__))
            else:
                events.append(self._fail(internal_error(self._step(), exc)))
        return events

    def _handshake_record(self, record: Record) -> list[Event]:
        opened = self._handshake_records.open(record, self._read)
        if opened is None or opened[0] == ALERT:
            self._not_inside_a_message(record.content_type)
        if opened is None:
            self._useless.nothing(f"record of type {record.content_type}")
            return []
        content_type, content = opened
        if content_type == ALERT:
            return self._peer_alert(content)
        self._useless.progress()
        messages = self._messages
        messages.feed(content)
        if isinstance(state := self._state, RetryRequested):
            self._second_client_hello(state)
            return []
        # The client's flight: each whole message to the state that expects it.
        events: list[Event] = []
        while isinstance(state := self._state, ClientFlightState):
            message = messages.next_message()
            if message is None:
                break
            if message.msg_type != state.expects:
                raise TLSAlert(
                    Alert.UNEXPECTED_MESSAGE,
                    f"handshake message of type {message.msg_type} where the client's"
                    f" {state.expects.name.lower()} was expected",
                )
            if isinstance(state, ExpectCertificate):
                self._set_state(client_flight.certificate(state, message, self._route, self._trace))
            elif isinstance(state, ExpectCertificateVerify):
                self._set_state(client_flight.certificate_verify(state, message, self._trace))
            else:
                assert isinstance(state, ExpectFinished)
                events.append(self._finish(state, message))
        return events

    def _finish(self, state: ExpectFinished, message: Message) -> HandshakeComplete:
        established, decision = client_flight.finished(
            state, message, self._route, self._trace, more_buffered=self._messages.pending
        )
        negotiated = established.negotiated
        self._read = RecordProtection.from_secret(
            negotiated.suite, negotiated.schedule.client_application_traffic_secret
        )
        self._set_state(established)
        self._marks.mark_end()
        # A ticket (section 4.6.1) unless audit mode admitted a client it would refuse (no
        # refusal at all: the common case, told without the property's call).
        if (decision.refusal is None or decision.would_refuse is None) and self._write is not None:
            now = self._wall_seconds()
            if ticket := issue_ticket(self._route, established, decision, now, self._trace):
                self._out += self._write.encrypt(HANDSHAKE, ticket)
        return client_flight.completed(
            self._route.name, established, decision, self._marks.timings(),
            resumed=state.resumed is not None,
        )  # fmt: skip

    # After the handshake

    def _not_inside_a_message(self, content_type: int) -> None:
        """Section 5.1: "Handshake messages MUST NOT be interleaved with other record types"."""
        if self._messages.pending:
            raise TLSAlert(
                Alert.UNEXPECTED_MESSAGE,
                f"a record of type {content_type} between the fragments of a handshake message",
            )

    def _established_inner(
        self, inner: InnerPlaintext, app_data: list[bytes | memoryview]
    ) -> list[Event]:
        """One decrypted record of the established session."""
        assert self._read is not None
        if inner.content_type != HANDSHAKE:
            self._not_inside_a_message(inner.content_type)
        if inner.content_type == APPLICATION_DATA:
            if inner.content:
                app_data.append(inner.content)
                self._useless.progress()
            else:
                self._useless.nothing("empty application data")
            return []
        if inner.content_type == ALERT:
            return self._peer_alert(inner.content)
        self._read, requested = post_handshake.receive(
            inner.content, self._messages, self._read, self._useless, self._trace
        )
        self._key_update_owed |= requested
        return []

    def _key_update(self) -> bytes:
        """Our KeyUpdate record; what we send after it is under the next key."""
        assert self._write is not None
        record, self._write = post_handshake.key_update(self._write, self._trace)
        self._key_update_owed = False
        return record

    # Alerts

    def _peer_alert(self, content: bytes) -> list[Event]:
        alert, name = decode_alert(content)
        note(self._trace, "<-", "alert", alert=name)
        if isinstance(self._state, Established):
            if alert is Alert.CLOSE_NOTIFY:
                self._peer_closed = True
                return [PeerClosed(clean=True)]
            if alert is Alert.USER_CANCELED:
                self._useless.nothing("user_canceled alert")
                return []
            self._set_state(CLOSED)
            return [ProtocolError(f"the client sent alert {name}")]
        flight_sent = isinstance(self._state, ClientFlightState)
        return [self._fail(peer_alert_error(alert, name, self._step(), flight_sent=flight_sent))]

    def _send_alert(self, alert: Alert, level: int = _FATAL) -> None:
        if self._trace is not None:  # the name is an enum property: only when tracing
            note(self._trace, "->", "alert", alert=alert.name.lower())
        content = bytes((level, alert))
        if self._write is not None:
            self._out += self._write.encrypt(ALERT, content)
        else:
            self._out += encode_record(ALERT, content, RECORD_VERSION)

    def _protocol_error(self, alert: Alert, detail: str) -> ProtocolError:
        self._set_state(CLOSED)
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(TLSAlert):
                self._send_alert(alert)
        return ProtocolError(f"{alert.name.lower()}: {detail}")

    # Failures

    def _refuse(self, refused: client_flight.Refused) -> HandshakeFailed:
        """The allow-list refuses the client: an encrypted access_denied (seed step 6)."""
        error = refused.error
        alert = error.alert or Alert.ACCESS_DENIED
        error = HandshakeError(error.step, error.reason, error.detail, alert)
        return self._fail(error, identity=refused.identity, version="TLSv1.3")

    def _fail(
        self,
        error: HandshakeError,
        identity: PeerIdentity | None = None,
        version: str | None = None,
        *,
        presented: bool | None = None,
    ) -> HandshakeFailed:
        """End the handshake: the alert goes out, nothing more is read. ``presented``: the
        client presented a certificate (by default: the state knows its leaf)."""
        if presented is None:
            presented = self._state.leaf_der is not None
        self._set_state(CLOSED)
        self._marks.mark_end()
        self._records = RecordReader()  # nothing more is read: drop what is buffered
        self._messages = msgs.HandshakeAssembler()
        if error.alert is not None:
            with contextlib.suppress(TLSAlert, ValueError):
                self._send_alert(error.alert)
        return handshake_failed(
            error,
            self._marks,
            self._route.name,
            alert=error.alert,
            client_certificate_presented=presented,
            identity=identity,
            version=version,
        )
