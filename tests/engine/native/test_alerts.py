"""Every alert of RFC 8446 section 6.2 a server sends, and what makes the native engine send
it: one row per (what the client sends -> the alert it reads). The alerts a server never sends
for a client's input are listed with the reason, so that the table covers the whole section."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from mtlsproxy.engine.events import HandshakeFailed, ProtocolError
from mtlsproxy.engine.hello_extensions import ExtensionType
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.record_layer import encode_record
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import ServerRoute
from mtlsproxy.vocabulary.failures import Alert
from tests.engine.native.harness import build_route
from tests.engine.native.test_engine import engine, established_pair, mini, mini_handshake
from tests.engine.native.tls13_client import MiniClient

Case = Callable[[ServerRoute, PkiFiles], tuple[SelectingEngine, MiniClient, list[object]]]


@pytest.fixture(scope="module")
def route(pki: PkiFiles) -> ServerRoute:
    return build_route(pki, ClientAuthMode.REQUIRE)


def hello_only(**options: object) -> Case:
    """A ClientHello from MiniClient(**options), nothing more."""

    def case(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, MiniClient, list]:
        server, client = engine(route), mini(pki, None, **options)
        return server, client, server.receive(client.client_hello())

    return case


def retried(on_retry: Callable[[MiniClient], None]) -> Case:
    """A HelloRetryRequest, then the second ClientHello as ``on_retry`` changed it."""

    def case(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, MiniClient, list]:
        server, client = engine(route), mini(pki, None, share_groups=(), on_retry=on_retry)
        return server, client, mini_handshake(server, client)

    return case


def raw_hello(extensions: list[tuple[int, bytes]]) -> Case:
    def case(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, MiniClient, list]:
        server, client = engine(route), mini(pki, None)
        hello = msgs.client_hello(os.urandom(32), b"", (0x1301,), extensions)
        return server, client, server.receive(encode_record(22, hello, 0x0301))

    return case


def flight(stem: str | None = "client", rewrite: Callable[[list[bytes]], list[bytes]] | None = None,
           **options: bool) -> Case:  # fmt: skip
    """Up to our flight; then the client's flight (of certificate ``stem``), ``rewrite``n."""

    def case(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, MiniClient, list]:
        server, client = engine(route), mini(pki, stem)
        mini_handshake(server, client)
        messages = client.flight_messages(**options)
        if rewrite is not None:
            messages = rewrite(messages)
        data = client.seal(b"".join(messages))
        client.to_application_keys()
        return server, client, server.receive(data)

    return case


def after_flight(record: Callable[[MiniClient], bytes]) -> Case:
    def case(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, MiniClient, list]:
        server, client = engine(route), mini(pki)
        mini_handshake(server, client)
        return server, client, server.receive(record(client))

    return case


def established(record: Callable[[MiniClient], bytes]) -> Case:
    def case(route: ServerRoute, pki: PkiFiles) -> tuple[SelectingEngine, MiniClient, list]:
        server, client = established_pair({"require": route}, pki)
        client.receive(server.data_to_send())
        return server, client, server.receive(record(client))

    return case


def certificate_with(*, context: bytes = b"", entry_extensions: bytes = b"") -> Callable:
    def rewrite(messages: list[bytes]) -> list[bytes]:
        body = msgs.Buffer(messages[0][4:])
        body.pull_vector_bytes(1)
        with body.pull_block(3):
            leaf = body.pull_vector_bytes(3)
            body.pull_vector_bytes(2)
            rest = body.pull_bytes(body.remaining())
        entries = msgs.vector(leaf, 3) + msgs.vector(entry_extensions, 2) + rest
        certificate = msgs.handshake(11, msgs.vector(context, 1) + msgs.vector(entries, 3))
        return [certificate, *messages[1:]]

    return rewrite


def tampered(client: MiniClient) -> bytes:
    record = bytearray(client.flight())
    record[-1] ^= 1
    return bytes(record)


STATUS_REQUEST = 0x0005  # RFC 8446 section 4.4.2.1: OCSP in a CertificateEntry
SIGNATURE_ALGORITHMS_ONLY = [
    (ExtensionType.SUPPORTED_VERSIONS, msgs.vector(b"\x03\x04", 1)),
    (ExtensionType.SUPPORTED_GROUPS, msgs.uint16_list((0x001D,))),
    (ExtensionType.SIGNATURE_ALGORITHMS, msgs.uint16_list((0x0403,))),
]

