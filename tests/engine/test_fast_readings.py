"""The handshake's fast readings of well-formed input agree with the strict readings they
stand in front of: the same result, or (for anything unusual) the strict reading's error.

- ``ClientHelloReader``: a hello whole in its first record (read without the record reader)
  against the same bytes fed one at a time (the record reader);
- ``messages.decode_certificate``: ``_usual_certificate`` against ``_read_certificate``;
- ``messages.server_hello`` against the generic ``_server_hello`` layout.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlsproxy.engine.clienthello import ClientHello, ClientHelloReader
from mtlsproxy.engine.hello_extensions import ExtensionType
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native.alerts import TLSAlert
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
