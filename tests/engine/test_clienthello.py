"""The ClientHello reader: real hellos from Python ssl and openssl, splits, malformed input."""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsproxy.engine.clienthello import (
    MAX_CLIENT_HELLO_SIZE,
    ClientHello,
    ClientHelloReader,
    ExtensionType,
    is_grease,
    parse_client_hello,
)
from mtlsproxy.engine.records import MAX_PLAINTEXT_RECORD
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step

JA4_RE = re.compile(r"^t(13|12|11|10|s3|s2|00)[di]\d{4}[0-9A-Za-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- real ClientHellos ------------------------------------------------------------------------


def python_hello(
    *, server_hostname: str | None = "api.example.org", alpn: bool = True, tls12: bool = False
) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    outgoing = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


HELLO13 = python_hello()
HELLO12 = python_hello(tls12=True, alpn=False)
HELLO_NO_SNI = python_hello(server_hostname=None, alpn=False)


def read(data: bytes, max_size: int = MAX_CLIENT_HELLO_SIZE) -> ClientHello:
    reader = ClientHelloReader(max_size=max_size)
    hello = reader.feed(data)
    assert hello is not None
    assert reader.buffered == data
    return hello


def test_python_tls13_hello() -> None:
    hello = read(HELLO13)
    assert hello.legacy_version == 0x0303
    assert len(hello.random) == 32
    assert hello.server_name == "api.example.org"
    assert hello.alpn_protocols == ("h2", "http/1.1")
    assert hello.supported_versions[0] == 0x0304
    assert hello.offers_tls13
    assert hello.max_version == 0x0304
    assert hello.offered_versions == hello.supported_versions
    assert 0x1301 in hello.cipher_suites
    assert hello.compression_methods == b"\x00"
    assert 0x001D in hello.key_share_groups  # x25519
    assert set(hello.key_share_groups) <= set(hello.supported_groups)
    assert 0x0804 in hello.signature_algorithms  # rsa_pss_rsae_sha256
    assert hello.psk_key_exchange_modes == (1,)
    assert not hello.has_pre_shared_key
    assert not hello.has_early_data
    assert hello.extension_types[0] == ExtensionType.SERVER_NAME
    ja4 = hello.ja4()
    assert JA4_RE.match(ja4), ja4
    ciphers = len(hello.cipher_suites)
    assert ja4.startswith(f"t13d{ciphers:02d}{len(hello.extension_types):02d}h2_")
    assert re.fullmatch(r"[0-9a-f]{32}", hello.ja3())
    assert hello.ja3_string().startswith("771,")


def test_python_tls12_only_hello() -> None:
    hello = read(HELLO12)
    assert hello.supported_versions == ()
    assert hello.offered_versions == (0x0303,)
    assert not hello.offers_tls13
    assert hello.max_version == 0x0303
    assert hello.key_share_groups == ()
    assert hello.alpn_protocols == ()
    assert hello.server_name == "api.example.org"
    assert hello.cipher_suites
    assert 0x1301 not in hello.cipher_suites
    assert hello.ja4().startswith("t12d")
    assert hello.ja4()[8:10] == "00"


def test_python_hello_without_sni() -> None:
    hello = read(HELLO_NO_SNI)
    assert hello.server_name is None
    assert ExtensionType.SERVER_NAME not in hello.extension_types
    assert hello.ja4().startswith("t13i")
    assert JA4_RE.match(hello.ja4())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_s_client_hello() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            result["error"] = exc
            return
        with conn:
            conn.settimeout(10)
            reader = ClientHelloReader()
            hello = None
            while hello is None:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                hello = reader.feed(chunk)
            result["hello"] = hello
            result["buffered"] = reader.buffered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "x.example.org",
                "-alpn",
                "h2",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=15,
            check=False,
        )
    finally:
        thread.join(15)
        listener.close()
    hello = result.get("hello")
    assert isinstance(hello, ClientHello), result
    assert hello.server_name == "x.example.org"
    assert hello.alpn_protocols == ("h2",)
    assert hello.offers_tls13
    assert hello.key_share_groups
    assert hello.ja4().startswith("t13d")
    assert hello == read(bytes(result["buffered"]))  # type: ignore[arg-type]


