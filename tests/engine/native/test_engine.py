"""The native TLS 1.3 engine, in memory: real Python ``ssl`` clients and a minimal client of our
own (``tls13_client.MiniClient``) for what Python cannot send."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsproxy.engine.events import (
    ApplicationData,
    ClientHelloReceived,
    HandshakeComplete,
    HandshakeFailed,
    PeerClosed,
    ProtocolError,
)
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.engine import NativeEngine
from mtlsproxy.engine.native.record_layer import encode_record
from mtlsproxy.engine.native.suites import CipherSuiteId, NamedGroup
from mtlsproxy.engine.openssl import PLAIN_HTTP_RESPONSE
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import RouteTable, ServerRoute
from mtlsproxy.vocabulary.failures import Alert, Reason, Step
from tests.engine.native.harness import (
    FakeClock,
    Outcome,
    build_route,
    client_context,
    run_handshake,
    table,
)
from tests.engine.native.tls13_client import MiniClient

REQUIRE, REQUEST, NONE = ClientAuthMode.REQUIRE, ClientAuthMode.REQUEST, ClientAuthMode.NONE


@pytest.fixture(scope="module")
def routes(pki: PkiFiles) -> dict[str, ServerRoute]:
    return {
        "require": build_route(pki, REQUIRE),
        "request": build_route(pki, REQUEST),
        "none": build_route(pki, NONE),
        "audit": build_route(pki, REQUIRE, enforce=False),
        "alpn": build_route(pki, NONE, alpn=("h2", "http/1.1")),
        "http": build_route(pki, REQUIRE, http=True),
        "rsa": build_route(pki, REQUIRE, rsa=True),
    }


def engine(route: ServerRoute, **options: object) -> SelectingEngine:
    return SelectingEngine(RouteTable(route).select, FakeClock(), **options)  # type: ignore[arg-type]


def handshake(
    route: ServerRoute, ctx: ssl.SSLContext, **options: object
) -> tuple[SelectingEngine, Outcome]:
    server = engine(route, **options)
    return server, run_handshake(server, ctx)


def chain_and_key(pki: PkiFiles, stem: str = "client") -> tuple[list[bytes], object]:
    from cryptography import x509

    name = stem.replace("-", "_")
    certs = x509.load_pem_x509_certificates(getattr(pki, f"{name}_cert").read_bytes())
    key = serialization.load_pem_private_key(getattr(pki, f"{name}_key").read_bytes(), None)
    return [c.public_bytes(serialization.Encoding.DER) for c in certs], key


def mini(pki: PkiFiles, stem: str | None = "client", **options: object) -> MiniClient:
    chain, key = chain_and_key(pki, stem) if stem else ([], None)
    return MiniClient(chain=chain, key=key, **options)  # type: ignore[arg-type]


def mini_handshake(server: SelectingEngine, client: MiniClient) -> list[object]:
    """ClientHello (and a second one after an HRR) through the server's flight."""
    events: list[object] = list(server.receive(client.client_hello()))
    client.receive(server.data_to_send())
    if client.pending_hello is not None:
        events += server.receive(client.pending_hello)
        client.receive(server.data_to_send())
    return events


# Success paths


def test_mutual_tls_application_data_both_ways(routes: dict[str, ServerRoute], pki) -> None:
    server, out = handshake(routes["require"], client_context(pki))
    complete = out.complete
    assert complete is not None, out.events
    assert isinstance(out.events[0], ClientHelloReceived)
    assert complete.version == "TLSv1.3" and complete.cipher == "TLS_AES_128_GCM_SHA256"
    assert complete.verified and complete.would_refuse is None and not complete.session_reused
    assert complete.identity is not None and complete.identity.subject_cn == "frontend"
    assert complete.client_certificate_presented and complete.client_certificate
    timings = complete.timings
    for phase in ("client_hello", "server_flight", "client_flight", "verify", "total"):
        assert getattr(timings, phase) is not None, phase
    assert out.received() == b"ping"
    assert server.handshake_complete
    # Server to client, larger than one record.
    payload = bytes(range(256)) * 200
    server.send(payload)
    assert out.client_in is not None and out.client is not None
    out.client_in.write(server.data_to_send())
    got = b""
    while len(got) < len(payload):
        got += out.client.read(65536)
    assert got == payload
    # close_notify both ways.
    server.close()
    out.client_in.write(server.data_to_send())
    with contextlib.suppress(ssl.SSLZeroReturnError):  # either is close_notify
        assert out.client.read(10) == b""
    with pytest.raises(RuntimeError):
        server.send(b"late")
    out.client.unwrap()
    assert out.client_out is not None
    assert server.receive(out.client_out.read()) == [PeerClosed(clean=True)]
    assert server.receive(b"more") == []


