"""forward_identity end to end: the upstream learns who the client is, and no client can spoof it.

PROXY v2 headers are decoded by an independent implementation (the ``proxy-protocol``
package) and by HAProxy from Debian as a real upstream; HTTP mode is checked against a real
HTTP/1.1 upstream (``h11``) that records every request it gets.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import h11
import pytest
from proxyprotocol.result import ProxyResultIPv4, ProxyResultIPv6
from proxyprotocol.v2 import ProxyProtocolV2

from mtlsproxy.pki import FRONTEND_SPIFFE_ID, PkiFiles
from tests.proxy.conftest import ProxyFactory
from tests.proxy.harness import Client, Upstream, eventually, refused_by

# PROXY v2


class HeaderRecorder(Upstream):
    """Reads the PROXY v2 header at the start of each connection, then echoes."""

    def __init__(self, family: int = socket.AF_INET) -> None:
        self.headers: list[bytes] = []
        self.address_family = family
        super().__init__(self._record)

    def _record(self, sock: socket.socket, server: Upstream) -> None:
        head = _recv_exactly(sock, 16)
        length = int.from_bytes(head[14:16], "big")
        self.headers.append(head + _recv_exactly(sock, length))
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(65536):
                sock.sendall(data)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("short PROXY header")
        data += chunk
    return data


@pytest.fixture
def recorder() -> Iterator[HeaderRecorder]:
    server = HeaderRecorder()
    yield server
    server.stop()


def pp2(proxy_factory: ProxyFactory, recorder: HeaderRecorder, **options: object):  # type: ignore[no-untyped-def]
    return proxy_factory(
        upstream_address=f"127.0.0.1:{recorder.port}",
        forward_identity=options.pop("forward_identity", "proxy_protocol_v2"),
        **options,
    )


def test_proxy_v2_verified_client(make_proxy: ProxyFactory, recorder: HeaderRecorder, pki) -> None:
    options = "{mode: proxy_protocol_v2, include_certificate: true, crc32c: true}"
    proxy = pp2(make_proxy, recorder, mode="require", forward_identity=options)
    client = Client(pki, proxy.port())
    with client.connect() as tls:
        tls.sendall(b"hello")
        assert tls.recv(5) == b"hello"
        local_port = tls.getsockname()[1]
    (header,) = recorder.headers
    result = ProxyProtocolV2().unpack(header)  # verifies the CRC32C too
    assert isinstance(result, ProxyResultIPv4)
    assert result.source == (IPv4Address("127.0.0.1"), local_port)
    assert result.dest == (IPv4Address("127.0.0.1"), proxy.port())
    tlv = result.tlv
    assert tlv.authority == "localhost"
    ssl = tlv.ssl
    assert ssl.has_ssl and ssl.has_cert_conn and ssl.has_cert_sess and ssl.verified
    assert ssl.version == "TLSv1.3" and ssl.cn == "frontend"
    assert ssl.cipher.startswith("TLS_")
    assert ssl.sig_alg == "ecdsa-with-SHA256" and ssl.key_alg == "EC256"
    leaf = pki.client_cert.read_bytes()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(leaf).public_bytes(Encoding.DER)
    assert ssl[0x28] == der
    assert tlv[0xE0] == FRONTEND_SPIFFE_ID.encode()
    assert tlv[0xE1] == hashlib.sha256(der).digest()
    assert tlv.crc32c is not None


def test_proxy_v2_anonymous_in_request_mode(
    make_proxy: ProxyFactory, recorder: HeaderRecorder, pki: PkiFiles
) -> None:
    proxy = pp2(make_proxy, recorder, mode="request")
    assert Client(pki, proxy.port(), cert=None).roundtrip(b"anon") == b"anon"
    ssl = ProxyProtocolV2().unpack(recorder.headers[0]).tlv.ssl
    assert ssl.has_ssl and not ssl.has_cert_sess and not ssl.verified and ssl.cn is None


def test_proxy_v2_over_ipv6(make_proxy: ProxyFactory, recorder: HeaderRecorder, pki) -> None:
    proxy = pp2(make_proxy, recorder, mode="require", listen='"[::1]:0"')
    context = Client(pki, 0).context()
    with (
        socket.create_connection(("::1", proxy.port()), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"v6")
        assert tls.recv(2) == b"v6"
    result = ProxyProtocolV2().unpack(recorder.headers[0])
    assert isinstance(result, ProxyResultIPv6)
    assert result.source[0] == IPv6Address("::1")
    assert result.tlv.ssl.verified


def test_proxy_v2_to_a_unix_socket(make_proxy: ProxyFactory, pki: PkiFiles, tmp_path) -> None:
    path = tmp_path / "app.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    headers: list[bytes] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            head = _recv_exactly(conn, 16)
            headers.append(head + _recv_exactly(conn, int.from_bytes(head[14:16], "big")))
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        proxy = make_proxy("require", upstream_address=f"unix:{path}",
                           forward_identity="proxy_protocol_v2")  # fmt: skip
        assert Client(pki, proxy.port()).roundtrip(b"unix") == b"unix"
    finally:
        listener.close()
    thread.join(timeout=5)
    result = ProxyProtocolV2().unpack(headers[0])
    # The client's address is TCP even though the upstream is a unix socket.
    assert isinstance(result, ProxyResultIPv4)
    assert result.tlv.ssl.verified and result.tlv.ssl.cn == "frontend"


def test_audit_mode_admits_and_forwards_as_unverified(
    make_proxy: ProxyFactory, recorder: HeaderRecorder, pki: PkiFiles
) -> None:
    allow = ["spiffe_id: spiffe://example.org/ns/prod/sa/frontend"]
    proxy = pp2(make_proxy, recorder, mode="require", allow=allow, enforce=False)
    assert Client(pki, proxy.port(), cert="client-other").roundtrip(b"a") == b"a"
    assert Client(pki, proxy.port(), cert=None).roundtrip(b"b") == b"b"
    assert Client(pki, proxy.port()).roundtrip(b"c") == b"c"
    other, anonymous, allowed = (ProxyProtocolV2().unpack(h).tlv.ssl for h in recorder.headers)
    assert not other.verified and other.cn == "intruder" and other.has_cert_sess
    assert not anonymous.verified and not anonymous.has_cert_sess
    assert allowed.verified
    assert proxy.handshakes(result="would_refuse", step="authorize",
                            reason="identity_not_allowed") == 1  # fmt: skip
    assert proxy.handshakes(result="would_refuse", step="client_certificate",
                            reason="client_cert_missing") == 1  # fmt: skip
    assert proxy.handshakes(result="ok") == 1
    assert proxy.handshakes(result="refused") == 0


HAPROXY_CONFIG = """\
global
    log stdout format raw local0