# --- builders for synthetic hellos ------------------------------------------------------------


def u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def vec8(data: bytes) -> bytes:
    return u8(len(data)) + data


def vec16(data: bytes) -> bytes:
    return u16(len(data)) + data


def ext(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + vec16(body)


def sni_ext(name: bytes) -> bytes:
    return ext(0, vec16(b"\x00" + vec16(name)))


def default_extensions() -> list[bytes]:
    return [
        sni_ext(b"svc.example.org"),
        ext(0x000A, vec16(u16(0x001D) + u16(0x0017))),
        ext(0x000D, vec16(u16(0x0403) + u16(0x0804))),
        ext(0x0010, vec16(vec8(b"h2"))),
        ext(0x002B, vec8(u16(0x0304) + u16(0x0303))),
        ext(0x002D, vec8(b"\x01")),
        ext(0x0033, vec16(u16(0x001D) + vec16(b"\x11" * 32))),
    ]


def build_body(
    *,
    version: int = 0x0303,
    session_id: bytes = b"\x00" * 32,
    ciphers: Iterable[int] = (0x1301, 0x1302, 0xC02B),
    compression: bytes = b"\x00",
    extensions: list[bytes] | None = None,
) -> bytes:
    exts = default_extensions() if extensions is None else extensions
    body = u16(version) + b"\x42" * 32 + vec8(session_id)
    body += vec16(b"".join(u16(c) for c in ciphers)) + vec8(compression)
    if exts:
        body += vec16(b"".join(exts))
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return u8(msg_type) + len(body).to_bytes(3, "big") + body


def records(payload: bytes, size: int = MAX_PLAINTEXT_RECORD, content_type: int = 22) -> bytes:
    out = b""
    for start in range(0, len(payload), size):
        chunk = payload[start : start + size]
        out += u8(content_type) + b"\x03\x01" + vec16(chunk)
    return out


def frame(body: bytes, msg_type: int = 1, size: int = MAX_PLAINTEXT_RECORD) -> bytes:
    return records(handshake(body, msg_type), size)


def unframe(data: bytes) -> bytes:
    """The handshake bytes of a well-formed record stream."""
    out = b""
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def expect_error(
    data: bytes, reason: Reason, max_size: int = MAX_CLIENT_HELLO_SIZE
) -> Alert | None:
    reader = ClientHelloReader(max_size=max_size)
    with pytest.raises(HandshakeError) as info:
        reader.feed(data)
    assert info.value.step is Step.CLIENT_HELLO
    assert info.value.reason is reason, info.value
    # The failure is sticky.
    with pytest.raises(HandshakeError):
        reader.feed(b"\x00")
    return info.value.alert


def test_synthetic_hello_parses() -> None:
    hello = read(frame(build_body()))
    assert hello.server_name == "svc.example.org"
    assert hello.alpn_protocols == ("h2",)
    assert hello.supported_groups == (0x001D, 0x0017)
    assert hello.key_share_groups == (0x001D,)


# --- JA4 ---------------------------------------------------------------------------------------


def test_ja4_reference_vector() -> None:
    """The FoxIO-style example: a Chrome hello listed in wire order (ja4_ro), GREASE added."""
    ciphers = (
        0x0A0A, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
        0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
    )  # fmt: skip
    ext_types = (
        0x3A3A, 0x002D, 0x0033, 0x0010, 0xFE0D, 0x0017, 0x44CD, 0x0000, 0x000B, 0x000A,
        0x002B, 0xFF01, 0x0023, 0x0012, 0x0005, 0x000D, 0x001B, 0x5A5A,
    )  # fmt: skip
    sigalgs = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
    hello = ClientHello(
        legacy_version=0x0303,
        random=b"\x00" * 32,
        session_id=b"",
        cipher_suites=ciphers,
        compression_methods=b"\x00",
        extension_type_codes=b"".join(t.to_bytes(2) for t in ext_types),
        server_name="example.com",
        alpn_protocols=("h2", "http/1.1"),
        supported_versions=(0x7A7A, 0x0304, 0x0303),
        signature_algorithms=sigalgs,
    )
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x0A0B)
    assert hello.ja4() == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def test_ja4_alpn_and_empty_sections() -> None:
    base = ClientHello(
        legacy_version=0x0303,
        random=b"\x00" * 32,
        session_id=b"",
        cipher_suites=(0x0A0A,),
        compression_methods=b"\x00",
        extension_type_codes=b"",
    )
    assert base.ja4() == "t12i000000_000000000000_000000000000"
    assert ClientHello(**{**_fields(base), "alpn_protocols": ("http/1.1",)}).ja4()[8:10] == "h1"
    assert ClientHello(**{**_fields(base), "alpn_protocols": ("\xab\x30",)}).ja4()[8:10] == "a0"
    assert ClientHello(**{**_fields(base), "alpn_protocols": ("h",)}).ja4()[8:10] == "hh"


