"""The native engine against RFC 8446 over real sockets, and against ``openssl s_server`` where
the RFC leaves room: the same bytes go to both and the answers are compared.

The client is the test's own TLS 1.3 client (``tests.engine.native.tls13_client.MiniClient``)
driven over a TCP socket, so it can send what no real client library sends: padded records,
thousands of extensions, KeyUpdates it never reads the answer to, odd legacy versions."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlsproxy.engine.native.record_layer import MAX_PLAINTEXT_LENGTH, PaddingPolicy, encode_record
from mtlsproxy.pki import PkiFiles
from tests.engine.native.tls13_client import MiniClient
from tests.proxy.harness import RunningProxy, Upstream, start_proxy

ALLOW = ["spiffe_id: spiffe://example.org/ns/prod/sa/frontend"]


@pytest.fixture(scope="module")
def native(
    tmp_path_factory: pytest.TempPathFactory, pki: PkiFiles, echo: Upstream
) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("conformance")
    proxy = start_proxy(directory, pki, echo.port, "require", allow=ALLOW, engine="native")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def s_server(pki: PkiFiles) -> Iterator[int]:
    """``openssl s_server -tls1_3`` with our server certificate: the reference answers."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_3", "-quiet",
               "-cert", str(pki.server_cert), "-key", str(pki.server_key)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    process.kill()
    process.wait()