@pytest.mark.parametrize("suite", list(CipherSuiteId), ids=lambda s: s.name)
def test_every_cipher_suite(routes: dict[str, ServerRoute], pki, suite: CipherSuiteId) -> None:
    """Python's client offers all three suites; the server's list forces each one."""
    _, out = handshake(routes["require"], client_context(pki), cipher_suites=(suite,))
    assert out.complete is not None and out.complete.cipher == suite.name
    assert out.received() == b"ping"


@pytest.mark.parametrize("group", [NamedGroup.SECP256R1, NamedGroup.SECP384R1])
def test_python_client_retries_for_other_groups(routes, pki, group: NamedGroup) -> None:
    """Python sends an x25519 share only; a server restricted to a NIST curve sends a
    HelloRetryRequest and the real client answers it."""
    _, out = handshake(routes["require"], client_context(pki), groups=(group,))
    assert out.complete is not None, out.events
    assert out.received() == b"ping"


@pytest.mark.parametrize("group", list(NamedGroup), ids=lambda g: g.name)
@pytest.mark.parametrize("suite", list(CipherSuiteId), ids=lambda s: s.name)
def test_mini_client_every_group_and_suite(routes, pki, group, suite) -> None:
    server = engine(routes["require"])
    client = mini(pki, suites=(suite,), groups=(group,))
    mini_handshake(server, client)
    assert client.retry_group is None and client.server_finished
    assert client.certificate_request is not None
    verifier = routes["require"].policy.verifier
    ca_subjects = [ca.subject.public_bytes() for ca in verifier.ca_certificates]
    assert list(client.certificate_request.authorities) == ca_subjects
    events = server.receive(client.flight() + client.seal(b"hello", 23))
    assert isinstance(events[0], HandshakeComplete) and events[0].cipher == suite.name
    assert events[1] == ApplicationData(b"hello")


def test_hello_retry_request_at_the_message_level(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki, share_groups=(), session_id=b"\x11" * 32)
    mini_handshake(server, client)
    assert client.retry_group == NamedGroup.X25519
    assert client.ccs_received == 1  # middlebox compatibility: once, after the HRR
    events = server.receive(encode_record(20, b"\x01") + client.flight())
    assert isinstance(events[0], HandshakeComplete)


def after_retry_request(
    route: ServerRoute, pki: PkiFiles, **options: object
) -> tuple[SelectingEngine, MiniClient]:
    """A client without a key share we take, holding the HelloRetryRequest's answer
    (``client.pending_hello``) not yet sent."""
    server = engine(route)
    client = mini(pki, share_groups=(), **options)
    server.receive(client.client_hello())
    client.receive(server.data_to_send())
    assert client.pending_hello is not None
    return server, client


def test_second_client_hello_without_the_requested_share(routes, pki) -> None:
    server, client = after_retry_request(routes["require"], pki)
    # Send the first ClientHello again (no key share) instead of the retried one.
    events = server.receive(encode_record(22, client._first_hello))
    failed = events[-1]
    assert isinstance(failed, HandshakeFailed)
    assert failed.alert is Alert.ILLEGAL_PARAMETER and failed.step is Step.SERVER_HELLO


def test_no_shared_group_suite_or_signature(routes, pki) -> None:
    cases = [
        (
            {"groups": (NamedGroup.SECP384R1,)},
            {"groups": (NamedGroup.X25519,)},
            Reason.NO_SHARED_CIPHER,
        ),
        ({}, {"suites": (0x1304,)}, Reason.NO_SHARED_CIPHER),
        ({}, {"signature_schemes": (0x0401, 0x0503)}, Reason.NO_SHARED_SIGNATURE),
    ]
    for server_options, client_options, reason in cases:
        server = engine(routes["require"], **server_options)
        events = server.receive(mini(pki, **client_options).client_hello())
        failed = events[-1]
        assert isinstance(failed, HandshakeFailed), (client_options, events)
        assert (failed.step, failed.reason, failed.alert) == (
            Step.SERVER_HELLO,
            reason,
            Alert.HANDSHAKE_FAILURE,
        )
        assert server.data_to_send() == b"\x15\x03\x03\x00\x02\x02\x28"