def _fields(hello: ClientHello) -> dict[str, object]:
    return {field.name: getattr(hello, field.name) for field in dataclasses.fields(hello)}


# --- splits and fragmentation ------------------------------------------------------------------


@pytest.mark.parametrize("data", [HELLO13, HELLO12, HELLO_NO_SNI], ids=["tls13", "tls12", "nosni"])
def test_one_byte_at_a_time(data: bytes) -> None:
    expected = read(data)
    reader = ClientHelloReader()
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) is None
    assert reader.feed(data[-1:]) == expected
    assert reader.buffered == data
    assert reader.hello_size == len(data)
    with pytest.raises(RuntimeError):
        reader.feed(b"\x16")


def test_split_at_every_offset() -> None:
    expected = read(HELLO13)
    for cut in range(1, len(HELLO13)):
        reader = ClientHelloReader()
        assert reader.feed(HELLO13[:cut]) is None
        assert reader.feed(HELLO13[cut:]) == expected
        assert reader.buffered == HELLO13


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_refragmented_records(size: int) -> None:
    expected = read(HELLO13)
    data = records(unframe(HELLO13), size)
    assert read(data) == expected
    reader = ClientHelloReader()
    for start in range(0, len(data), 13):
        hello = reader.feed(data[start : start + 13])
    assert hello == expected
    assert reader.buffered == data


def test_hello_spanning_max_size_records() -> None:
    padding = ext(0x0015, b"\x00" * 20000)  # RFC 7685 padding
    body = build_body(extensions=[*default_extensions(), padding])
    data = frame(body)
    assert int.from_bytes(data[3:5], "big") == MAX_PLAINTEXT_RECORD
    assert read(data).server_name == "svc.example.org"


def test_bytes_after_the_hello_records_are_kept() -> None:
    ccs = b"\x14\x03\x03\x00\x01\x01"
    reader = ClientHelloReader()
    hello = reader.feed(HELLO13 + ccs)
    assert hello is not None
    assert reader.buffered == HELLO13 + ccs
    assert reader.hello_size == len(HELLO13)


def test_second_message_in_hello_record_is_malformed() -> None:
    payload = unframe(HELLO13) + handshake(b"", msg_type=20)
    assert expect_error(records(payload), Reason.MALFORMED) is Alert.DECODE_ERROR


# --- malformed input ---------------------------------------------------------------------------


def test_every_prefix_needs_more() -> None:
    for data in (HELLO13, HELLO12, records(unframe(HELLO12), 50)):
        for cut in range(len(data)):
            assert ClientHelloReader().feed(data[:cut]) is None