defaults
    mode tcp
    log global
    timeout connect 2s
    timeout client 5s
    timeout server 5s
frontend from_mtlsproxy
    bind 127.0.0.1:{port} accept-proxy
    log-format "client=%ci:%cp authority=%[fc_pp_authority]"
    default_backend echo
backend echo
    server echo 127.0.0.1:{echo}
"""


def test_haproxy_accepts_the_proxy_v2_header(
    make_proxy: ProxyFactory, upstream: Upstream, pki: PkiFiles, tmp_path: Path
) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, echo=upstream.port))
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert eventually(lambda: _listening(port), timeout=10)
        proxy = make_proxy("require", upstream_address=f"127.0.0.1:{port}",
                           forward_identity="proxy_protocol_v2")  # fmt: skip
        client = Client(pki, proxy.port())
        with client.connect() as tls:
            tls.sendall(b"through haproxy")
            assert tls.recv(15) == b"through haproxy"
            local_port = tls.getsockname()[1]
        time.sleep(0.3)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    # HAProxy logged the client address and SNI it read from our header, not its own peer.
    assert f"client=127.0.0.1:{local_port} authority=localhost" in output, output


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# HTTP


class HTTPUpstream(Upstream):
    """An HTTP/1.1 server (h11) that records every request and answers ``ok <n>``; an
    ``Upgrade: websocket`` request gets 101 and then an echo of raw bytes."""

    def __init__(self) -> None:
        self.requests: list[h11.Request] = []
        self.raw = bytearray()
        super().__init__(self._serve)

    def _serve(self, sock: socket.socket, server: Upstream) -> None:
        connection = h11.Connection(h11.SERVER)
        with contextlib.suppress(ConnectionError, h11.ProtocolError):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    self.raw += data
                    connection.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    self.requests.append(event)
                    if (b"upgrade", b"websocket") in [(k, v.lower()) for k, v in event.headers]:
                        sock.sendall(connection.send(h11.InformationalResponse(
                            status_code=101,
                            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
                        )))  # fmt: skip
                        trailing, _ = connection.trailing_data
                        if trailing:
                            sock.sendall(trailing)
                        while data := sock.recv(65536):
                            sock.sendall(data)
                        return
                elif isinstance(event, h11.EndOfMessage):
                    body = b"ok %d" % len(self.requests)
                    head = h11.Response(
                        status_code=200, headers=[("Content-Length", str(len(body)))]
                    )
                    sock.sendall(
                        connection.send(head)
                        + connection.send(h11.Data(data=body))
                        + connection.send(h11.EndOfMessage())
                    )
                    if connection.our_state is h11.MUST_CLOSE:
                        return
                    connection.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    def header(self, index: int, name: bytes) -> list[bytes]:
        return [v for k, v in self.requests[index].headers if k == name.lower()]


@pytest.fixture
def http_upstream() -> Iterator[HTTPUpstream]:
    server = HTTPUpstream()
    yield server
    server.stop()


def http_proxy(make_proxy: ProxyFactory, http_upstream: HTTPUpstream, **options: object):  # type: ignore[no-untyped-def]
    return make_proxy(
        upstream_address=f"127.0.0.1:{http_upstream.port}",
        forward_identity=options.pop(
            "forward_identity",
            "{mode: http, headers: {X-SSL-Client-Verify: verify, X-SSL-Client-S-DN: subject}}",
        ),
        **options,
    )


def read_responses(tls: socket.socket, count: int) -> list[bytes]:
    """``count`` HTTP responses (Content-Length bodies) read off ``tls``."""
    buffer, responses = b"", []
    while len(responses) < count:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), 0,
            )  # fmt: skip
            if len(rest) >= length:
                responses.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                continue
        chunk = tls.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return responses


GET = b"GET /%d HTTP/1.1\r\nHost: api\r\nX-Forwarded-Client-Cert: Hash=forged\r\n" \
      b"x-ssl-client-s-dn: CN=admin\r\n\r\n"  # fmt: skip


def test_every_keep_alive_request_gets_the_identity(
    make_proxy: ProxyFactory, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = http_proxy(make_proxy, http_upstream, mode="require")
    with Client(pki, proxy.port()).connect() as tls:
        assert tls.selected_alpn_protocol() is None  # the client offered none
        for index in range(3):
            tls.sendall(GET % index)
            (response,) = read_responses(tls, 1)
            assert response.startswith(b"HTTP/1.1 200") and response.endswith(
                b"ok %d" % (index + 1)
            )
        tls.sendall(GET % 3 + GET % 4 + GET % 5)  # pipelined
        assert len(read_responses(tls, 3)) == 3
    assert len(http_upstream.requests) == 6
    for index in range(6):
        (xfcc,) = http_upstream.header(index, b"x-forwarded-client-cert")
        assert b"Hash=" in xfcc and b"forged" not in xfcc
        assert b'Subject="CN=frontend"' in xfcc
        assert b"URI=" + FRONTEND_SPIFFE_ID.encode() in xfcc
        assert http_upstream.header(index, b"x-ssl-client-verify") == [b"SUCCESS"]
        assert http_upstream.header(index, b"x-ssl-client-s-dn") == [b"CN=frontend"]


def test_http_alpn_is_http11_only(
    make_proxy: ProxyFactory, http_upstream: HTTPUpstream, pki
) -> None:
    proxy = http_proxy(make_proxy, http_upstream, mode="require")
    context = Client(pki, proxy.port()).context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", proxy.port()), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_anonymous_client_gets_no_identity_and_cannot_spoof(
    make_proxy: ProxyFactory, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = http_proxy(make_proxy, http_upstream, mode="request")
    with Client(pki, proxy.port(), cert=None).connect() as tls:
        tls.sendall(GET % 0)
        read_responses(tls, 1)
    assert http_upstream.header(0, b"x-forwarded-client-cert") == []
    assert http_upstream.header(0, b"x-ssl-client-s-dn") == []
    assert http_upstream.header(0, b"x-ssl-client-verify") == [b"NONE"]


SMUGGLING = {
    "CL.TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "TE.CL": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "TE.TE": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             b"Transfer-encoding: identity\r\n\r\n0\r\n\r\n",
    "TE obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "duplicate CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                    b"Content-Length: 2\r\n\r\nab",
}  # fmt: skip


@pytest.mark.parametrize("attack", list(SMUGGLING), ids=list(SMUGGLING))
def test_smuggling_is_refused_and_never_reaches_the_upstream(
    make_proxy: ProxyFactory, http_upstream: HTTPUpstream, pki: PkiFiles, attack: str
) -> None:
    proxy = http_proxy(make_proxy, http_upstream, mode="require")
    with Client(pki, proxy.port()).connect() as tls:
        tls.sendall(GET % 0)  # a good request first: its response comes before the 400
        tls.sendall(SMUGGLING[attack])
        first, second = read_responses(tls, 2)
        assert first.startswith(b"HTTP/1.1 200")
        assert second.startswith(b"HTTP/1.1 400")
        assert tls.recv(10) == b""
    assert len(http_upstream.requests) == 1
    assert b"SMUGGLED" not in http_upstream.raw and b"POST" not in http_upstream.raw
    assert proxy.sample("mtlsproxy_http_requests_refused_total") == 1


def test_audit_mode_forwards_unverified(
    make_proxy: ProxyFactory, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    allow = ["spiffe_id: spiffe://example.org/ns/prod/sa/frontend"]
    proxy = http_proxy(make_proxy, http_upstream, mode="require", allow=allow, enforce=False)
    with Client(pki, proxy.port(), cert="client-other").connect() as tls:
        tls.sendall(GET % 0)
        read_responses(tls, 1)
    assert http_upstream.header(0, b"x-forwarded-client-cert") == []
    assert http_upstream.header(0, b"x-ssl-client-verify") == [b"FAILED"]
    assert proxy.handshakes(result="would_refuse", reason="identity_not_allowed") == 1
    assert refused_by(Client(pki, proxy.port(), cert="client-expired")) != ""


def test_websocket_upgrade_carries_both_ways(
    make_proxy: ProxyFactory, http_upstream: HTTPUpstream, pki: PkiFiles
) -> None:
    proxy = http_proxy(make_proxy, http_upstream, mode="require")
    upgrade = (
        b"GET /chat HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    frames = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" * 3  # masked "Hello" frames
    with Client(pki, proxy.port()).connect() as tls:
        tls.sendall(upgrade + frames)  # frames sent right away, before the 101
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += tls.recv(65536)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        while len(rest) < len(frames):
            rest += tls.recv(65536)
        assert rest == frames  # echoed raw by the upstream: the stream is opaque after 101
        opaque = b"GET / HTTP/1.1\r\nX-Forwarded-Client-Cert: forged\r\n\r\n"
        tls.sendall(opaque)
        echoed = b""
        while len(echoed) < len(opaque):
            echoed += tls.recv(65536)
        assert echoed == opaque  # after the upgrade, bytes are application data, untouched
    (request,) = http_upstream.requests
    assert [v for k, v in request.headers if k == b"x-forwarded-client-cert"]


def test_native_audit_mode_admits_a_certificate_that_fails_verification(
    make_proxy: ProxyFactory, recorder: HeaderRecorder, pki: PkiFiles
) -> None:
    """Only the native engine can: OpenSSL fails the handshake inside do_handshake()."""
    proxy = pp2(make_proxy, recorder, mode="require", enforce=False, engine="native")
    assert Client(pki, proxy.port(), cert="client-expired").roundtrip(b"late") == b"late"
    ssl = ProxyProtocolV2().unpack(recorder.headers[0]).tlv.ssl
    assert not ssl.verified and ssl.has_cert_sess
    assert proxy.handshakes(result="would_refuse", step="client_verify",
                            reason="client_cert_expired") == 1  # fmt: skip