def test_rsa_server_certificate(routes, pki) -> None:
    _, out = handshake(routes["rsa"], client_context(pki))
    assert out.complete is not None and out.received() == b"ping"


@pytest.mark.parametrize(
    ("route", "offered", "expected"),
    [
        ("alpn", ("http/1.1",), "http/1.1"),
        ("alpn", ("http/1.1", "h2"), "h2"),  # server preference, as OpenSSL via CPython
        ("alpn", ("spdy/3",), None),  # mismatch: no ALPN, no alert (OpenSSL's behaviour)
        ("alpn", (), None),
        ("http", ("h2", "http/1.1"), "http/1.1"),  # forward_identity http implies http/1.1
    ],
)
def test_alpn(routes, pki, route: str, offered: tuple[str, ...], expected: str | None) -> None:
    cert = "client" if route == "http" else None
    _, out = handshake(routes[route], client_context(pki, cert, alpn=offered))
    assert out.complete is not None and out.complete.alpn == expected
    assert out.client is not None and out.client.selected_alpn_protocol() == expected


# The policy table

VERIFY_FAILURES = {
    "client-untrusted": (Reason.CLIENT_CERT_UNTRUSTED, "TLSV1_ALERT_UNKNOWN_CA"),
    "client-expired": (Reason.CLIENT_CERT_EXPIRED, "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
    "client-notyet": (Reason.CLIENT_CERT_NOT_YET_VALID, "SSLV3_ALERT_BAD_CERTIFICATE"),
    "client-revoked": (Reason.CLIENT_CERT_REVOKED, "SSLV3_ALERT_CERTIFICATE_REVOKED"),
    "client-wrong-eku": (Reason.CLIENT_CERT_BAD_USAGE, "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"),
}
CERTS = ["client", None, "client-intermediate", "client-other", *VERIFY_FAILURES]


@pytest.mark.parametrize("cert", CERTS, ids=lambda c: c or "no-cert")
@pytest.mark.parametrize("mode", ["none", "request", "require", "audit"])
def test_policy_table(routes, pki, mode: str, cert: str | None) -> None:
    _, out = handshake(routes[mode], client_context(pki, cert))
    if (
        mode == "none"
        or cert in ("client", "client-intermediate")
        or (cert is None and mode == "request")
    ):
        assert out.complete is not None, out.events
        assert out.complete.would_refuse is None
        assert out.complete.verified is (mode != "none" and cert is not None)
        assert out.received() == b"ping"
        return
    if mode == "audit":
        complete = out.complete
        assert complete is not None, out.events
        assert complete.would_refuse is not None and not complete.verified
        if cert is None:
            assert complete.would_refuse.reason is Reason.CLIENT_CERT_MISSING
        elif cert == "client-other":
            assert complete.would_refuse.reason is Reason.IDENTITY_NOT_ALLOWED
        else:
            assert complete.would_refuse.step is Step.CLIENT_VERIFY
            assert complete.would_refuse.reason is VERIFY_FAILURES[cert][0]
            assert complete.identity is not None  # forwarded as unverified
        return
    failed = out.failed
    assert failed is not None, out.events
    if cert is None:
        assert (failed.step, failed.reason, failed.alert) == (
            Step.CLIENT_CERTIFICATE,
            Reason.CLIENT_CERT_MISSING,
            Alert.CERTIFICATE_REQUIRED,
        )
        assert out.client_error == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    elif cert == "client-other":
        assert (failed.step, failed.reason, failed.alert) == (
            Step.AUTHORIZE,
            Reason.IDENTITY_NOT_ALLOWED,
            Alert.ACCESS_DENIED,
        )
        assert failed.result == "refused" and failed.identity is not None
        assert failed.version == "TLSv1.3"
        assert out.client_error == "TLSV1_ALERT_ACCESS_DENIED"
    else:
        reason, client_sees = VERIFY_FAILURES[cert]
        assert (failed.step, failed.reason) == (Step.CLIENT_VERIFY, reason)
        assert out.client_error == client_sees
        assert failed.client_certificate_presented


# Malformed and hostile client flights


def established_pair(routes, pki) -> tuple[SelectingEngine, MiniClient]:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    events = server.receive(client.flight())
    assert isinstance(events[0], HandshakeComplete)
    return server, client


def failure(events: list[object]) -> HandshakeFailed:
    failed = events[-1]
    assert isinstance(failed, HandshakeFailed), events
    return failed


def test_one_byte_at_a_time(routes, pki) -> None:
    server = engine(routes["require"])
    out = run_handshake(server, client_context(pki), chunk=1)
    assert out.complete is not None and out.received() == b"ping"


def test_one_message_per_record_and_fragmented_messages(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    messages = client.flight_messages()
    data = b"".join(client.seal(m) for m in messages[:-1])
    # The Finished split over two records.
    data += client.seal(messages[-1][:10]) + client.seal(messages[-1][10:])
    events = server.receive(data)
    assert isinstance(events[0], HandshakeComplete)


def test_bad_client_finished(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    failed = failure(server.receive(client.flight(bad_finished=True)))
    assert (failed.step, failed.alert) == (Step.CLIENT_FINISHED, Alert.DECRYPT_ERROR)
    client.receive(server.data_to_send())
    assert client.alerts == [Alert.DECRYPT_ERROR]  # encrypted with our application key


def test_bad_certificate_verify_signature(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    failed = failure(server.receive(client.flight(bad_signature=True)))
    assert (failed.step, failed.reason, failed.alert) == (
        Step.CLIENT_VERIFY,
        Reason.CLIENT_CERT_INVALID,
        Alert.DECRYPT_ERROR,
    )


def test_certificate_of_someone_else_without_the_key(routes, pki) -> None:
    """A client replaying another client's certificate cannot sign CertificateVerify."""
    server = engine(routes["require"])
    chain, _ = chain_and_key(pki, "client")
    _, wrong_key = chain_and_key(pki, "client-other")
    client = MiniClient(chain=chain, key=wrong_key)
    mini_handshake(server, client)
    failed = failure(server.receive(client.flight()))
    assert (failed.step, failed.alert) == (Step.CLIENT_VERIFY, Alert.DECRYPT_ERROR)


@pytest.mark.parametrize("position", [0, 1], ids=["leaf", "intermediate"])
def test_a_client_certificate_of_an_unknown_version_is_a_bad_certificate(
    routes, pki, position: int
) -> None:
    """X.509 knows v1-v3 (RFC 5280 section 4.1.2.1); cryptography refuses others with its own
    exception, not a ValueError: still the client's malformed certificate, not our error."""
    chain, key = chain_and_key(pki, "client-intermediate")  # leaf, then the intermediate
    version_v3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2
    assert len(chain) >= 2 and version_v3 in chain[position]
    chain[position] = chain[position].replace(version_v3, bytes.fromhex("a003020105"), 1)
    server = engine(routes["require"])
    client = MiniClient(chain=chain, key=key)
    mini_handshake(server, client)
    # The leaf is refused as its Certificate arrives (our client could not sign with it).
    sent = client.seal(msgs.certificate(chain)) if position == 0 else client.flight()
    failed = failure(server.receive(sent))
    assert failed.alert is Alert.BAD_CERTIFICATE
    assert failed.reason in (Reason.MALFORMED, Reason.CLIENT_CERT_INVALID)


def test_tampered_client_record(routes, pki) -> None:
    def flip_last(index: int, data: bytes) -> bytes:
        return data[:-1] + bytes((data[-1] ^ 1,)) if index == 1 else data

    server = engine(routes["require"])
    out = run_handshake(server, client_context(pki), tamper=flip_last)
    failed = out.failed
    assert failed is not None and failed.alert is Alert.BAD_RECORD_MAC
    assert failed.reason is Reason.MALFORMED


def test_out_of_order_messages(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    certificate, verify, finished = client.flight_messages()
    failed = failure(server.receive(client.seal(certificate + finished + verify)))
    assert failed.alert is Alert.UNEXPECTED_MESSAGE and failed.step is Step.CLIENT_VERIFY


def test_finished_first_when_a_certificate_is_expected(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    *_, finished = client.flight_messages()
    failed = failure(server.receive(client.seal(finished)))
    assert failed.alert is Alert.UNEXPECTED_MESSAGE and failed.step is Step.CLIENT_CERTIFICATE


@pytest.mark.parametrize(
    ("record", "alert"),
    [
        (encode_record(22, b"\x14\x00\x00\x00"), Alert.UNEXPECTED_MESSAGE),  # plaintext handshake
        (encode_record(20, b"\x02"), Alert.UNEXPECTED_MESSAGE),  # CCS of another value
        (encode_record(20, b"\x01") * 33, Alert.UNEXPECTED_MESSAGE),  # 33 CCS, as OpenSSL
        (b"\x63\x03\x03\x00\x01\x00", Alert.UNEXPECTED_MESSAGE),  # unknown content type
        (b"\x17\x03\x03\x41\x01", Alert.RECORD_OVERFLOW),  # 2^14 + 257
        (b"\x16\x03\x03\x40\x01", Alert.RECORD_OVERFLOW),  # plaintext 2^14 + 1
        (encode_record(23, b"x" * 40), Alert.BAD_RECORD_MAC),  # not our key, no early data
    ],
)
def test_wrong_records_during_the_client_flight(routes, pki, record: bytes, alert: Alert) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    failed = failure(server.receive(record))
    assert failed.alert is alert
    client.receive(server.data_to_send())
    assert client.alerts == [alert]


def test_single_ccs_is_ignored(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    events = server.receive(encode_record(20, b"\x01") + client.flight())
    assert isinstance(events[0], HandshakeComplete)


def test_rejected_early_data_is_skipped(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki, early_data=True)
    events = server.receive(client.client_hello() + encode_record(23, b"0rtt" * 100))
    client.receive(server.data_to_send())
    events = server.receive(encode_record(23, b"more 0-RTT") + client.flight())
    assert isinstance(events[0], HandshakeComplete)


def test_early_data_skipping_is_bounded(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki, early_data=True)
    server.receive(client.client_hello())
    junk = encode_record(23, b"z" * 16000)
    events: list[object] = []
    for _ in range(5):
        events += server.receive(junk)
    assert failure(events).alert is Alert.BAD_RECORD_MAC


def test_data_after_finished_in_the_same_record(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    messages = client.flight_messages()
    failed = failure(server.receive(client.seal(b"".join(messages) + b"\x18\x00\x00\x01\x00")))
    assert failed.alert is Alert.UNEXPECTED_MESSAGE and failed.step is Step.CLIENT_FINISHED


def test_truncated_flight_then_eof(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    assert server.receive(client.flight()[:30]) == []
    failed = failure(server.receive_eof())
    assert (failed.step, failed.reason) == (Step.CLIENT_CERTIFICATE, Reason.PEER_CLOSED)


def test_eof_before_and_after_client_hello(routes, pki) -> None:
    server = engine(routes["require"])
    assert server.receive(mini(pki).client_hello()[:20]) == []
    failed = failure(server.receive_eof())
    assert (failed.step, failed.reason) == (Step.CLIENT_HELLO, Reason.PEER_CLOSED)


def test_ragged_eof_after_the_handshake(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    assert server.receive(client.seal(b"abc", 23)[:10]) == []
    assert server.receive_eof() == [PeerClosed(clean=False)]


def test_timeouts(routes, pki) -> None:
    server = engine(routes["require"])
    assert failure(server.handle_timeout()).step is Step.CLIENT_HELLO
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    failed = failure(server.handle_timeout())
    assert (failed.step, failed.reason, failed.alert) == (
        Step.CLIENT_CERTIFICATE,
        Reason.TIMEOUT,
        None,
    )
    assert server.handle_timeout() == []
    established, _ = established_pair(routes, pki)
    assert established.handle_timeout() == []


def test_client_rejects_our_certificate(routes, pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.rogue_ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _, out = handshake(routes["require"], ctx)
    failed = out.failed
    assert failed is not None
    assert (failed.step, failed.reason, failed.alert) == (
        Step.SERVER_CERTIFICATE,
        Reason.CLIENT_REJECTED_SERVER_CERT,
        None,
    )


# After the handshake


def test_key_update_from_the_client_with_request(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    events = server.receive(client.key_update(requested=True) + client.seal(b"after", 23))
    assert events == [ApplicationData(b"after")]
    server.send(b"reply")
    client.receive(server.data_to_send())
    assert client.key_updates == [False] and bytes(client.app_data) == b"reply"
    # And again without a request: no KeyUpdate from us.
    events = server.receive(client.key_update(requested=False) + client.seal(b"2", 23))
    assert events == [ApplicationData(b"2")]
    assert server.data_to_send() == b""


def test_key_update_must_end_its_record(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    events = server.receive(client.seal(b"\x18\x00\x00\x01\x00\x18\x00"))
    assert isinstance(events[-1], ProtocolError)
    client.receive(server.data_to_send())
    assert client.alerts == [Alert.UNEXPECTED_MESSAGE]


def test_server_rekeys_when_the_write_key_is_worn(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    server.chosen._write._key_update_threshold = 0  # type: ignore[union-attr]  # as if 2^24 records
    server.send(b"x" * 20000)
    client.receive(server.data_to_send())
    assert client.key_updates == [False]  # the fresh key is not worn: one update
    assert bytes(client.app_data) == b"x" * 20000


def test_client_alert_and_bad_records_after_the_handshake(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    events = server.receive(client.seal(b"\x02\x28", 21))
    assert events == [ProtocolError("the client sent alert handshake_failure")]
    server, client = established_pair(routes, pki)
    record = bytearray(client.seal(b"data", 23))
    record[-1] ^= 1
    events = server.receive(bytes(record))
    assert isinstance(events[0], ProtocolError)
    client.receive(server.data_to_send())
    assert client.alerts == [Alert.BAD_RECORD_MAC]
    server, client = established_pair(routes, pki)
    ticket = b"\x04\x00\x00\x01\x00"
    assert isinstance(server.receive(client.seal(ticket))[0], ProtocolError)


def test_data_and_close_notify_in_one_read(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    events = server.receive(client.seal(b"last", 23) + client.seal(b"\x01\x00", 21))
    assert events == [ApplicationData(b"last"), PeerClosed(clean=True)]


# Hand-over to OpenSSL


def test_tls12_client_is_handed_to_openssl(routes, pki) -> None:
    server, out = handshake(routes["require"], client_context(pki, version=ssl.TLSVersion.TLSv1_2))
    assert server.delegated
    assert out.complete is not None and out.complete.version == "TLSv1.2"
    assert out.complete.timings.client_hello is not None
    assert out.received() == b"ping"
    assert server.route is routes["require"]


def test_plain_http_is_answered_by_the_shared_path(routes) -> None:
    server = engine(routes["require"])
    events = server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    failed = failure(events)
    assert failed.reason is Reason.NOT_TLS
    assert server.data_to_send() == PLAIN_HTTP_RESPONSE


# Secrets


def test_traffic_secrets_match_the_client_key_log(routes, pki, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    server, out = handshake(routes["require"], client_context(pki, keylog=keylog))
    assert out.complete is not None
    lines = [line.split() for line in keylog.read_text().splitlines() if line and line[0] != "#"]
    logged = {label: bytes.fromhex(secret) for label, _, secret in lines}
    randoms = {bytes.fromhex(random) for _, random, _ in lines}
    native = server.chosen
    assert isinstance(native, NativeEngine)
    assert randoms == {native.client_random}
    derived = native.debug_traffic_secrets()
    for label in (
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
        "EXPORTER_SECRET",
    ):
        assert derived[label] == logged[label], label
    # No secret appears in the engine's repr or in any event.
    text = repr(server) + repr(out.events)
    for secret in derived.values():
        assert secret.hex() not in text and repr(secret)[2:-1] not in text


# Robustness


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.lists(st.binary(min_size=0, max_size=300), max_size=6))
def test_fuzz_after_a_valid_client_hello(routes, pki, junk: list[bytes]) -> None:
    """Whatever follows, the failure is the client's (never internal_error: a bug of ours,
    such as a compiled module's type check on input it did not expect)."""
    server = engine(routes["request"])
    client = MiniClient()
    events = server.receive(client.client_hello())
    for chunk in junk:
        events += server.receive(chunk)
        server.data_to_send()
    events += server.receive_eof()
    events += server.handle_timeout()
    assert not_ours(events), events


def mutated(data: bytes, where: float, how: int, byte: int) -> bytes:
    """``data`` with one byte flipped, cut short (never to nothing), or a byte inserted, at
    ``where`` (0..1)."""
    at = min(int(where * len(data)), len(data) - 1)
    if how == 0:
        return data[:at] + bytes((data[at] ^ (byte or 1),)) + data[at + 1 :]
    if how == 1:
        return data[: max(at, 1)]
    return data[:at] + bytes((byte,)) + data[at:]


def not_ours(events: list[object]) -> bool:
    """No failure is blamed on us: hostile input ends in the client's alert, never in
    internal_error (a bug, such as a compiled module's type check meeting what it did not
    expect)."""
    return not [e for e in events if getattr(e, "reason", None) is Reason.INTERNAL_ERROR]


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MUTATION = {"where": st.floats(0, 1), "how": st.integers(0, 2), "byte": st.integers(0, 255)}


@FUZZ
@given(**MUTATION)
def test_fuzz_a_mutated_client_hello(routes, where: float, how: int, byte: int) -> None:
    server = engine(routes["require"])
    events = server.receive(mutated(MiniClient().client_hello(), where, how, byte))
    events += server.receive_eof()
    assert not_ours(events), events


@FUZZ
@given(**MUTATION)
def test_fuzz_a_mutated_client_flight(routes, pki, where: float, how: int, byte: int) -> None:
    """The client's Certificate, CertificateVerify and Finished, damaged, then sealed with
    the right keys: what reaches the parsers and the verifier behind the record layer."""
    server = engine(routes["require"])
    client = mini(pki)
    mini_handshake(server, client)
    flight = mutated(b"".join(client.flight_messages()), where, how, byte)
    events = server.receive(client.seal(flight)) + server.receive_eof()
    assert not_ours(events), events


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(min_size=1, max_size=400), framed=st.booleans())
def test_fuzz_records_after_the_handshake(routes, pki, junk: bytes, framed: bool) -> None:
    server, _ = established_pair(routes, pki)
    data = encode_record(23, junk[: 2**14]) if framed else junk
    for event in server.receive(data):
        assert isinstance(event, ProtocolError | PeerClosed | ApplicationData)
    server.receive_eof()


def test_refusal_with_data_in_the_same_read_as_finished(routes, pki) -> None:
    """A client that sends its request right behind its Finished and is refused by the
    allow-list gets access_denied; its data never surfaces."""
    server = engine(routes["require"])
    client = mini(pki, "client-other")
    mini_handshake(server, client)
    flight = client.flight()
    events = server.receive(flight + client.seal(b"GET / HTTP/1.1\r\n\r\n", 23))
    failed = failure(events)
    assert (failed.step, failed.alert, failed.result) == (
        Step.AUTHORIZE,
        Alert.ACCESS_DENIED,
        "refused",
    )
    assert not any(isinstance(e, ApplicationData) for e in events)
    client.receive(server.data_to_send())
    assert client.alerts == [Alert.ACCESS_DENIED]


def test_early_data_before_a_retried_hello_is_skipped(routes, pki) -> None:
    server = engine(routes["require"])
    client = mini(pki, share_groups=(), early_data=True)
    server.receive(client.client_hello() + encode_record(23, b"early" * 50))
    client.receive(server.data_to_send())
    assert client.retry_group is not None and client.pending_hello is not None
    server.receive(encode_record(23, b"still early") + client.pending_hello)
    client.receive(server.data_to_send())
    events = server.receive(client.flight())
    assert isinstance(events[0], HandshakeComplete)


def test_post_handshake_message_refused_from_its_first_fragment(routes, pki) -> None:
    server, client = established_pair(routes, pki)
    events = server.receive(client.seal(b"\x0b\x00\xff"))  # a Certificate header, partial
    assert isinstance(events[-1], ProtocolError)


def test_record_padding_hides_lengths(pki) -> None:
    """tls.record_padding: what we send is padded to a multiple of the block (RFC 8446 5.4);
    a real client strips it."""
    route = build_route(pki)
    tls = dataclasses.replace(route.config.tls, record_padding=256)
    route = dataclasses.replace(route, config=dataclasses.replace(route.config, tls=tls))
    server = SelectingEngine(table(route).select, FakeClock())
    outcome = run_handshake(server, client_context(pki, "client"), ping=False)
    assert outcome.client_done and server.handshake_complete
    server.send(b"x" * 1000)
    wire = server.data_to_send()
    outcome.client_in.write(wire)
    lengths = []
    while wire:
        length = int.from_bytes(wire[3:5], "big")
        lengths.append(length)
        wire = wire[5 + length :]
    assert lengths and all((length - 16) % 256 == 0 for length in lengths)
    received = b""
    with contextlib.suppress(ssl.SSLWantReadError):
        while len(received) < 1000:
            received += outcome.client.read(4096)
    assert received == b"x" * 1000