@pytest.mark.parametrize(
    ("data", "http"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST /api HTTP/1.1\r\n", True),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", True),
        (b"CONNECT a:443 HTTP/1.1\r\n", True),
        (b"SSH-2.0-OpenSSH_9.6\r\n", False),
        (b"\x00\x00\x00\x00", False),
        (b"\x15\x03\x03\x00\x02\x02\x28", False),  # an alert record first
        (b"\x17\x03\x03\x00\x05hello", False),  # application data first
        (b"\x16\x02\x00", False),  # wrong major version
        (b"\x80\x2e\x04\x00\x02\x00\x15\x00\x00\x00\x10", False),  # SSLv2, not a hello
    ],
)
def test_not_tls(data: bytes, http: bool) -> None:
    reader = ClientHelloReader()
    with pytest.raises(HandshakeError) as info:
        reader.feed(data)
    assert info.value.reason is Reason.NOT_TLS
    assert info.value.alert is None
    assert reader.looks_like_http is http


def test_not_tls_is_decided_on_the_first_byte() -> None:
    for first in (b"G", b"\x15", b"\x00"):
        expect_error(first, Reason.NOT_TLS)
    expect_error(b"\x16\x01", Reason.NOT_TLS)
    expect_error(b"\x80\x2e\x02", Reason.NOT_TLS)  # an SSL 2.0 record, not a ClientHello


@pytest.mark.parametrize(
    ("version", "alert"),
    [(0x0002, Alert.PROTOCOL_VERSION), (0x0300, Alert.HANDSHAKE_FAILURE),
     (0x0303, Alert.PROTOCOL_VERSION), (0x0304, Alert.PROTOCOL_VERSION)],
)  # fmt: skip
def test_sslv2_client_hello_is_refused_with_openssls_alert(version: int, alert: Alert) -> None:
    """Decided on its first five bytes, whichever way they are split."""
    data = b"\x80\x2e\x01" + version.to_bytes(2, "big") + b"\x00\x15\x00\x00\x00\x10"
    reader = ClientHelloReader()
    for byte in data[:4]:
        assert reader.feed(bytes((byte,))) is None
    with pytest.raises(HandshakeError) as info:
        reader.feed(data[4:])
    assert (info.value.reason, info.value.alert) == (Reason.UNSUPPORTED_VERSION, alert)


