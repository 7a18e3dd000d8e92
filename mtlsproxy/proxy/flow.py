"""Flow control for one proxied connection: reading a side stops while any reason to stop holds.

Several independent causes stop the proxy reading the client. What it sent before the upstream
connected passed the buffer size; the upstream's write buffer is full (backpressure, as
uvicorn's ``FlowControl``); in HTTP mode, an Upgrade request waits for the upstream's answer
while the rewriter holds what follows it; a refused request waits for the upstream to answer
the requests before it. Each cause starts and ends on its own schedule, so with one paused
flag the end of one would undo another: the upstream draining its buffer would resume reading
a client whose Upgrade is unanswered.
``ReadGate`` keeps the set of causes and touches the transport only when the set goes from
empty to not empty and back.

The upstream has a gate too, with one cause: the client's write buffer is full (the client
reads slower than the upstream writes). That cause does not pause the client's reading
directly: it reaches the client through the upstream (whose receive window and then our write
buffer to it fill up: ``UPSTREAM_FULL``), so a client that is sending what the upstream needs
before it can answer is not stopped early.

What the engine writes to the client in answer to the client's own records (KeyUpdate
replies, alerts) does not go through the upstream, so that path alone would let a client that
never reads grow its write buffer without bound. A client whose records made the proxy write
to it while its write buffer is past the limit stops being read (``CLIENT_WRITE_FULL``) until
that buffer drains; a client sending only application data is never paused by its own write
buffer.
"""

from __future__ import annotations

import enum
from typing import Protocol


class Pause(enum.Enum):
    """Why a side is not being read."""

    # the client: what it sent before the upstream connected passed limits.buffer_size
    CONNECTING = "connecting"
    UPSTREAM_FULL = "upstream_full"  # the client: the upstream's write buffer is full
    UPGRADE_PENDING = "upgrade_pending"  # the client: HTTP bytes after an Upgrade are held
    REFUSED = "refused"  # the client: a refused request waits for the answers before it
    CLIENT_FULL = "client_full"  # the upstream: the client's write buffer is full
    # the client: its records were answered (KeyUpdate, alerts) into its full write buffer
    CLIENT_WRITE_FULL = "client_write_full"
    FEEDING = "feeding"  # the client: the engine is still being given an earlier read


class Readable(Protocol):
    """The part of an ``asyncio.Transport`` a gate drives."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool: ...


class ReadGate:
    """Reading one transport, paused while at least one ``Pause`` holds.

    Causes may be paused before the transport exists (``attach`` applies them). A transport
    that is closing is left alone.
    """

    __slots__ = ("_transport", "causes")

    def __init__(self) -> None:
        self._transport: Readable | None = None
        # A tuple, not a set: at most a few causes hold at once, an empty set is 216 bytes
        # (two gates a connection) where the empty tuple is shared, and ``in`` on a tuple
        # compares identities before it would hash an Enum (a Python-level __hash__). Set
        # only here; the data path tests it (empty: nothing holds) before it calls ``holds``
        # or ``resume``, a call fewer a read in the usual case.
        self.causes: tuple[Pause, ...] = ()

    def attach(self, transport: Readable) -> None:
        self._transport = transport
        if self.causes:
            self._set(paused=True)

    @property
    def paused(self) -> bool:
        return bool(self.causes)

    def holds(self, cause: Pause) -> bool:
        return cause in self.causes

    def pause(self, cause: Pause) -> None:
        if cause in self.causes:
            return
        self.causes += (cause,)
        if len(self.causes) == 1:
            self._set(paused=True)

    def resume(self, cause: Pause) -> None:
        """``cause`` no longer holds; reading resumes only if no other does."""
        if cause not in self.causes:
            return
        self.causes = tuple(held for held in self.causes if held is not cause)
        if not self.causes:
            self._set(paused=False)

    def _set(self, paused: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()