def first_answer(port: int, data: bytes, timeout: float = 3) -> str:
    """What a server answers to ``data`` first: ``server_hello``, ``alert <description> in
    <record version>`` (plaintext), ``close`` (no byte before the close) or ``timeout``."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while len(received) < 7:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            if not received:
                return "timeout"
        except ConnectionResetError:
            pass
    if not received:
        return "close"
    if received[0] == 21 and len(received) >= 7:
        return f"alert {received[6]} in {received[1:3].hex()}"
    if received[0] == 22 and len(received) > 5 and received[5] == 2:
        return "server_hello"
    return f"bytes {received[:8].hex()}"


def client_of(pki: PkiFiles, **options: object) -> MiniClient:
    certs = x509.load_pem_x509_certificates(pki.client_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    chain = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    return MiniClient(chain=chain, key=key, **options)  # type: ignore[arg-type]


class WireClient:
    """A ``MiniClient`` over a TCP socket: the test says what goes out and waits for what
    comes back (``pump``)."""

    def __init__(self, port: int, client: MiniClient) -> None:
        self.client = client
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self, until: Callable[[], bool], timeout: float = 5) -> bool:
        """Read and process the server's records until ``until()`` or the server closes or
        ``timeout`` passes; returns ``until()``."""
        deadline = time.monotonic() + timeout
        while not until() and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            self.client.receive(data)
        return until()

    def handshake(self) -> None:
        """ClientHello (and the second one after a HelloRetryRequest) through our Finished."""
        client = self.client
        self.send(client.client_hello())
        assert self.pump(lambda: client.server_finished or client.pending_hello is not None)
        if client.pending_hello is not None and not client.server_finished:
            self.send(client.pending_hello)
            assert self.pump(lambda: client.server_finished)
        self.send(client.flight())

    def roundtrip(self, payload: bytes) -> bool:
        """``payload`` through the echo upstream."""
        self.send(self.client.seal(payload, 23))
        return self.pump(lambda: payload in self.client.app_data)


@dataclasses.dataclass(frozen=True)
class FixedPadding(PaddingPolicy):
    """``amount`` zero octets after each record's content type, or as many as still fit
    (TLSInnerPlaintext at most 2^14 + 1 octets, section 5.4)."""

    amount: int = 0

    def padding_length(self, content_length: int) -> int:
        return max(0, min(self.amount, MAX_PLAINTEXT_LENGTH - content_length))


# Records padded toward the maximum length (RFC 8446 sections 5.2, 5.4)


@pytest.mark.parametrize("amount", [0, 1, 255, 4096, 10_000, 15_000, MAX_PLAINTEXT_LENGTH])
def test_every_legal_padding_length(native: RunningProxy, pki: PkiFiles, amount: int) -> None:
    """TLSInnerPlaintext may be 2^14 + 1 octets and the ciphertext 2^14 + 256: a client that
    pads its handshake and data records to the limit is served like any other."""
    with WireClient(native.port(), client_of(pki, padding=FixedPadding(amount=amount))) as wire:
        wire.handshake()
        assert wire.roundtrip(b"padded ping"), (wire.client.alerts, wire.closed)
        assert wire.client.tickets  # the NewSessionTicket came too


# A ClientHello with thousands of extensions (RFC 8446 section 4.1.2: extensions<8..2^16-1>)


def test_thousands_of_extensions_far_below_the_size_bound(native: RunningProxy, pki) -> None:
    """Bound the bytes, not a count that legitimate input may exceed: 12000 empty extensions
    of unassigned types (48 KB, under the 64 KiB bound) are served, as OpenSSL serves them."""
    extra = tuple((0x4000 + index, b"") for index in range(12_000))
    with WireClient(native.port(), client_of(pki, extra_extensions=extra)) as wire:
        wire.handshake()
        assert wire.roundtrip(b"many extensions"), (wire.client.alerts, wire.closed)


# A client that will not stop (RFC 8446 sections 4.6.3, 5.1; the limits are OpenSSL's)


@pytest.mark.parametrize("flood", ["key_updates", "empty_records"])
def test_a_flood_of_records_that_carry_nothing_is_cut_off(native, pki, flood: str) -> None:
    """A thousand requested KeyUpdates (or empty records) that the client never reads the
    answer to: the connection ends with unexpected_message after the limit, and nothing
    reaches the upstream."""
    with WireClient(native.port(), client_of(pki)) as wire:
        wire.handshake()
        assert wire.roundtrip(b"before")
        client = wire.client
        if flood == "key_updates":
            records = b"".join(client.key_update(requested=True) for _ in range(1000))
        else:
            records = b"".join(client.seal(b"", 23) for _ in range(1000))
        wire.send(records)
        assert wire.pump(lambda: bool(client.alerts))
        assert client.alerts == [10]  # unexpected_message
        assert client.key_updates == []  # owed replies are not written ahead of our data


# What the RFC leaves to the server: answered as OpenSSL answers (RFC 8446 section 4.2.1,
# appendix D)


def sslv2_client_hello(version: int) -> bytes:
    """An SSL 2.0-format ClientHello (RFC 6101 appendix E.2; RFC 5246 appendix E.2)."""
    ciphers = b"\x00\x00\x2f\x13\x01\x00"
    body = b"\x01" + version.to_bytes(2, "big") + len(ciphers).to_bytes(2, "big")
    body += b"\x00\x00\x00\x10" + ciphers + b"c" * 16  # no session id; 16-byte challenge
    return bytes((0x80 | len(body) >> 8, len(body) & 0xFF)) + body


LEGACY_VERSIONS = [0x0000, 0x0002, 0x0100, 0x0103, 0x0200, 0x02FF, 0x0300, 0x0301, 0x0302,
                   0x0304, 0xFFFF]  # fmt: skip


@pytest.mark.parametrize("version", LEGACY_VERSIONS, ids=lambda v: f"0x{v:04x}")
def test_legacy_version_with_supported_versions(native, s_server, pki, version: int) -> None:
    """supported_versions offers TLS 1.3; legacy_version is odd. OpenSSL refuses a
    legacy_version at or below SSL 3.0 (protocol_version; handshake_failure for 0x0300, which
    is how it says protocol_version in SSL 3.0 terms) and serves the rest: so do we."""
    hello = client_of(pki, legacy_version=version).client_hello()
    expected = first_answer(s_server, hello)
    assert expected == "server_hello" or expected.startswith(("alert 70 ", "alert 40 "))
    assert first_answer(native.port(), hello) == expected


@pytest.mark.parametrize("version", [0x0304, 0x0303, 0x0301, 0x0300, 0x0002])
def test_sslv2_client_hello(native: RunningProxy, s_server: int, version: int) -> None:
    """An SSL 2.0-format ClientHello cannot carry supported_versions: OpenSSL refuses it with
    an alert, not a bare close, and so do we."""
    hello = sslv2_client_hello(version)
    expected = first_answer(s_server, hello)
    assert expected.startswith("alert")
    assert first_answer(native.port(), hello) == expected


def old_client_hello(version: int) -> bytes:
    """A ClientHello without supported_versions: ``version`` is all the client speaks."""
    suites = b"\x00\x04\xc0\x2b\xc0\x2f"
    extensions = b"\x00\x0a\x00\x04\x00\x02\x00\x17"  # supported_groups: P-256
    body = version.to_bytes(2, "big") + b"r" * 32 + b"\x00" + suites + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    return encode_record(22, b"\x01" + len(body).to_bytes(3, "big") + body, 0x0301)


REFUSED_HELLOS = {
    "tls1.1 client": old_client_hello(0x0302),
    "tls1.0 client": old_client_hello(0x0301),
    "session_id length past the end": encode_record(
        22, b"\x01\x00\x00\x22\x03\x03" + b"r" * 32 + b"\xff", 0x0301
    ),
    "a ServerHello first": encode_record(22, b"\x02\x00\x00\x04abcd", 0x0303),
}


@pytest.mark.parametrize("hello", REFUSED_HELLOS.values(), ids=REFUSED_HELLOS.keys())
def test_the_alert_refusing_a_hello_has_openssls_record_version(
    native, s_server, hello: bytes
) -> None:
    """No version is agreed when the first flight is refused: OpenSSL says a refused version
    in the client's own terms (0x0302 to a TLS 1.1 client) and anything else in TLS 1.2's
    (RFC 8446 section 5.1: 0x0301 is for the initial ClientHello), and so do we."""
    expected = first_answer(s_server, hello)
    assert expected.startswith("alert")
    assert first_answer(native.port(), hello) == expected


@pytest.mark.parametrize("count", [2, 32, 33])
def test_change_cipher_specs_before_the_finished(native, s_server, pki, count: int) -> None:
    """Appendix D.4 speaks of one CCS; OpenSSL drops any number of them before the client's
    Finished, up to its limit on records that carry nothing (32), and so do we."""

    def outcome(port: int, client: MiniClient) -> str:
        with WireClient(port, client) as wire:
            wire.send(client.client_hello())
            assert wire.pump(lambda: client.server_finished)
            wire.send(encode_record(20, b"\x01") * count + client.flight())
            wire.pump(lambda: bool(client.tickets or client.alerts))
            return "ticket" if client.tickets else f"alerts {client.alerts}"

    expected = outcome(s_server, MiniClient(session_id=b"\x01" * 32))
    assert outcome(native.port(), client_of(pki, session_id=b"\x01" * 32)) == expected
    assert expected == ("ticket" if count <= 32 else "alerts [10]")
