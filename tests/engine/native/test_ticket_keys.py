"""Ticket keys: the key file's format, keyrings (the first key seals, every one opens), key ids,
rotation (a file's old key still opens, a removed one does not; the process keyring rotates on
its own), and route isolation when every route shares the keys."""

from __future__ import annotations

import base64
import os
import struct

import pytest

from mtlsproxy.engine.native.tickets import (
    MAX_CHAIN_SIZE,
    PREVIOUS_KEYS_KEPT,
    ROTATION_PERIOD,
    TICKET_LIFETIME,
    RotatingKeyring,
    TicketKey,
    TicketKeyring,
    TicketState,
    format_ticket_keys,
    parse_ticket_keys,
)

NOW = 1_750_000_000


Chain = tuple[bytes, ...]


def state(route: str, issued: int = NOW, chain: Chain = (b"leaf", b"ca")) -> TicketState:
    return TicketState(b"p" * 32, 0x1301, issued, 7200, 7, "h2", route, chain, issued - 60)


def keys(count: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(count)]


def test_the_key_file_format() -> None:
    one, two = os.urandom(32), os.urandom(48)
    text = (
        b"# mtlsproxy session ticket keys, newest first\n\n"
        + b"  " + base64.b64encode(one) + b"  \r\n"
        + b"# kept until its tickets expired\n"
        + base64.b64encode(two) + b"\n"
    )  # fmt: skip
    assert parse_ticket_keys(text) == [one, two]
    assert parse_ticket_keys(format_ticket_keys([one, two], "comment")) == [one, two]
    with pytest.raises(ValueError, match="line 1 holds a key of 16 bytes"):
        parse_ticket_keys(base64.b64encode(b"k" * 16))
    with pytest.raises(ValueError, match="holds no key"):
        parse_ticket_keys(b"# nothing\n")
    with pytest.raises(ValueError, match="line 1 is not a base64 key"):
        parse_ticket_keys(b"%%%%\n")
    with pytest.raises(ValueError, match="at most 64"):
        parse_ticket_keys(format_ticket_keys(keys(65)))


def test_a_ticket_carries_the_key_id_and_opens_with_that_key_only() -> None:
    old, new = keys(2)
    sealed_old = TicketKey("l/r", TicketKeyring([old])).seal(state("l/r"))
    assert sealed_old is not None
    rotated = TicketKey("l/r", TicketKeyring([new, old]))  # prepended: new seals, both open
    assert rotated.open(sealed_old) == state("l/r")
    sealed_new = rotated.seal(state("l/r"))
    assert sealed_new is not None
    ring = TicketKeyring([new, old])
    assert sealed_new[1:9] == ring.keys[0].key_id and sealed_old[1:9] == ring.keys[1].key_id
    assert ring.keys[0].key_id != ring.keys[1].key_id
    # old removed: its tickets no longer open, the new key's still do
    after = TicketKey("l/r", TicketKeyring([new]))
    assert after.open(sealed_old) is None
    assert after.open(sealed_new) == state("l/r")
    # the id picks the key: a ticket whose id names a key we do not have is not tried
    assert TicketKey("l/r", TicketKeyring([old])).open(sealed_new) is None


def test_routes_sharing_the_keys_never_open_each_others_tickets() -> None:
    ring = TicketKeyring(keys(1))
    a, b = TicketKey("api/a", ring), TicketKey("api/b", ring)
    other_listener = TicketKey("admin/a", ring)
    ticket = a.seal(state("api/a"))
    assert ticket is not None
    assert a.open(ticket) == state("api/a")
    assert b.open(ticket) is None
    assert other_listener.open(ticket) is None
    # a state naming another route, sealed under this one, is refused too
    forged = a.seal(state("api/b"))
    assert forged is not None and a.open(forged) is None and b.open(forged) is None


def test_tampering_and_other_formats_do_not_open() -> None:
    key = TicketKey("l/r", TicketKeyring(keys(1)))
    ticket = key.seal(state("l/r"))
    assert ticket is not None
    for index in (0, 1, 9, 20, len(ticket) - 1):  # version, key id, nonce, sealed, tag
        changed = bytearray(ticket)
        changed[index] ^= 1
        assert key.open(bytes(changed)) is None
    assert key.open(b"") is None and key.open(ticket[:30]) is None


def test_a_chain_too_large_gets_no_ticket() -> None:
    key = TicketKey("l/r", TicketKeyring(keys(1)))
    small = (b"x" * (MAX_CHAIN_SIZE // 2 - 10),) * 2
    large = (b"x" * (MAX_CHAIN_SIZE // 2 + 10),) * 2
    assert key.seal(state("l/r", chain=small)) is not None
    assert key.seal(state("l/r", chain=large)) is None
    assert key.seal(state("l/r", chain=(b"c",) * 9)) is None
    sealed = key.seal(state("l/r", chain=()))
    assert sealed is not None and key.open(sealed) == state("l/r", chain=())


def test_the_process_keyring_rotates_and_keeps_what_live_tickets_need() -> None:
    ring = RotatingKeyring()
    key = TicketKey("l/r", ring)
    issued = {}
    for hour in range(6):
        now = NOW + hour * ROTATION_PERIOD
        ticket = key.seal(state("l/r", issued=now))
        assert ticket is not None
        issued[hour] = ticket
    assert len({t[1:9] for t in issued.values()}) == 6  # a new key each period
    assert len(ring.keys) == 1 + PREVIOUS_KEYS_KEPT
    # the tickets of the last TICKET_LIFETIME still open; older ones do not
    live = TICKET_LIFETIME // ROTATION_PERIOD
    for hour, ticket in issued.items():
        assert (key.open(ticket) is not None) == (hour >= 5 - live), hour


def test_no_secret_in_a_repr() -> None:
    secret = os.urandom(32)
    ring = TicketKeyring([secret])
    key = TicketKey("l/r", ring)
    shown = repr(ring) + repr(ring.keys[0]) + repr(key) + repr(state("l/r"))
    for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
        assert form not in shown
    assert "p" * 8 not in repr(state("l/r"))  # the PSK


@pytest.mark.parametrize("chain", [(), (b"leaf",), (b"l" * 300, b"ca")])
@pytest.mark.parametrize("alpn", [None, "h2"])
def test_ticket_state_decodes_what_it_encodes_and_nothing_shorter_or_longer(
    chain: Chain, alpn: str | None
) -> None:
    encoded = TicketState(b"p" * 32, 0x1301, NOW, 7200, 7, alpn, "route", chain, NOW).encode()
    assert TicketState.decode(encoded) == TicketState(
        b"p" * 32, 0x1301, NOW, 7200, 7, alpn, "route", chain, NOW
    )
    for size in range(len(encoded)):  # every truncation is refused, none read past its end
        with pytest.raises((ValueError, struct.error)):
            TicketState.decode(encoded[:size])
    with pytest.raises(ValueError, match="trailing"):
        TicketState.decode(encoded + b"\x00")
