"""The handshake's fast readings of well-formed input agree with the strict readings they
stand in front of: the same result, or (for anything unusual) the strict reading's error.

- ``ClientHelloReader``: a hello whole in its first record (read without the record reader)
  against the same bytes fed one at a time (the record reader);
- ``messages.decode_certificate``: ``_usual_certificate`` against ``_read_certificate``;
- ``messages.decode_certificate_verify`` against ``_read_certificate_verify``;
- ``hello_extensions.parse_pre_shared_key``: ``_one_psk`` against ``_read_pre_shared_key``;
- ``messages.server_hello`` against the generic ``_server_hello`` layout, and the other
  encoders that pack their header with their fields (CertificateVerify, Finished,
  NewSessionTicket) against ``handshake`` and ``vector``;
- ``RecordProtection.decrypt``'s inline reading of an unpadded TLSInnerPlaintext against
  ``_inner_plaintext``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsproxy.engine import hello_extensions
from mtlsproxy.engine.clienthello import ClientHello, ClientHelloReader
from mtlsproxy.engine.hello_extensions import ExtensionType
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import record_layer
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.suites import TLS_AES_128_GCM_SHA256
from mtlsproxy.engine.records import DecodeError, HandshakeType
from mtlsproxy.vocabulary.failures import HandshakeError

from .test_clienthello import python_hello


def _outcome_whole(data: bytes) -> ClientHello | str | None:
    try:
        return ClientHelloReader().feed(data)
    except HandshakeError as error:
        return f"{error.reason} {error.alert}"


def _outcome_bytewise(data: bytes) -> ClientHello | str | None:
    reader = ClientHelloReader()
    try:
        hello = None
        for index in range(len(data)):
            hello = reader.feed(data[index : index + 1])
            if hello is not None:
                break
    except HandshakeError as error:
        return f"{error.reason} {error.alert}"
    return hello


@pytest.fixture(scope="module")
def hello_bytes() -> bytes:
    return python_hello()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
def test_client_hello_whole_and_bytewise_agree(hello_bytes: bytes, flips: list) -> None:
    data = bytearray(hello_bytes)
    for position, value in flips:
        data[position % len(data)] = value
    # The same hello, or the same refusal (its detail may name the limit it met first: a
    # length is checked as soon as its bytes arrive, which depends on the split).
    assert _outcome_whole(bytes(data)) == _outcome_bytewise(bytes(data))


def test_client_hello_fast_reading_is_used(hello_bytes: bytes) -> None:
    reader = ClientHelloReader()
    hello = reader.feed(hello_bytes)
    assert hello is not None and reader.hello_size == len(hello_bytes)
    assert reader.message == hello_bytes[5:]


def _certificate_outcome(read: object, body: bytes) -> object:
    try:
        return read(body, msgs.MAX_CERTIFICATES)  # type: ignore[operator]
    except TLSAlert as alert:
        return alert.alert


@given(
    chain=st.lists(st.binary(min_size=1, max_size=40), max_size=4),
    context=st.binary(max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), max_size=2),
    cut=st.integers(0, 3),
)
def test_certificate_usual_and_strict_agree(
    chain: list[bytes], context: bytes, flips: list, cut: int
) -> None:
    data = bytearray(msgs.certificate(chain, context)[4:])
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    body = bytes(data[: len(data) - cut])
    usual = msgs._usual_certificate(body, msgs.MAX_CERTIFICATES)
    if usual is not None:
        assert usual == _certificate_outcome(msgs._read_certificate, body)
    if not flips and not cut:
        assert usual == msgs.CertificateMessage(context, tuple(chain))


def test_certificate_with_an_entry_extension_is_left_to_the_strict_reading() -> None:
    entry = msgs.vector(b"der", 3) + msgs.vector(b"\x00\x05\x00\x00", 2)
    body = msgs.vector(b"", 1) + msgs.vector(entry, 3)
    assert msgs._usual_certificate(body, msgs.MAX_CERTIFICATES) is None
    with pytest.raises(TLSAlert):
        msgs.decode_certificate(body)


# How the tests below damage a well-formed encoding: bytes changed, the end cut, bytes added.
_DAMAGE = {
    "flips": st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=2),
    "cut": st.integers(0, 3),
    "extra": st.binary(max_size=2),
}


def _damaged(data: bytes, flips: list[tuple[int, int]], cut: int, extra: bytes) -> bytes:
    changed = bytearray(data)
    for position, value in flips:
        if changed:
            changed[position % len(changed)] = value
    return bytes(changed[: len(changed) - cut]) + extra


def _assert_agree(fast: object, strict: object, body: bytes) -> None:
    """The same result, or the same error (type and words)."""

    def outcome(read: object) -> object:
        try:
            return read(body)  # type: ignore[operator]
        except (TLSAlert, DecodeError, HandshakeError) as error:
            return type(error).__name__, str(error)

    assert outcome(fast) == outcome(strict)


@given(scheme=st.integers(0, 0xFFFF), signature=st.binary(max_size=80), **_DAMAGE)
def test_certificate_verify_usual_and_strict_agree(
    scheme: int, signature: bytes, flips: list, cut: int, extra: bytes
) -> None:
    body = _damaged(scheme.to_bytes(2, "big") + msgs.vector(signature, 2), flips, cut, extra)
    _assert_agree(msgs.decode_certificate_verify, msgs._read_certificate_verify, body)
    if signature and not flips and not cut and not extra:
        assert msgs.decode_certificate_verify(body) == (scheme, signature)


def _offered_psks(identities: list[tuple[bytes, int]], binders: list[bytes]) -> bytes:
    listed = b"".join(msgs.vector(i, 2) + age.to_bytes(4, "big") for i, age in identities)
    return msgs.vector(listed, 2) + msgs.vector(b"".join(msgs.vector(b, 1) for b in binders), 2)


@given(
    identities=st.lists(
        st.tuples(st.binary(max_size=60), st.integers(0, 2**32 - 1)), min_size=1, max_size=2
    ),
    binders=st.lists(st.binary(min_size=30, max_size=50), min_size=1, max_size=2),
    **_DAMAGE,
)
def test_pre_shared_key_usual_and_strict_agree(
    identities: list, binders: list, flips: list, cut: int, extra: bytes
) -> None:
    body = _damaged(_offered_psks(identities, binders), flips, cut, extra)
    _assert_agree(
        hello_extensions.parse_pre_shared_key, hello_extensions._read_pre_shared_key, body
    )


def test_pre_shared_key_fast_reading_is_used() -> None:
    body = _offered_psks([(b"ticket", 7)], [b"b" * 32])
    usual = hello_extensions._one_psk(body)
    assert usual is not None
    assert (usual.identities, usual.binders, usual.binders_size) == (
        ((b"ticket", 7),),
        (b"b" * 32,),
        35,
    )


@pytest.mark.parametrize("session_id", [b"", os.urandom(32)])
@pytest.mark.parametrize("selected_identity", [None, 0, 7])
def test_server_hello_matches_the_generic_layout(
    session_id: bytes, selected_identity: int | None
) -> None:
    random, share = os.urandom(32), os.urandom(32)
    extensions = [
        (ExtensionType.SUPPORTED_VERSIONS, msgs.TLS13.to_bytes(2, "big")),
        (ExtensionType.KEY_SHARE, (0x001D).to_bytes(2, "big") + msgs.vector(share, 2)),
    ]
    if selected_identity is not None:
        extensions.append((ExtensionType.PRE_SHARED_KEY, selected_identity.to_bytes(2, "big")))
    assert msgs.server_hello(
        random, session_id, 0x1301, 0x001D, share, selected_identity
    ) == msgs._server_hello(random, session_id, 0x1301, extensions)


@pytest.mark.parametrize("signature", [b"s", os.urandom(72), os.urandom(512)])
def test_certificate_verify_matches_the_generic_layout(signature: bytes) -> None:
    body = (0x0403).to_bytes(2, "big") + msgs.vector(signature, 2)
    expected = msgs.handshake(HandshakeType.CERTIFICATE_VERIFY, body)
    assert msgs.certificate_verify(0x0403, signature) == expected


@pytest.mark.parametrize("verify_data", [os.urandom(32), os.urandom(48)])
def test_finished_matches_the_generic_layout(verify_data: bytes) -> None:
    assert msgs.finished(verify_data) == msgs.handshake(HandshakeType.FINISHED, verify_data)


@pytest.mark.parametrize("nonce", [b"", b"\x00", os.urandom(255)])
@pytest.mark.parametrize("ticket", [b"t", os.urandom(1500)])
def test_new_session_ticket_matches_the_generic_layout(nonce: bytes, ticket: bytes) -> None:
    body = (
        (7200).to_bytes(4, "big")
        + (0xDEADBEEF).to_bytes(4, "big")
        + msgs.vector(nonce, 1)
        + msgs.vector(ticket, 2)
        + b"\x00\x00"
    )
    expected = msgs.handshake(HandshakeType.NEW_SESSION_TICKET, body)
    assert msgs.new_session_ticket(7200, 0xDEADBEEF, nonce, ticket) == expected


def _inner_outcome(read: object, inner: bytes) -> object:
    try:
        return tuple(read(inner))  # type: ignore[operator]
    except TLSAlert as alert:
        return alert.alert, alert.detail


@given(
    content=st.binary(max_size=4),
    content_type=st.sampled_from([None, 0, 20, 21, 22, 23, 24, 255]),
    padding=st.integers(0, 3),
)
def test_decrypt_reads_the_inner_plaintext_as_inner_plaintext_does(
    content: bytes, content_type: int | None, padding: int
) -> None:
    suite = TLS_AES_128_GCM_SHA256
    key, iv = os.urandom(16), os.urandom(12)
    type_octet = b"" if content_type is None else bytes((content_type,))
    plaintext = content + type_octet + bytes(padding)

    def decrypted(plain: bytes) -> record_layer.InnerPlaintext:
        # ``plain`` sealed as one protected record's TLSInnerPlaintext, then decrypted.
        header = bytes((23, 3, 3)) + (len(plain) + suite.tag_length).to_bytes(2, "big")
        fragment = suite.aead_factory(key).encrypt(iv, plain, header)
        record = record_layer.Record(23, 0x0303, fragment)
        return record_layer.RecordProtection(suite, key, iv).decrypt(record)

    assert _inner_outcome(decrypted, plaintext) == _inner_outcome(
        record_layer._inner_plaintext, plaintext
    )