def _malformed_cases() -> dict[str, tuple[bytes, Alert]]:
    hs = unframe(HELLO13)
    return {
        "zero_length_record": (b"\x16\x03\x01\x00\x00" + HELLO13, Alert.DECODE_ERROR),
        "oversize_record": (b"\x16\x03\x01\x40\x01", Alert.RECORD_OVERFLOW),
        "alert_mid_hello": (
            records(hs[:100]) + b"\x15\x03\x03\x00\x02\x02\x28",
            Alert.UNEXPECTED_MESSAGE,
        ),
        "ccs_mid_hello": (
            records(hs[:100]) + b"\x14\x03\x03\x00\x01\x01",
            Alert.UNEXPECTED_MESSAGE,
        ),
        "record_version_not_tls": (
            records(hs[:100]) + b"\x16\x04\x01\x00\x01\x00",
            Alert.DECODE_ERROR,
        ),
        "server_hello_first": (frame(b"\x03\x03" + b"\x00" * 40, 2), Alert.UNEXPECTED_MESSAGE),
        "finished_first_byte_only": (b"\x16\x03\x01\x00\x04\x14", Alert.UNEXPECTED_MESSAGE),
        "trailing_in_record": (records(hs + b"\x00"), Alert.DECODE_ERROR),
        "trailing_after_extensions": (
            frame(build_body() + b"\x00"),
            Alert.DECODE_ERROR,
        ),
        "duplicate_extension": (
            frame(build_body(extensions=[*default_extensions(), ext(0x000A, vec16(u16(29)))])),
            Alert.ILLEGAL_PARAMETER,
        ),
        "duplicate_grease_extension": (
            frame(
                build_body(extensions=[ext(0x1A1A, b""), *default_extensions(), ext(0x1A1A, b"")])
            ),
            Alert.ILLEGAL_PARAMETER,
        ),
        "psk_not_last": (
            frame(
                build_body(
                    extensions=[
                        ext(0x0029, vec16(vec16(b"id") + b"\x00" * 4) + vec16(vec8(b"\x00" * 32))),
                        *default_extensions(),
                    ]
                )
            ),
            Alert.ILLEGAL_PARAMETER,
        ),
        "empty_cipher_list": (frame(build_body(ciphers=())), Alert.DECODE_ERROR),
        "odd_cipher_list": (
            frame(b"\x03\x03" + b"\x42" * 32 + b"\x00" + vec16(b"\x13\x01\x13") + b"\x01\x00"),
            Alert.DECODE_ERROR,
        ),
        "no_null_compression": (frame(build_body(compression=b"\x01")), Alert.ILLEGAL_PARAMETER),
        "empty_compression": (frame(build_body(compression=b"")), Alert.DECODE_ERROR),
        "long_session_id": (frame(build_body(session_id=b"\x00" * 33)), Alert.DECODE_ERROR),
        "empty_alpn_name": (
            frame(build_body(extensions=[ext(0x0010, vec16(vec8(b"h2") + vec8(b"")))])),
            Alert.DECODE_ERROR,
        ),
        "empty_alpn_list": (
            frame(build_body(extensions=[ext(0x0010, vec16(b""))])),
            Alert.DECODE_ERROR,
        ),
        "empty_key_exchange": (
            frame(build_body(extensions=[ext(0x0033, vec16(u16(29) + vec16(b"")))])),
            Alert.DECODE_ERROR,
        ),
        "early_data_not_empty": (
            frame(build_body(extensions=[ext(0x002A, b"\x00")])),
            Alert.DECODE_ERROR,
        ),
        "empty_body": (frame(b""), Alert.DECODE_ERROR),
        "truncated_random": (frame(b"\x03\x03" + b"\x00" * 10), Alert.DECODE_ERROR),
    }


MALFORMED = _malformed_cases()


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed(name: str) -> None:
    data, alert = MALFORMED[name]
    assert expect_error(data, Reason.MALFORMED) is alert


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"bad_name.example.org",
        b"a..b",
        b"trailing.dot.",
        b".leading",
        b"x" * 64 + b".example.org",
        (b"a" * 60 + b".") * 4 + b"abcdefghij",  # 254 characters
        b"caf\xc3\xa9.example",
        b"sp ace.example",
    ],
)
def test_invalid_sni(name: bytes) -> None:
    body = build_body(extensions=[sni_ext(name)])
    expect_error(frame(body), Reason.MALFORMED)


def test_sni_is_lowercased_and_other_name_types_ignored() -> None:
    sni = ext(0, vec16(b"\x01" + vec16(b"opaque") + b"\x00" + vec16(b"API.Example.ORG")))
    assert read(frame(build_body(extensions=[sni]))).server_name == "api.example.org"
    two = ext(0, vec16(b"\x00" + vec16(b"a.example") + b"\x00" + vec16(b"b.example")))
    expect_error(frame(build_body(extensions=[two])), Reason.MALFORMED)
    longest = (b"a" * 63 + b".") * 3 + b"a" * 61  # 253 characters
    assert read(frame(build_body(extensions=[sni_ext(longest)]))).server_name == longest.decode()


