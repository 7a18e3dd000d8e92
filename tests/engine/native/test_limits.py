"""A client must not make the native engine grow or spin: every reply it can provoke is
coalesced, every record that carries nothing is counted, and each count has a named limit
(``mtlsproxy.engine.native.limits``)."""

from __future__ import annotations

import pytest

from mtlsproxy.engine.events import ApplicationData, HandshakeFailed, ProtocolError
from mtlsproxy.engine.native.limits import MAX_KEY_UPDATES_WITHOUT_DATA, MAX_USELESS_RECORDS
from mtlsproxy.engine.native.record_layer import encode_record
from mtlsproxy.engine.selecting import SelectingEngine
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.routing.routes import ServerRoute
from mtlsproxy.vocabulary.failures import Alert, Step
from tests.engine.native.harness import build_route
from tests.engine.native.test_engine import (
    after_retry_request,
    engine,
    established_pair,
    mini,
    mini_handshake,
)
from tests.engine.native.tls13_client import MiniClient


@pytest.fixture(scope="module")
def routes(pki: PkiFiles) -> dict[str, ServerRoute]:
    return {"require": build_route(pki, ClientAuthMode.REQUIRE)}


def pending(server: SelectingEngine) -> int:
    """Bytes the engine holds for the client (``data_to_send`` not called)."""
    return len(server.chosen._out)  # type: ignore[union-attr]


def established(
    routes: dict[str, ServerRoute], pki: PkiFiles
) -> tuple[SelectingEngine, MiniClient]:
    """An established pair whose NewSessionTicket the client has read."""
    server, client = established_pair(routes, pki)
    client.receive(server.data_to_send())
    return server, client


def closed_with(server: SelectingEngine, client: MiniClient, events: list[object]) -> None:
    assert isinstance(events[-1], ProtocolError), events
    client.receive(server.data_to_send())
    assert client.alerts == [Alert.UNEXPECTED_MESSAGE]


# KeyUpdate (RFC 8446 section 4.6.3)


def test_requested_key_updates_are_answered_once_before_our_next_data(routes, pki) -> None:
    """ "[A]n implementation which receives multiple KeyUpdates while it is silent [responds]
    with a single update": one KeyUpdate of ours, sent before our next application data."""
    server, client = established(routes, pki)
    for _ in range(5):
        assert server.receive(client.key_update(requested=True)) == []
    assert server.data_to_send() == b""  # nothing is owed until we send data
    server.send(b"reply")
    client.receive(server.data_to_send())
    assert client.key_updates == [False] and bytes(client.app_data) == b"reply"
    server.send(b"more")  # paid: no second KeyUpdate
    client.receive(server.data_to_send())
    assert client.key_updates == [False] and bytes(client.app_data) == b"replymore"


def test_a_client_that_never_reads_cannot_grow_what_we_hold(routes, pki) -> None:
    """Requested KeyUpdates between bytes of application data, thousands of them, while
    ``data_to_send`` is never called: the engine holds nothing for the client."""
    server, client = established(routes, pki)
    for index in range(2000):
        events = server.receive(client.key_update(requested=True) + client.seal(b"x", 23))
        assert events == [ApplicationData(b"x")], index
    assert pending(server) == 0
    server.send(b"y")
    assert pending(server) < 100  # one KeyUpdate and one record of data


def test_key_updates_without_data_are_capped(routes, pki) -> None:
    server, client = established(routes, pki)
    for _ in range(MAX_KEY_UPDATES_WITHOUT_DATA):
        assert server.receive(client.key_update(requested=False)) == []
    assert server.receive(client.seal(b"data", 23)) == [ApplicationData(b"data")]  # resets
    for _ in range(MAX_KEY_UPDATES_WITHOUT_DATA):
        assert server.receive(client.key_update(requested=True)) == []
    closed_with(server, client, server.receive(client.key_update(requested=True)))


# Records that carry nothing (RFC 8446 section 5.1 allows them; nothing requires serving
# an endless stream of them)


