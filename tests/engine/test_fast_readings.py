"""The handshake's fast readings of well-formed input agree with the strict readings they
stand in front of: the same result, or (for anything unusual) the strict reading's error.

- ``ClientHelloReader``: a hello whole in its first record (read without the record reader)
  against the same bytes fed one at a time (the record reader);
- ``clienthello._usual_hello`` (a hello read by offsets) against ``_read_client_hello`` and
  ``_check_version`` (the strict reading);
- ``messages.decode_certificate``: ``_usual_certificate`` against ``_read_certificate``;
- ``messages.decode_certificate_verify`` against ``_read_certificate_verify``;
- ``hello_extensions.parse_pre_shared_key``: ``_one_psk`` against ``_read_pre_shared_key``;
- ``hello_extensions.parse_alpn``: ``_usual_alpn`` against ``_read_alpn``;
- ``messages.server_hello`` against the generic ``_server_hello`` layout, and the other
  encoders that pack their header with their fields (CertificateVerify, Finished,
  NewSessionTicket) against ``handshake`` and ``vector``;
- ``RecordProtection.decrypt``'s inline reading of an unpadded TLSInnerPlaintext against
  ``_inner_plaintext``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mtlsproxy.engine import clienthello, hello_extensions
from mtlsproxy.engine.clienthello import ClientHello, ClientHelloReader
from mtlsproxy.engine.hello_extensions import ExtensionType
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import record_layer
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.suites import TLS_AES_128_GCM_SHA256
from mtlsproxy.engine.records import DecodeError, HandshakeType
from mtlsproxy.vocabulary.failures import HandshakeError

from .test_clienthello import (
    build_body,
    default_extensions,
    ext,
    python_hello,
    sni_ext,
    u16,
    unframe,
    vec8,
    vec16,
)


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


# Each extension type with its usual form first, then others (several names, empty vectors,
# odd lengths), and types the hello keeps no field of (GREASE, extended_master_secret,
# padding): hellos are built from any of them.
_HELLO_EXTENSIONS: dict[int, list[bytes]] = {
    0x0000: [
        sni_ext(b"svc.example.org"),
        sni_ext(b"API.Example.ORG"),
        sni_ext(b"bad_name.example"),
        ext(0, vec16(b"\x00" + vec16(b"a.example") + b"\x00" + vec16(b"b.example"))),
        ext(0, vec16(b"\x01" + vec16(b"opaque") + b"\x00" + vec16(b"c.example"))),
    ],
    0x000A: [ext(0x000A, vec16(u16(0x001D) + u16(0x0017))), ext(0x000A, vec16(b""))],
    0x000B: [ext(0x000B, vec8(b"\x00\x01\x02")), ext(0x000B, b"")],
    0x000D: [ext(0x000D, vec16(u16(0x0403) + u16(0x0804))), ext(0x000D, b"\x00\x02\x04")],
    0x0010: [
        ext(0x0010, vec16(vec8(b"h2") + vec8(b"http/1.1"))),
        ext(0x0010, vec16(vec8(b"h2") + vec8(b""))),
        ext(0x0010, vec16(b"")),
    ],
    0x002A: [ext(0x002A, b""), ext(0x002A, b"\x00")],
    0x002B: [
        ext(0x002B, vec8(u16(0x0304) + u16(0x0303))),
        ext(0x002B, vec8(u16(0x0A0A) + u16(0x0302))),
        ext(0x002B, vec8(u16(0x0305))),
        ext(0x002B, vec8(b"")),
    ],
    0x002D: [ext(0x002D, vec8(b"\x01")), ext(0x002D, vec8(b""))],
    0x0033: [
        ext(0x0033, vec16(u16(0x001D) + vec16(b"\x11" * 32) + u16(0x11EC) + vec16(b"\x22" * 9))),
        ext(0x0033, vec16(b"")),
        ext(0x0033, vec16(u16(0x001D) + vec16(b""))),
    ],
    0x1A1A: [ext(0x1A1A, b"")],
    0x0017: [ext(0x0017, b"")],
    0x0015: [ext(0x0015, b"\x00" * 20)],
    0x0029: [
        ext(0x0029, vec16(vec16(b"ticket") + b"\x00" * 4) + vec16(vec8(b"\x00" * 32))),
        ext(0x0029, vec16(vec16(b"a") + b"\x00" * 4 + vec16(b"b") + b"\x00" * 4) + vec16(b"")),
    ],
}


def _often(usual: object, *others: object) -> st.SearchStrategy:
    """``usual`` three times in four, else one of ``others``."""
    return st.sampled_from([usual] * 3 * len(others) + list(others))


@st.composite
def _extensions(draw: st.DrawFn) -> list[bytes]:
    """Distinct types in any order, each in its usual form or another, pre_shared_key mostly
    last; now and then one type twice."""
    types = draw(st.lists(st.sampled_from(sorted(_HELLO_EXTENSIONS)), max_size=9, unique=True))
    forms = [
        draw(_often(*_HELLO_EXTENSIONS[t]))
        if len(_HELLO_EXTENSIONS[t]) > 1
        else _HELLO_EXTENSIONS[t][0]
        for t in types
    ]
    if forms and draw(_often(False, True)):
        forms.insert(draw(st.integers(0, len(forms))), draw(st.sampled_from(forms)))
    psk = [form for form in forms if form[:2] == b"\x00\x29"]
    if draw(_often(True, False)):  # as clients send it: last
        forms = [form for form in forms if form[:2] != b"\x00\x29"] + psk
    return forms


@settings(max_examples=500)
@given(
    version=_often(0x0303, 0x0301, 0x0300),
    session_id=_often(b"\x00" * 32, b"", b"\x02" * 33),
    ciphers=_often((0x1301, 0xC02B), (), (0x1301,), (0x0A0A, 0x1301, 0x1302)),
    compression=_often(b"\x00", b"\x01\x00", b"\x01", b""),
    extensions=_extensions(),
    damage=st.one_of(st.none(), st.none(), st.none(), st.fixed_dictionaries(_DAMAGE)),
)
def test_client_hello_usual_and_strict_agree(
    version: int,
    session_id: bytes,
    ciphers: tuple[int, ...],
    compression: bytes,
    extensions: list[bytes],
    damage: dict | None,
) -> None:
    """Whatever ``_usual_hello`` returns is the strict reading's hello; its None leaves the
    hello, or the refusal, to the strict reading."""
    body = build_body(
        version=version,
        session_id=session_id,
        ciphers=ciphers,
        compression=compression,
        extensions=extensions,
    )
    if damage is not None:
        body = _damaged(body, **damage)
    try:
        strict: object = clienthello._read_client_hello(body)
        clienthello._check_version(strict)  # type: ignore[arg-type]
    except (DecodeError, HandshakeError) as error:
        strict = error
    usual = clienthello._usual_hello(body)
    assert usual is None or usual == strict
    event(f"read by offsets: {usual is not None}, strict: {type(strict).__name__}")


@pytest.mark.parametrize(
    "hello",
    [
        python_hello(),
        python_hello(tls12=True, alpn=False),
        python_hello(server_hostname=None, alpn=False),
        build_body(extensions=[*default_extensions(), _HELLO_EXTENSIONS[0x0029][0]]),
    ],
    ids=["tls13", "tls12", "nosni", "psk"],
)
def test_client_hello_fast_reading_reads_usual_hellos(hello: bytes) -> None:
    body = unframe(hello)[4:] if hello[0] == 0x16 else hello
    usual = clienthello._usual_hello(body)
    assert usual is not None
    assert usual == clienthello._read_client_hello(body)


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


@given(names=st.lists(st.binary(max_size=12), max_size=4), **_DAMAGE)
def test_alpn_usual_and_strict_agree(
    names: list[bytes], flips: list, cut: int, extra: bytes
) -> None:
    body = _damaged(
        msgs.vector(b"".join(msgs.vector(name, 1) for name in names), 2), flips, cut, extra
    )
    _assert_agree(hello_extensions.parse_alpn, hello_extensions._read_alpn, body)
    if names and all(names) and not flips and not cut and not extra:
        assert hello_extensions._usual_alpn(body) == tuple(name.decode("latin-1") for name in names)


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
