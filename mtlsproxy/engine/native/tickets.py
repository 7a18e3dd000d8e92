"""Session tickets of the native engine (RFC 8446 sections 4.6.1 and 2.2): stateless, sealed.

Keys
----
A :class:`TicketKeyring` holds master keys (32 random bytes or more each): the first seals new
tickets, every one opens them. It comes from a key file (``tls.session_tickets.keys``, see
:func:`parse_ticket_keys`), from the supervisor (shared by its workers), or is random and
process-wide (:class:`RotatingKeyring`), so that a reload no longer invalidates tickets: a
resumed client's whole chain is verified again anyway (``Evidence.RESUMED``).

A :class:`TicketKey` is one route's view of a keyring: each master key's AEAD key for the
route is ``HKDF-SHA256(master, info = label || scope)`` (``scope``: listener and route name),
and the scope is associated data as well, so a ticket issued under one route never opens under
another even when every route shares the key file, and a resumed session cannot skip another
route's client-certificate policy. A key is named by an 8-byte id (HKDF of the key, revealing
nothing of it) that every ticket carries, so opening picks its key without trying them all.

The ticket is ``version (1) || key id (8) || nonce (12) || AES-256-GCM(state)``. The state
carries what resumption needs: the PSK, the cipher suite, issue time, lifetime and
ticket_age_add, the ALPN protocol, the route's scope, the time the client was authenticated
with its certificate (kept by every ticket issued on a resumed session, so resuming never
extends it), and the client's chain as it sent it (leaf first, DER; empty: none), which the
route's policy verifies again on resumption. A chain over ``MAX_CHAIN_SIZE`` gets no ticket.

Nothing here reads a clock: ``issued`` and the age checks use the wall-clock seconds the
engine passes in, from the route's ``wall_clock``. Keys never appear in a repr, a log or an
exception.

Tickets are only for resumption with (EC)DHE (psk_dhe_ke); 0-RTT is never accepted, so there
is no anti-replay state: a replayed ClientHello only yields a fresh handshake whose keys the
replayer does not have (section 8).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mypy_extensions import mypyc_attr

from mtlsproxy.vocabulary.frozen import quick_init

TICKET_LIFETIME: Final = 2 * 60 * 60  # seconds; RFC 8446 allows up to 7 days
MAX_AUTHENTICATION_AGE: Final = 7 * 24 * 60 * 60  # RFC 8446 section 4.6.1: 7 days at most
DEFAULT_MAX_AGE: Final = 24 * 60 * 60  # tls.session_tickets.max_age
AGE_TOLERANCE: Final = 10  # seconds the client's ticket age may run ahead of ours
MAX_CHAIN_SIZE: Final = 16 * 1024  # a larger client chain gets no ticket (bounded ticket size)
MAX_CHAIN_LENGTH: Final = 8  # certificates
MAX_TICKET_SIZE: Final = MAX_CHAIN_SIZE + 1024

MIN_KEY_SIZE: Final = 32  # bytes of a master key
MAX_KEYS: Final = 64  # in a key file
MAX_KEY_FILE_SIZE: Final = 64 * 1024
ROTATION_PERIOD: Final = 60 * 60  # seconds a random key issues tickets (supervisor, single process)
# Keys kept after they stop issuing: long enough for every ticket they sealed to expire.
PREVIOUS_KEYS_KEPT: Final = -(-TICKET_LIFETIME // ROTATION_PERIOD)

_VERSION: Final = 2
_KEY_ID_SIZE: Final = 8
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
_PREFIX: Final = struct.Struct("!B8s")  # version, key id
# suite, issued (s), lifetime (s), age_add, authenticated (s)
_HEADER: Final = struct.Struct("!HQIIQ")
_HEADER_PSK: Final = struct.Struct("!HQIIQB")  # the header, then the PSK's length octet
_UINT16: Final = struct.Struct("!H")
_KEY_ID_INFO: Final = b"mtlsproxy ticket key id"
_ROUTE_KEY_INFO: Final = b"mtlsproxy ticket key v2 "
_AAD: Final = b"mtlsproxy ticket v2 "


@quick_init
@dataclass(frozen=True, slots=True, repr=False)
class TicketState:
    """What a ticket carries. ``issued`` and ``authenticated_at`` are wall-clock seconds (a
    ticket outlives a process and its monotonic clock); ``chain`` is the client's chain as it
    sent it, leaf first (empty: no certificate)."""

    psk: bytes
    suite: int
    issued: int
    lifetime: int
    age_add: int
    alpn: str | None
    route: str
    chain: tuple[bytes, ...]
    authenticated_at: int

    def __repr__(self) -> str:  # never show the PSK
        return (
            f"TicketState(route={self.route!r}, suite=0x{self.suite:04x}, issued={self.issued}, "
            f"authenticated_at={self.authenticated_at}, chain_length={len(self.chain)})"
        )

    @property
    def leaf_der(self) -> bytes | None:
        return self.chain[0] if self.chain else None

    def encode(self) -> bytes:
        alpn = (self.alpn or "").encode("latin-1")
        route = self.route.encode("utf-8")
        chain = self.chain
        psk = self.psk
        parts = [
            _HEADER_PSK.pack(
                self.suite, self.issued, self.lifetime, self.age_add, self.authenticated_at,
                len(psk),
            ),
            psk,
            bytes((len(alpn),)),
            alpn,
            _UINT16.pack(len(route)),
            route,
            bytes((len(chain),)),
        ]  # fmt: skip
        for der in chain:
            parts += (_UINT16.pack(len(der)), der)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> TicketState:
        """Raises ValueError (or struct.error) on anything malformed (only ever our own
        sealed bytes)."""
        suite, issued, lifetime, age_add, authenticated_at = _HEADER.unpack_from(data)
        size = len(data)
        # The vectors by offsets, each checked against the end (a ticket opens once per
        # resumption: no reader object, no call per field).
        pos = _HEADER.size
        fields: list[bytes] = []
        for length_size in (1, 1, 2):  # psk, alpn, route
            start = pos + length_size
            pos = start + int.from_bytes(data[pos:start], "big")
            if pos > size:  # a short length prefix too: its vector would end past start
                raise ValueError("truncated ticket")
            fields.append(data[start:pos])
        if pos >= size:
            raise ValueError("truncated ticket")
        count = data[pos]
        pos += 1
        chain = []
        for _ in range(count):
            start = pos + 2
            pos = start + int.from_bytes(data[pos:start], "big")
            if pos > size:
                raise ValueError("truncated ticket")
            chain.append(data[start:pos])
        if pos != size:
            raise ValueError("trailing bytes in ticket")
        psk, alpn, route = fields
        return cls(
            psk, suite, issued, lifetime, age_add, alpn.decode("latin-1") or None,
            route.decode("utf-8"), tuple(chain), authenticated_at,
        )  # fmt: skip


# --- keys -----------------------------------------------------------------------------------


def _hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


class MasterKey:
    """One key of a keyring: its secret (never shown) and its public 8-byte id."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_SIZE:
            raise ValueError(f"a ticket key needs at least {MIN_KEY_SIZE} bytes")
        self._secret = bytes(secret)
        self.key_id = _hkdf(secret, _KEY_ID_INFO, _KEY_ID_SIZE)

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id.hex()})"

    def route_key(self, scope: str) -> bytes:
        """The AES-256-GCM key of this master key for one route."""
        return _hkdf(self._secret, _ROUTE_KEY_INFO + scope.encode("utf-8"))