def test_empty_application_data_records_are_capped(routes, pki) -> None:
    server, client = established(routes, pki)

    def empty() -> bytes:
        return b"".join(client.seal(b"", 23) for _ in range(MAX_USELESS_RECORDS))

    assert server.receive(empty()) == []
    assert server.receive(client.seal(b"data", 23)) == [ApplicationData(b"data")]  # resets
    assert server.receive(empty()) == []
    closed_with(server, client, server.receive(client.seal(b"", 23)))


def test_ignored_user_canceled_alerts_count_as_useless(routes, pki) -> None:
    server, client = established(routes, pki)
    canceled = b"".join(client.seal(b"\x01\x5a", 21) for _ in range(MAX_USELESS_RECORDS))
    assert server.receive(canceled) == []
    closed_with(server, client, server.receive(client.seal(b"", 23)))


def test_skipped_early_data_records_count_as_useless(routes, pki) -> None:
    """Rejected 0-RTT records are skipped up to a byte budget; tiny ones would each cost a
    decryption attempt: they are counted too."""
    server = engine(routes["require"])
    client = mini(pki, early_data=True)
    server.receive(client.client_hello())
    tiny = encode_record(23, b"z" * 17)
    events: list[object] = []
    for _ in range(MAX_USELESS_RECORDS + 1):
        events += server.receive(tiny)
    failed = events[-1]
    assert isinstance(failed, HandshakeFailed) and failed.alert is Alert.UNEXPECTED_MESSAGE


# Zero-length and interleaved handshake records (RFC 8446 section 5.1)


def test_zero_length_handshake_record_before_the_second_client_hello(routes, pki) -> None:
    server, client = after_retry_request(routes["require"], pki)
    assert client.pending_hello is not None
    events = server.receive(encode_record(22, b"") + client.pending_hello)
    failed = events[-1]
    assert isinstance(failed, HandshakeFailed), events
    assert (failed.step, failed.alert) == (Step.SERVER_HELLO, Alert.UNEXPECTED_MESSAGE)


@pytest.mark.parametrize("between", ["application_data", "alert", "empty_data"])
def test_key_update_fragments_with_another_record_between(routes, pki, between: str) -> None:
    """ "Handshake messages MUST NOT be interleaved with other record types": a KeyUpdate
    split over two records with anything else between them is unexpected_message."""
    server, client = established(routes, pki)
    message = b"\x18\x00\x00\x01\x01"
    other = {
        "application_data": (b"between", 23),
        "alert": (b"\x01\x5a", 21),  # user_canceled, otherwise ignored
        "empty_data": (b"", 23),
    }
    data = client.seal(message[:2])
    data += client.seal(*other[between])
    data += client.seal(message[2:])
    events = server.receive(data)
    assert not any(isinstance(e, ApplicationData) for e in events)
    closed_with(server, client, events)


def test_key_update_fragmented_over_records_is_accepted(routes, pki) -> None:
    server, client = established(routes, pki)
    message = b"\x18\x00\x00\x01\x01"
    data = b"".join(client.seal(message[i : i + 1]) for i in range(len(message)))
    client.write = client.write.next_generation()  # type: ignore[union-attr]
    assert server.receive(data + client.seal(b"after", 23)) == [ApplicationData(b"after")]
    server.send(b"answer")
    client.receive(server.data_to_send())
    assert client.key_updates == [False] and bytes(client.app_data) == b"answer"


def test_records_between_fragments_of_a_client_flight_message(routes, pki) -> None:
    """The same rule before the Finished: a CCS or an alert inside a fragmented Certificate."""
    for record in (encode_record(20, b"\x01"), encode_record(21, b"\x01\x5a")):
        server = engine(routes["require"])
        client = mini(pki)
        mini_handshake(server, client)
        certificate, *_ = client.flight_messages()
        data = client.seal(certificate[:20]) + record + client.seal(certificate[20:])
        events = server.receive(data)
        failed = events[-1]
        assert isinstance(failed, HandshakeFailed), events
        assert failed.alert is Alert.UNEXPECTED_MESSAGE