def test_oversize_total() -> None:
    # A hello whose declared length cannot fit is refused from its header alone.
    assert expect_error(HELLO13[:9], Reason.MALFORMED, max_size=300) is Alert.DECODE_ERROR
    # Tiny records: the hello fits but its framing does not.
    data = records(unframe(HELLO13), 1)
    assert len(data) > 2000
    assert read(data, max_size=len(data)) == read(HELLO13)
    reader = ClientHelloReader(max_size=2000)
    with pytest.raises(HandshakeError) as info:
        for start in range(0, len(data), 64):
            reader.feed(data[start : start + 64])
    assert info.value.reason is Reason.MALFORMED
    assert len(reader.buffered) <= 2000 + 64
    # A declared length above 64 KiB is refused at once.
    expect_error(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00", Reason.MALFORMED)


def test_unsupported_versions() -> None:
    tls10 = frame(build_body(version=0x0301, extensions=[sni_ext(b"old.example")]))
    assert expect_error(tls10, Reason.UNSUPPORTED_VERSION) is Alert.PROTOCOL_VERSION
    tls10_no_ext = frame(build_body(version=0x0301, extensions=[]))
    assert expect_error(tls10_no_ext, Reason.UNSUPPORTED_VERSION) is Alert.PROTOCOL_VERSION
    only_old = [ext(0x002B, vec8(u16(0x0A0A) + u16(0x0302) + u16(0x0301)))]
    expect_error(frame(build_body(extensions=only_old)), Reason.UNSUPPORTED_VERSION)
    # supported_versions overrides legacy_version (RFC 8446 section 4.2.1)...
    modern = [ext(0x002B, vec8(u16(0x0304)))]
    assert read(frame(build_body(version=0x0301, extensions=modern))).max_version == 0x0304
    # ... down to TLS 1.0: SSL 3.0 and older are refused as OpenSSL refuses them.
    for version, alert in ((0x0300, Alert.HANDSHAKE_FAILURE), (0x0103, Alert.PROTOCOL_VERSION)):
        old = frame(build_body(version=version, extensions=modern))
        assert expect_error(old, Reason.UNSUPPORTED_VERSION) is alert


def refused_record_version(data: bytes) -> int:
    """The record version of the alert refusing ``data`` (``alert_record_version``)."""
    reader = ClientHelloReader()
    with pytest.raises(HandshakeError):
        reader.feed(data)
    return reader.alert_record_version


def test_the_alert_record_version_echoes_a_refused_version() -> None:
    """As openssl s_server writes it (tests/proxy/test_native_conformance.py compares the
    bytes): a refused version in the client's own terms, anything else in TLS 1.2's."""
    modern = [ext(0x002B, vec8(u16(0x0304)))]
    for version in (0x0000, 0x0103, 0x0300):
        assert refused_record_version(frame(build_body(version=version, extensions=modern))) == (
            version
        )
    assert refused_record_version(frame(build_body(version=0x0302, extensions=[]))) == 0x0302
    only_old = [ext(0x002B, vec8(u16(0x0302) + u16(0x0301)))]
    assert refused_record_version(frame(build_body(extensions=only_old))) == 0x0303
    sslv2 = b"\x80\x2e\x01%b\x00\x15\x00\x00\x00\x10"
    for version, echoed in ((0x0300, 0x0300), (0x0301, 0x0301), (0x0304, 0x0303), (2, 0x0303)):
        assert refused_record_version(sslv2 % version.to_bytes(2, "big")) == echoed
    malformed = b"\x16\x03\x01\x00\x26\x01\x00\x00\x22\x03\x03" + b"r" * 32 + b"\xff"
    assert refused_record_version(malformed) == 0x0303
    assert ClientHelloReader().alert_record_version == 0x0303


def test_tls12_without_extensions() -> None:
    hello = read(frame(build_body(extensions=[])))
    assert hello.extension_types == ()
    assert hello.offered_versions == (0x0303,)


def _length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the length prefixes in a single-record hello, outermost first."""
    fields = [(3, 2), (6, 3)]
    pos = 9 + 2 + 32
    fields.append((pos, 1))
    pos += 1 + data[pos]
    fields.append((pos, 2))
    pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    fields.append((pos, 1))
    pos += 1 + data[pos]
    fields.append((pos, 2))
    pos += 2
    while pos < len(data):
        fields.append((pos + 2, 2))
        pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return fields


@pytest.mark.parametrize("data", [HELLO13, HELLO12], ids=["tls13", "tls12"])
def test_every_length_field_mutated(data: bytes) -> None:
    fields = _length_fields(data)
    assert len(fields) > 8
    for offset, size in fields:
        value = int.from_bytes(data[offset : offset + size], "big")
        for delta in (-1, 1):
            if not 0 <= value + delta < 1 << (8 * size):
                continue
            mutated = bytearray(data)
            mutated[offset : offset + size] = (value + delta).to_bytes(size, "big")
            reader = ClientHelloReader()
            if offset == 3 or (offset == 6 and delta == 1):
                # A longer record or handshake message simply needs more bytes; a shorter
                # record leaves its last byte as the start of the next record's header.
                assert reader.feed(bytes(mutated)) is None
                continue
            with pytest.raises(HandshakeError) as info:
                reader.feed(bytes(mutated))
            assert info.value.reason is Reason.MALFORMED, (offset, delta)


def test_parse_client_hello_direct() -> None:
    body = build_body()
    assert parse_client_hello(body).server_name == "svc.example.org"
    with pytest.raises(HandshakeError):
        parse_client_hello(body[:-1])


# --- property tests ----------------------------------------------------------------------------


def feed_all(chunks: Iterable[bytes]) -> ClientHello | HandshakeError | None:
    reader = ClientHelloReader()
    fed = b""
    try:
        for chunk in chunks:
            fed += chunk
            result = reader.feed(chunk)
            if result is not None:
                assert reader.buffered == fed
                return result
    except HandshakeError as exc:
        assert exc.step is Step.CLIENT_HELLO
        return exc
    return None


def outcome(result: ClientHello | HandshakeError | None) -> object:
    return result.reason if isinstance(result, HandshakeError) else result


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    feed_all([data])
    feed_all([b"\x16\x03\x01" + data])


@SETTINGS
@given(
    st.sampled_from([HELLO13, HELLO12]),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "truncate", "insert", "delete"]),
            st.integers(min_value=0, max_value=600),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_hello(data: bytes, mutations: list[tuple[str, int, int]]) -> None:
    buf = bytearray(data)
    for kind, index, value in mutations:
        index %= len(buf) + 1
        if kind == "flip" and index < len(buf):
            buf[index] ^= value or 1
        elif kind == "truncate":
            del buf[index:]
        elif kind == "insert":
            buf[index:index] = bytes([value])
        elif kind == "delete" and index < len(buf):
            del buf[index]
        if not buf:
            buf = bytearray(b"\x16")
    result = feed_all([bytes(buf)])
    assert result is None or isinstance(result, ClientHello | HandshakeError)


@SETTINGS
@given(
    st.sampled_from([HELLO13, HELLO12, HELLO_NO_SNI]),
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40),
    st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40),
)
def test_random_fragmentation(data: bytes, record_sizes: list[int], read_sizes: list[int]) -> None:
    payload = unframe(data)
    stream = b""
    pos = 0
    i = 0
    while pos < len(payload):
        size = record_sizes[i % len(record_sizes)]
        stream += records(payload[pos : pos + size], size)
        pos += size
        i += 1
    chunks = []
    pos = 0
    i = 0
    while pos < len(stream):
        size = read_sizes[i % len(read_sizes)]
        chunks.append(stream[pos : pos + size])
        pos += size
        i += 1
    assert outcome(feed_all(chunks)) == outcome(feed_all([data]))


@SETTINGS
@given(st.binary(min_size=1, max_size=400), st.integers(min_value=1, max_value=50))
def test_random_record_stream_fragmentation(payload: bytes, size: int) -> None:
    """Arbitrary handshake bytes: fragmentation does not change the outcome."""
    whole = feed_all([records(payload)])
    split = feed_all([records(payload, size)])
    assert outcome(whole) == outcome(split)
