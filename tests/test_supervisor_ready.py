"""A worker slower to start than ``READY_TIMEOUT`` (a loaded node, large CRL files) is still
counted ready when it says so: /readyz must not stay 503 while every worker serves."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtlsproxy import supervisor
from mtlsproxy.config.model import Config


async def await_ready_of_a_worker_ready_after(delay: float) -> supervisor.Supervisor:
    chief = supervisor.Supervisor(Config(source=Path("proxy.yaml"), listeners=()), Path("."))
    stdout = asyncio.StreamReader()
    worker = SimpleNamespace(stdout=stdout, returncode=None)
    waiting = asyncio.create_task(chief._await_ready(0, worker))  # type: ignore[arg-type]
    await asyncio.sleep(delay)
    stdout.feed_data(b"ready\n")
    await asyncio.wait_for(waiting, timeout=5)
    return chief


def test_a_worker_ready_after_the_timeout_is_ready_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "READY_TIMEOUT", 0.05)
    with caplog.at_level(logging.WARNING):
        chief = asyncio.run(await_ready_of_a_worker_ready_after(0.3))
    assert chief._ready == {0}
    assert "worker 0 not ready after 0.05 s" in caplog.text


def test_a_worker_ready_in_time_is_ready_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        chief = asyncio.run(await_ready_of_a_worker_ready_after(0.01))
    assert chief._ready == {0}
    assert "not ready" not in caplog.text
