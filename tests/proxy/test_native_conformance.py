"""The native engine against RFC 8446 over real sockets, and against ``openssl s_server`` where
the RFC leaves room: the same bytes go to both and the answers are compared.

The client is the test's own TLS 1.3 client (``tests.engine.native.tls13_client.MiniClient``)
driven over a TCP socket, so it can send what no real client library sends: padded records,
thousands of extensions, KeyUpdates it never reads the answer to, odd legacy versions."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlsproxy.engine.native.record_layer import MAX_PLAINTEXT_LENGTH, PaddingPolicy
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
