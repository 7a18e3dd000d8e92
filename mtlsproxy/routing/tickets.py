"""Where a route's session-ticket keys come from (``engine: native``, TLS 1.3).

In this order:

1. ``tls.session_tickets.keys``: a key file (``engine.native.tickets.parse_ticket_keys``: one
   base64 key per line, the first sealing, every one opening), typically a Kubernetes Secret
   shared by every replica. The listener's file watcher re-reads it when its content changes,
   as it does certificates, so a rotation needs no restart.
2. The supervisor's keys (``workers`` > 1): a file in its private directory, named to each
   worker by ``SHARED_KEYS_ENV``, so a ticket issued by one worker resumes on any other; the
   supervisor rotates it (``supervisor.SharedTicketKeys``) and the watcher picks it up.
3. Otherwise one random keyring for the life of the process (``RotatingKeyring``): reloads keep
   it, so they no longer cost every client a full handshake.

Whatever the source, each route sees the keys through its own derived key
(``TicketKey``, scope ``listener/route``): no ticket crosses routes or listeners.
"""

from __future__ import annotations

import os
from pathlib import Path

from mtlsproxy.config.model import Route, SessionTickets
from mtlsproxy.engine.native.tickets import (
    MAX_KEY_FILE_SIZE,
    RotatingKeyring,
    TicketKey,
    TicketKeyring,
    parse_ticket_keys,
)

SHARED_KEYS_ENV = "MTLSPROXY_SHARED_TICKET_KEYS"

_process_keyring: RotatingKeyring | None = None


def process_keyring() -> RotatingKeyring:
    """The random keyring of this process, created on first use and kept for its life."""
    global _process_keyring
    if _process_keyring is None:
        _process_keyring = RotatingKeyring()
    return _process_keyring


def key_file(settings: SessionTickets) -> Path | None:
    """The file a route's keys are read from: its own, else the supervisor's, else None."""
    if settings.keys is not None:
        return settings.keys
    shared = os.environ.get(SHARED_KEYS_ENV)
    return Path(shared) if shared else None


def ticket_key_files(route: Route) -> tuple[Path, ...]:
    """For the file watcher: the key file ``route`` reads, if any."""
    path = key_file(route.tls.session_tickets)
    return () if path is None else (path,)


def load_keyring(path: Path) -> TicketKeyring:
    """The keys of ``path``; ``ValueError`` names the file and the line, never a key."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_SIZE + 1)
    except OSError as error:
        raise ValueError(f"{path}: cannot read the session ticket keys: {error.strerror}") from None
    try:
        return TicketKeyring(parse_ticket_keys(data))
    except ValueError as error:
        raise ValueError(f"{path}: not a session ticket key file: {error}") from None


def ticket_key(route: Route, listener: str) -> TicketKey:
    """``route``'s ticket protection, scoped to ``listener`` and the route's name."""
    settings = route.tls.session_tickets
    path = key_file(settings)
    keyring = process_keyring() if path is None else load_keyring(path)
    return TicketKey(f"{listener}/{route.name}", keyring, max_age=int(settings.max_age))
