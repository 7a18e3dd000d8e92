"""Handshake message encoders and bounded decoders (RFC 8446 section 4)."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsproxy.engine.clienthello import ExtensionType, parse_client_hello
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.records import HandshakeType
from mtlsproxy.vocabulary.failures import Alert, HandshakeError


def body(message: bytes, msg_type: int) -> bytes:
    assert message[0] == msg_type
    assert int.from_bytes(message[1:4], "big") == len(message) - 4
    return message[4:]


def test_server_hello_round_trip() -> None:
    random = bytes(range(32))
    message = msgs.server_hello(random, b"\x07" * 32, 0x1301, 0x001D, b"\x01" * 32)
    hello = msgs.decode_server_hello(body(message, HandshakeType.SERVER_HELLO))
    assert hello.random == random and hello.session_id == b"\x07" * 32
    assert hello.cipher_suite == 0x1301 and hello.selected_version == 0x0304
    assert not hello.is_retry_request
    assert hello.key_share == msgs.KeyShareEntry(0x001D, b"\x01" * 32)
    assert message[4:6] == b"\x03\x03"  # legacy_version


def test_hello_retry_request_has_the_special_random_and_group() -> None:
    assert (
        bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
        == msgs.HELLO_RETRY_REQUEST_RANDOM
    )
    message = msgs.hello_retry_request(b"", 0x1302, 0x0017, cookie=b"abc")
    hello = msgs.decode_server_hello(body(message, HandshakeType.SERVER_HELLO))
    assert hello.is_retry_request and hello.cipher_suite == 0x1302
    assert hello.key_share == msgs.KeyShareEntry(0x0017, b"")
    assert msgs.extension_body(hello.extensions, msgs.EXT_COOKIE) == b"\x00\x03abc"


@pytest.mark.parametrize("alpn", [None, "h2", "http/1.1"])
def test_encrypted_extensions(alpn: str | None) -> None:
    message = msgs.encrypted_extensions(alpn)
    decoded = msgs.decode_encrypted_extensions(body(message, HandshakeType.ENCRYPTED_EXTENSIONS))
    assert decoded.alpn == alpn
    if alpn is None:
        assert message == b"\x08\x00\x00\x02\x00\x00"


def test_certificate_request_round_trip() -> None:
    names = [b"\x30\x03\x31\x01\x00", b"\x30\x00"]
    message = msgs.certificate_request([0x0403, 0x0804], names)
    decoded = msgs.decode_certificate_request(body(message, HandshakeType.CERTIFICATE_REQUEST))
    assert decoded.context == b"" and decoded.signature_schemes == (0x0403, 0x0804)
    assert decoded.authorities == tuple(names)
    without = msgs.certificate_request([0x0403])
    assert msgs.decode_certificate_request(without[4:]).authorities == ()


def test_certificate_request_needs_signature_algorithms() -> None:
    with pytest.raises(TLSAlert) as info:
        msgs.decode_certificate_request(b"\x00\x00\x00")
    assert info.value.alert is Alert.MISSING_EXTENSION


def test_certificate_round_trip_and_empty() -> None:
    chain = [b"leaf-der", b"intermediate-der"]
    decoded = msgs.decode_certificate(body(msgs.certificate(chain), HandshakeType.CERTIFICATE))
    assert decoded.chain == tuple(chain) and decoded.context == b""
    assert msgs.decode_certificate(msgs.certificate([])[4:]).chain == ()


def test_certificate_entry_extensions_are_unsolicited() -> None:
    """We request none (RFC 8446 4.4.2): any is unsupported_extension (4.2)."""
    entry = msgs.vector(b"der", 3) + msgs.vector(b"\x00\x05\x00\x00", 2)
    with pytest.raises(TLSAlert) as info:
        msgs.decode_certificate(msgs.vector(b"", 1) + msgs.vector(entry, 3))
    assert info.value.alert is Alert.UNSUPPORTED_EXTENSION
    entry = msgs.vector(b"der", 3) + msgs.vector(b"", 2)
    assert msgs.decode_certificate(msgs.vector(b"", 1) + msgs.vector(entry, 3)).chain == (b"der",)


def test_certificate_count_is_bounded() -> None:
    message = msgs.certificate([b"x"] * (msgs.MAX_CERTIFICATES + 1))
    with pytest.raises(TLSAlert) as info:
        msgs.decode_certificate(message[4:])
    assert info.value.alert is Alert.BAD_CERTIFICATE


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"\x00\x00\x00\x05\x00\x00\x01x",  # entry runs past the list
        b"\x00\x00\x00\x03\x00\x00\x00",  # empty cert_data
        msgs.certificate([b"der"])[4:] + b"\x00",  # trailing byte
    ],
)
def test_certificate_decode_errors(raw: bytes) -> None:
    with pytest.raises(TLSAlert) as info:
        msgs.decode_certificate(raw)
    assert info.value.alert is Alert.DECODE_ERROR


def test_certificate_verify_round_trip_and_errors() -> None:
    message = msgs.certificate_verify(0x0807, b"sig")
    assert msgs.decode_certificate_verify(body(message, 15)) == (0x0807, b"sig")
    for raw in (b"", b"\x08\x07", b"\x08\x07\x00\x00", b"\x08\x07\x00\x05sig"):
        with pytest.raises(TLSAlert):
            msgs.decode_certificate_verify(raw)


def test_finished_length_is_checked() -> None:
    assert msgs.decode_finished(msgs.finished(b"v" * 32)[4:], 32) == b"v" * 32
    with pytest.raises(TLSAlert) as info:
        msgs.decode_finished(b"v" * 31, 32)
    assert info.value.alert is Alert.DECODE_ERROR


def test_key_update_values() -> None:
    assert msgs.key_update(True) == b"\x18\x00\x00\x01\x01"
    assert msgs.decode_key_update(b"\x00") is False
    assert msgs.decode_key_update(b"\x01") is True
    with pytest.raises(TLSAlert) as info:
        msgs.decode_key_update(b"\x02")
    assert info.value.alert is Alert.ILLEGAL_PARAMETER
    with pytest.raises(TLSAlert) as info:
        msgs.decode_key_update(b"\x00\x00")
    assert info.value.alert is Alert.DECODE_ERROR


def test_client_hello_carries_the_key_shares() -> None:
    """The ClientHello is parsed once (engine.clienthello); its key shares come with it, and
    their key material stays out of reprs."""
    ext = msgs.key_share_extension([(0x001D, b"a" * 32), (0x0017, b"b" * 65)])
    message = msgs.client_hello(bytes(32), b"", [0x1301], [(ExtensionType.KEY_SHARE, ext)])
    hello = parse_client_hello(message[4:])
    assert [e.group for e in hello.key_shares] == [0x001D, 0x0017]
    assert hello.has_key_share and hello.key_share_groups == (0x001D, 0x0017)
    assert "aaaa" not in repr(hello.key_shares[0])
    empty = msgs.client_hello(bytes(32), b"", [0x1301], [(ExtensionType.KEY_SHARE, b"\x00\x00")])
    assert parse_client_hello(empty[4:]).key_shares == ()
    bad = msgs.client_hello(
        bytes(32), b"", [0x1301], [(ExtensionType.KEY_SHARE, b"\x00\x04\x00\x1d\x00\x00")]
    )  # an empty key_exchange
    with pytest.raises(HandshakeError) as info:
        parse_client_hello(bad[4:])
    assert info.value.alert is Alert.DECODE_ERROR


def test_duplicate_extension_in_server_hello_is_illegal() -> None:
    ext = (ExtensionType.SUPPORTED_VERSIONS, b"\x03\x04")
    raw = b"\x03\x03" + bytes(32) + b"\x00\x13\x01\x00" + msgs.extensions_block([ext, ext])
    with pytest.raises(TLSAlert) as info:
        msgs.decode_server_hello(raw)
    assert info.value.alert is Alert.ILLEGAL_PARAMETER


def test_assembler_reassembles_any_split() -> None:
    stream = msgs.finished(b"f" * 32) + msgs.key_update(False) + msgs.certificate([b"x" * 500])
    assembler = msgs.HandshakeAssembler()
    got = []
    for byte in stream:
        assembler.feed(bytes((byte,)))
        while (message := assembler.next_message()) is not None:
            got.append(message)
    assert [m.msg_type for m in got] == [20, 24, 11]
    assert b"".join(m.raw for m in got) == stream
    assert not assembler.pending


def test_assembler_refuses_oversize_length_from_the_header() -> None:
    assembler = msgs.HandshakeAssembler(max_size=1000)
    assembler.feed(b"\x0b\x00\x03\xe9")
    with pytest.raises(TLSAlert) as info:
        assembler.next_message()
    assert info.value.alert is Alert.DECODE_ERROR


def test_hrr_random_constant_matches_rfc() -> None:
    assert hashlib.sha256(b"HelloRetryRequest").digest() == msgs.HELLO_RETRY_REQUEST_RANDOM


# Every decoder of client input, on arbitrary bytes: only the engine's own alert escapes.

DECODERS = {
    "certificate": msgs.decode_certificate,
    "certificate_verify": msgs.decode_certificate_verify,
    "finished": lambda body: msgs.decode_finished(body, 32),
    "key_update": msgs.decode_key_update,
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(DECODERS)), body=st.binary(max_size=512))
def test_decoders_raise_only_alerts(name: str, body: bytes) -> None:
    with contextlib.suppress(TLSAlert):
        DECODERS[name](body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=64), max_size=10))
def test_assembler_raises_only_alerts(chunks: list[bytes]) -> None:
    assembler = msgs.HandshakeAssembler()
    try:
        for chunk in chunks:
            assembler.feed(chunk)
            while assembler.next_message() is not None:
                pass
    except TLSAlert:
        pass