class TicketKeyring:
    """Master keys: the first seals new tickets, every one opens them (a key file's order)."""

    __slots__ = ("_by_id", "keys")

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("a ticket keyring needs at least one key")
        self.keys: tuple[MasterKey, ...] = tuple(MasterKey(secret) for secret in secrets)
        self._by_id = {key.key_id: key for key in reversed(self.keys)}  # the first id wins

    @classmethod
    def random(cls) -> TicketKeyring:
        return cls([os.urandom(32)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(k.key_id.hex() for k in self.keys)})"

    def issuing(self, now: int) -> MasterKey:
        """The key that seals a ticket issued at ``now`` (wall-clock seconds)."""
        return self.keys[0]

    def find(self, key_id: bytes) -> MasterKey | None:
        return self._by_id.get(key_id)


class RotatingKeyring(TicketKeyring):
    """Random keys, in memory only, for a process that has neither a key file nor a supervisor:
    a new key issues every ``period`` seconds (dated by the ``now`` tickets are issued at), and
    the previous ones open tickets until every ticket they sealed has expired."""

    __slots__ = ("_kept", "_period", "_rotate_at")

    def __init__(self, period: int = ROTATION_PERIOD, kept: int = PREVIOUS_KEYS_KEPT) -> None:
        super().__init__([os.urandom(32)])
        self._period, self._kept = period, kept
        self._rotate_at: int | None = None

    def issuing(self, now: int) -> MasterKey:
        if self._rotate_at is None:
            self._rotate_at = now + self._period
        elif now >= self._rotate_at:
            key = MasterKey(os.urandom(32))
            self.keys = (key, *self.keys[: self._kept])
            self._by_id = {k.key_id: k for k in self.keys}
            self._rotate_at = now + self._period
        return self.keys[0]


