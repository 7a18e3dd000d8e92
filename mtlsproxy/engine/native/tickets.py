"""Session tickets of the native engine (RFC 8446 sections 4.6.1 and 2.2): stateless, sealed.

A :class:`TicketKey` belongs to one ``ServerRoute`` and is created with it: a reload (which
rebuilds the routes) rotates every key, and a ticket issued under one route never opens under
another, so a resumed session cannot skip another route's client-certificate policy.

The ticket is ``nonce (12) || AES-256-GCM(state)``, the route name as associated data. The
state carries what resumption needs: the PSK, the cipher suite, issue time, lifetime and
ticket_age_add, the ALPN protocol, the route name, and the client's leaf certificate (DER, or
none), which the route's policy re-checks (``decide`` with ``Evidence.RESUMED``: expiry,
revocation, allow-list) on resumption.

Nothing here reads a clock: ``issued`` and the age checks use the wall-clock seconds the
engine passes in, from the route's ``wall_clock``.

Tickets are only for resumption with (EC)DHE (psk_dhe_ke); 0-RTT is never accepted, so there
is no anti-replay state: a replayed ClientHello only yields a fresh handshake whose keys the
replayer does not have (section 8).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TICKET_LIFETIME = 2 * 60 * 60  # seconds; RFC 8446 allows up to 7 days
AGE_TOLERANCE = 10  # seconds the client's ticket age may run ahead of ours
MAX_LEAF_SIZE = 8 * 1024  # a larger client certificate gets no ticket (bounded ticket size)
MAX_TICKET_SIZE = 12 * 1024

_VERSION = 1
_NONCE_SIZE = 12
_HEADER = struct.Struct("!BHQII")  # version, suite, issued (s), lifetime (s), ticket_age_add


@dataclass(frozen=True, slots=True, repr=False)
class TicketState:
    """What a ticket carries. ``issued`` is wall-clock seconds (tickets outlive processes'
    monotonic clocks only in theory, but a wall clock is what ages are compared with)."""

    psk: bytes
    suite: int
    issued: int
    lifetime: int
    age_add: int
    alpn: str | None
    route: str
    leaf_der: bytes | None

    def __repr__(self) -> str:  # never show the PSK
        return f"TicketState(route={self.route!r}, suite=0x{self.suite:04x}, issued={self.issued})"

    def encode(self) -> bytes:
        alpn = (self.alpn or "").encode("latin-1")
        route = self.route.encode("utf-8")
        leaf = self.leaf_der or b""
        return b"".join(
            (
                _HEADER.pack(_VERSION, self.suite, self.issued, self.lifetime, self.age_add),
                bytes((len(self.psk),)) + self.psk,
                bytes((len(alpn),)) + alpn,
                struct.pack("!H", len(route)) + route,
                struct.pack("!H", len(leaf)) + leaf,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> TicketState:
        """Raises ValueError on anything malformed (only ever our own sealed bytes)."""
        version, suite, issued, lifetime, age_add = _HEADER.unpack_from(data)
        if version != _VERSION:
            raise ValueError("unknown ticket version")
        offset = _HEADER.size
        fields: list[bytes] = []
        for size in (1, 1, 2, 2):
            (length,) = struct.unpack_from("!B" if size == 1 else "!H", data, offset)
            offset += size
            if offset + length > len(data):
                raise ValueError("truncated ticket")
            fields.append(data[offset : offset + length])
            offset += length
        if offset != len(data):
            raise ValueError("trailing bytes in ticket")
        psk, alpn, route, leaf = fields
        return cls(
            psk=psk,
            suite=suite,
            issued=issued,
            lifetime=lifetime,
            age_add=age_add,
            alpn=alpn.decode("latin-1") or None,
            route=route.decode("utf-8"),
            leaf_der=leaf or None,
        )


class TicketKey:
    """One route's ticket protection key: random, in memory only, rotated with the route."""

    __slots__ = ("_aead", "route")

    def __init__(self, route: str) -> None:
        self.route = route
        self._aead = AESGCM(os.urandom(32))

    def __repr__(self) -> str:
        return f"TicketKey(route={self.route!r})"

    def seal(self, state: TicketState) -> bytes | None:
        """The ticket for ``state``, or None when it would be too large to issue."""
        if state.leaf_der is not None and len(state.leaf_der) > MAX_LEAF_SIZE:
            return None
        nonce = os.urandom(_NONCE_SIZE)
        ticket = nonce + self._aead.encrypt(nonce, state.encode(), self._aad())
        return ticket if len(ticket) <= MAX_TICKET_SIZE else None

    def open(self, ticket: bytes) -> TicketState | None:
        """The state of a ticket this key sealed for this route; None for anything else."""
        if not _NONCE_SIZE + 16 < len(ticket) <= MAX_TICKET_SIZE:
            return None
        nonce, sealed = ticket[:_NONCE_SIZE], ticket[_NONCE_SIZE:]
        try:
            state = TicketState.decode(self._aead.decrypt(nonce, sealed, self._aad()))
        except (InvalidTag, ValueError, struct.error, UnicodeDecodeError):
            return None
        return state if state.route == self.route else None

    def _aad(self) -> bytes:
        return b"mtlsproxy ticket v1 " + self.route.encode("utf-8")
