"""The budget of handshakes a source may leave unfinished: a token bucket per client address.

Why: a client that sends a ClientHello, takes our whole flight (key exchange and signature)
and closes costs us as much as a good client, and nothing tells the two apart before it
closes. What tells them apart is afterwards: its handshakes never complete. So each handshake
that ends without completing (abandoned, closed, timed out, shed, failed or refused) takes a
token from its source's bucket, each completed one gives one back, and a source with no whole
token left has its new connections closed at accept, before any engine work. A source whose
handshakes complete, a NAT gateway of well-behaved clients too, never runs dry: only the
failures beyond its completions and the refill rate count against it.

The bucket may go into debt, down to ``-burst``: many handshakes begun at once and then
abandoned are all paid back before the next is accepted, but a past incident never locks a
source out for longer than ``2 * burst / rate`` seconds.

A source is an IPv4 address or an IPv6 /64 (one subscriber's usual allocation, which a host
may spread its addresses over); an IPv4-mapped IPv6 address is its IPv4 address. A full
bucket needs no entry (a source never seen is full), so the table holds only sources that
failed recently, at most ``capacity`` of them: past that the least recently seen is
forgotten, which gives it a full bucket again.

Sans-I/O: no sockets, no asyncio, no clock of its own. The caller passes the monotonic time,
so tests are exact.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Sources remembered at most (LRU): ~200 bytes each, ~13 MiB when full.
DEFAULT_CAPACITY = 65536
# Seconds between two reports of the same refused source, and at most this many sources
# reported in one such interval (a distributed attack must not become a log flood).
REPORT_INTERVAL = 10.0
MAX_REPORTS_PER_INTERVAL = 16


def source_of(host: str) -> str:
    """The budget's key for a peer address: the IPv4 address itself, an IPv6 address's /64
    (``2001:db8:1:2::/64``), an IPv4-mapped IPv6 address's IPv4 address. Anything else (a
    unix socket's empty name) is its own key."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    prefix = int(address) >> 64 << 64
    return f"{ipaddress.IPv6Address(prefix).compressed}/64"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A source's new connection is refused. ``report``: refusals of this source to log now,
    this one included (0: not yet, it was reported less than ``REPORT_INTERVAL`` ago)."""

    source: str
    report: int


class _Bucket:
    """One source's tokens as of ``stamp``; ``unreported``: refusals not logged yet."""

    __slots__ = ("reported_at", "stamp", "tokens", "unreported")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.unreported = 0
        self.reported_at = float("-inf")


class SourceBudget:
    """Token buckets of ``burst`` tokens refilled at ``rate`` a second, per source."""

    def __init__(self, rate: float, burst: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if rate <= 0 or burst < 1 or capacity < 1:
            raise ValueError("rate must be above zero, burst and capacity at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.capacity = capacity
        # Least recently seen first (a dict keeps insertion order; a touch re-inserts).
        self._buckets: dict[str, _Bucket] = {}
        self._window_start = float("-inf")
        self._window_reports = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def configure(self, rate: float, burst: int) -> None:
        """New settings (a reload); the sources keep their tokens, capped at the new burst."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be above zero, burst at least 1")
        self.rate, self.burst = float(rate), float(burst)
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, self.burst)

    def tokens(self, source: str, now: float) -> float:
        """What ``source`` has left at ``now`` (``burst`` for a source not in the table)."""
        bucket = self._buckets.get(source)
        return self.burst if bucket is None else self._refill(bucket, now)

    def admit(self, source: str, now: float) -> Refusal | None:
        """At accept: None if ``source`` has a whole token (nothing is taken yet: only a
        handshake that does not complete pays), else the refusal and whether to log it."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return None
        if self._refill(bucket, now) >= 1.0:
            if bucket.tokens >= self.burst:
                del self._buckets[source]  # full again: a full bucket needs no entry
            return None
        self._touch(source, bucket)
        bucket.unreported += 1
        return Refusal(source, self._report(bucket, now))

    def charge(self, source: str, now: float) -> None:
        """A handshake from ``source`` ended without completing: one token, down to
        ``-burst`` at most."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[source] = bucket
            if len(self._buckets) > self.capacity:
                del self._buckets[next(iter(self._buckets))]  # the least recently seen
        else:
            self._refill(bucket, now)
            self._touch(source, bucket)
        bucket.tokens = max(-self.burst, bucket.tokens - 1.0)

    def complete(self, source: str, now: float) -> None:
        """A handshake from ``source`` completed: one token back. Completing is what an
        attacker avoids (it costs it a certificate and a signature when the route asks for
        one, and us as much as an abandoned one), so each completion may pay for one failure
        without raising what a source can make us do by more than twice its completions."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return
        if self._refill(bucket, now) + 1.0 >= self.burst:
            del self._buckets[source]
        else:
            bucket.tokens += 1.0

    def _refill(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.stamp = max(bucket.stamp, now)
        return bucket.tokens

    def _touch(self, source: str, bucket: _Bucket) -> None:
        """Most recently seen: last in line for eviction."""
        del self._buckets[source]
        self._buckets[source] = bucket

    def _report(self, bucket: _Bucket, now: float) -> int:
        """Refusals of this source to log now: once per ``REPORT_INTERVAL`` per source, and
        at most ``MAX_REPORTS_PER_INTERVAL`` sources per interval; the others keep counting
        and are reported later."""
        if now - bucket.reported_at < REPORT_INTERVAL:
            return 0
        if now - self._window_start >= REPORT_INTERVAL:
            self._window_start, self._window_reports = now, 0
        if self._window_reports >= MAX_REPORTS_PER_INTERVAL:
            return 0
        self._window_reports += 1
        count, bucket.unreported, bucket.reported_at = bucket.unreported, 0, now
        return count