def parse_ticket_keys(data: bytes) -> list[bytes]:
    """The keys of a key file, in its order (the first issues).

    The format: one key per line, standard base64 of at least ``MIN_KEY_SIZE`` random bytes;
    blank lines and lines starting with ``#`` are ignored; at least one key, at most
    ``MAX_KEYS``. ``ValueError`` says which line is wrong, never what it holds."""
    if len(data) > MAX_KEY_FILE_SIZE:
        raise ValueError(f"larger than {MAX_KEY_FILE_SIZE >> 10} KiB")
    keys = []
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"line {number} is not a base64 key") from None
        if len(key) < MIN_KEY_SIZE:
            raise ValueError(
                f"line {number} holds a key of {len(key)} bytes; at least {MIN_KEY_SIZE} are "
                "needed (head -c 32 /dev/urandom | base64)"
            )
        keys.append(key)
    if not keys:
        raise ValueError("holds no key (one base64 key per line, newest first)")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"holds {len(keys)} keys; at most {MAX_KEYS}")
    return keys


def format_ticket_keys(keys: Sequence[bytes], comment: str = "") -> bytes:
    """A key file holding ``keys`` (the first issues)."""
    header = f"# {comment}\n" if comment else ""
    return header.encode() + b"".join(base64.b64encode(key) + b"\n" for key in keys)


def new_ticket_key() -> bytes:
    return os.urandom(32)


class _Sealer(NamedTuple):
    """What sealing under one master key on one route needs, all constant for the pair."""

    aead: AESGCM
    prefix: bytes
    aad: bytes


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (setup.py), subclassed in tests
class TicketKey:
    """One route's ticket protection: a keyring seen under the route's ``scope``.

    ``max_age`` (seconds) bounds how long after its client was authenticated with a certificate
    a session may still be resumed (``tls.session_tickets.max_age``)."""

    __slots__ = ("_aeads", "_keyring", "max_age", "route")

    def __init__(
        self,
        route: str,
        keyring: TicketKeyring | None = None,
        *,
        max_age: int = DEFAULT_MAX_AGE,
    ) -> None:
        self.route = route
        self.max_age = max_age
        self._keyring = keyring if keyring is not None else TicketKeyring.random()
        self._aeads: dict[bytes, _Sealer] = {}

    def __repr__(self) -> str:
        return f"TicketKey(route={self.route!r})"

    def _sealer(self, key: MasterKey) -> _Sealer:
        """The AEAD, ticket prefix and AAD of ``key`` on this route, made once per key."""
        sealer = self._aeads.get(key.key_id)
        if sealer is None:
            if len(self._aeads) >= 2 * MAX_KEYS:  # rotated keys: forget the old ones
                self._aeads.clear()
            sealer = self._aeads[key.key_id] = _Sealer(
                AESGCM(key.route_key(self.route)),
                _PREFIX.pack(_VERSION, key.key_id),
                self._aad(key.key_id),
            )
        return sealer

    def seal(self, state: TicketState) -> bytes | None:
        """The ticket for ``state``, or None when it would be too large to issue."""
        chain = state.chain
        if len(chain) > MAX_CHAIN_LENGTH or sum(map(len, chain)) > MAX_CHAIN_SIZE:
            return None
        key = self._keyring.issuing(state.issued)
        sealer = self._aeads.get(key.key_id) or self._sealer(key)  # made once per key
        nonce = os.urandom(_NONCE_SIZE)
        sealed = sealer.aead.encrypt(nonce, state.encode(), sealer.aad)
        ticket = sealer.prefix + nonce + sealed
        return ticket if len(ticket) <= MAX_TICKET_SIZE else None

    def open(self, ticket: bytes) -> TicketState | None:
        """The state of a ticket sealed for this route with a key of the keyring; None for
        anything else (another route, a removed key, tampering, an older format)."""
        if not _PREFIX.size + _NONCE_SIZE + _TAG_SIZE < len(ticket) <= MAX_TICKET_SIZE:
            return None
        version, key_id = _PREFIX.unpack_from(ticket)
        key = self._keyring.find(key_id) if version == _VERSION else None
        if key is None:
            return None
        nonce = ticket[_PREFIX.size : _PREFIX.size + _NONCE_SIZE]
        sealed = ticket[_PREFIX.size + _NONCE_SIZE :]
        sealer = self._aeads.get(key_id) or self._sealer(key)
        try:
            plain = sealer.aead.decrypt(nonce, sealed, sealer.aad)
            state = TicketState.decode(plain)
        except (InvalidTag, ValueError, struct.error, UnicodeDecodeError):
            return None
        return state if state.route == self.route else None

    def _aad(self, key_id: bytes) -> bytes:
        return _AAD + key_id + self.route.encode("utf-8")
