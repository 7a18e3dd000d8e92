"""Flow control: reading a side is paused while any cause holds, so that one cause ending never
undoes another's pause; and the access log's end reasons keep their names."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

from mtlsproxy.config.model import Limits
from mtlsproxy.proxy.connection import ClientConnection, EndReason, ListenerView
from mtlsproxy.proxy.flow import Pause, ReadGate


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.paused = False
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def gate() -> tuple[ReadGate, FakeTransport]:
    transport = FakeTransport()
    reading = ReadGate()
    reading.attach(transport)
    return reading, transport


def test_one_cause_resuming_does_not_undo_another() -> None:
    reading, transport = gate()
    reading.pause(Pause.UPGRADE_PENDING)
    reading.pause(Pause.UPSTREAM_FULL)
    reading.resume(Pause.UPSTREAM_FULL)  # the upstream drained; the Upgrade is unanswered
    assert transport.paused and reading.paused and reading.holds(Pause.UPGRADE_PENDING)
    reading.resume(Pause.UPGRADE_PENDING)
    assert not transport.paused and not reading.paused
    assert transport.calls == ["pause", "resume"]  # the transport only sees the edges


def test_repeats_and_resuming_what_was_not_paused_change_nothing() -> None:
    reading, transport = gate()
    reading.resume(Pause.UPSTREAM_FULL)
    reading.pause(Pause.REFUSED)
    reading.pause(Pause.REFUSED)
    reading.resume(Pause.UPSTREAM_FULL)
    assert transport.calls == ["pause"] and reading.paused


def test_causes_held_before_the_transport_apply_when_it_comes() -> None:
    reading = ReadGate()
    reading.pause(Pause.CLIENT_FULL)
    transport = FakeTransport()
    reading.attach(transport)
    assert transport.paused


def test_a_closing_transport_is_left_alone() -> None:
    reading, transport = gate()
    transport.closing = True
    reading.pause(Pause.CONNECTING)
    reading.resume(Pause.CONNECTING)
    assert transport.calls == []


def test_end_reasons_are_the_access_log_values() -> None:
    assert {reason.value for reason in EndReason} == {
        "closed", "client_gone", "handshake_failed", "handshake_shed", "tls_error",
        "upstream_unavailable",
        "upstream_closed", "upstream_reset", "http_refused", "http2_error", "idle_timeout",
        "drain_timeout",
        "internal_error",
    }  # fmt: skip


def test_what_arrives_before_the_upstream_connected_is_bounded() -> None:
    """The client is read while the upstream connects (no pause and resume per connection)
    until what it sent passes ``limits.buffer_size``: then it is paused until the upstream is
    there (``_upstream_connected`` resumes it)."""
    runtime = SimpleNamespace(limits=Limits(buffer_size=10))
    loop = SimpleNamespace(time=lambda: 0.0)
    connection = ClientConnection(
        cast(ListenerView, runtime), cast(asyncio.AbstractEventLoop, loop)
    )
    transport = FakeTransport()
    connection._client_reading.attach(transport)
    connection._to_upstream(b"x" * 10)
    assert not transport.paused
    connection._to_upstream(b"y")
    assert transport.paused and connection._client_reading.holds(Pause.CONNECTING)