# (alert, what the client sends) -> the alert the client reads.
TABLE: dict[str, tuple[Alert, Case]] = {
    "Finished where the Certificate is due": (
        Alert.UNEXPECTED_MESSAGE, flight(rewrite=lambda m: m[-1:])),
    "KeyUpdate before the Finished": (
        Alert.UNEXPECTED_MESSAGE, after_flight(lambda c: c.seal(msgs.key_update(False)))),
    "change_cipher_spec of another value": (
        Alert.UNEXPECTED_MESSAGE, after_flight(lambda _: encode_record(20, b"\x02"))),
    "KeyUpdate fragments with data between": (
        Alert.UNEXPECTED_MESSAGE,
        established(lambda c: c.seal(b"\x18\x00") + c.seal(b"x", 23) + c.seal(b"\x00\x01\x00"))),
    "a record that does not authenticate": (Alert.BAD_RECORD_MAC, after_flight(tampered)),
    "a record of 2^14 + 257 bytes": (
        Alert.RECORD_OVERFLOW, after_flight(lambda _: b"\x17\x03\x03\x41\x01")),
    "no cipher suite in common": (Alert.HANDSHAKE_FAILURE, hello_only(suites=(0x1304,))),
    "no signature scheme in common": (
        Alert.HANDSHAKE_FAILURE, hello_only(signature_schemes=(0x0201,))),
    "a certificate that does not parse": (
        Alert.BAD_CERTIFICATE,
        flight(rewrite=lambda m: [msgs.certificate([b"\x30\x03junk"]), *m[2:]])),
    "a certificate without clientAuth": (Alert.UNSUPPORTED_CERTIFICATE, flight("client-wrong-eku")),
    "a revoked certificate": (Alert.CERTIFICATE_REVOKED, flight("client-revoked")),
    "an expired certificate": (Alert.CERTIFICATE_EXPIRED, flight("client-expired")),
    "a certificate_request_context we did not send": (
        Alert.ILLEGAL_PARAMETER, flight(rewrite=certificate_with(context=b"x"))),
    "a second ClientHello that changes its random": (
        Alert.ILLEGAL_PARAMETER,
        retried(lambda c: setattr(c, "random", os.urandom(32)))),
    "KeyUpdate with request_update 2": (
        Alert.ILLEGAL_PARAMETER, established(lambda c: c.seal(b"\x18\x00\x00\x01\x02"))),
    "a certificate of an unknown CA": (Alert.UNKNOWN_CA, flight("client-untrusted")),
    "a client the allow-list refuses": (Alert.ACCESS_DENIED, flight("client-other")),
    "a truncated CertificateVerify": (
        Alert.DECODE_ERROR, flight(rewrite=lambda m: [m[0], msgs.handshake(15, b"\x08"), m[2]])),
    "a Finished of the wrong length": (
        Alert.DECODE_ERROR, flight(rewrite=lambda m: [*m[:2], msgs.handshake(20, b"short")])),
    "a wrong Finished": (Alert.DECRYPT_ERROR, flight(bad_finished=True)),
    "a CertificateVerify that does not verify": (Alert.DECRYPT_ERROR, flight(bad_signature=True)),
    "legacy_version SSL 2.0 with supported_versions": (
        Alert.PROTOCOL_VERSION, hello_only(legacy_version=0x0200)),
    "no key_share with TLS 1.3": (Alert.MISSING_EXTENSION, raw_hello(SIGNATURE_ALGORITHMS_ONLY)),
    "an extension in a CertificateEntry we did not request": (
        Alert.UNSUPPORTED_EXTENSION,
        flight(rewrite=certificate_with(
            entry_extensions=STATUS_REQUEST.to_bytes(2, "big") + msgs.vector(b"\x01", 2)))),
    "no certificate in mode require": (Alert.CERTIFICATE_REQUIRED, flight(None)),
}  # fmt: skip

# Section 6.2 alerts a server does not send for what a client sends, and why.
NOT_SENT = {
    Alert.CLOSE_NOTIFY: "a closure alert (section 6.1): sent by close(), tested there",
    Alert.USER_CANCELED: "a closure alert a client sends; we never cancel",
    Alert.CERTIFICATE_UNKNOWN: "every refused certificate gets its specific alert",
    Alert.INSUFFICIENT_SECURITY: "nothing weaker than our suites and groups is ever negotiated",
    Alert.INTERNAL_ERROR: "our own failure, never the client's input",
    Alert.INAPPROPRIATE_FALLBACK: "TLS_FALLBACK_SCSV concerns TLS 1.2 and below: OpenSSL's",
    Alert.UNRECOGNIZED_NAME: "an unknown server_name gets the default route",
    Alert.BAD_CERTIFICATE_STATUS_RESPONSE: "a client's alert about our OCSP response",
    Alert.UNKNOWN_PSK_IDENTITY: "an unknown ticket gets a full handshake (section 4.2.11)",
    Alert.NO_APPLICATION_PROTOCOL: "no ALPN in common is served without ALPN, as OpenSSL does",
}


def test_the_table_covers_section_6() -> None:
    covered = {alert for alert, _ in TABLE.values()} | set(NOT_SENT)
    assert covered == set(Alert)


@pytest.mark.parametrize("row", list(TABLE))
def test_alert(route: ServerRoute, pki: PkiFiles, row: str) -> None:
    alert, case = TABLE[row]
    server, client, events = case(route, pki)
    last = events[-1] if events else None
    if isinstance(last, HandshakeFailed):
        assert last.alert is alert, last
    else:
        assert isinstance(last, ProtocolError), events
        assert last.detail.startswith(alert.name.lower()), last
    client.receive(server.data_to_send())
    assert client.alerts[-1:] == [alert]  # what the client reads, plaintext or protected
