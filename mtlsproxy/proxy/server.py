"""The whole proxy: its listeners and admin endpoint, signals, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from mtlsproxy import logs
from mtlsproxy.config.model import Config
from mtlsproxy.metrics import Metrics
from mtlsproxy.proxy.admin import AdminServer
from mtlsproxy.proxy.listener import ListenerRuntime


class Proxy:
    """Start with ``await start()``; stop with ``await drain()`` (SIGTERM does it too)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.listeners = [ListenerRuntime(listener, self.metrics) for listener in config.listeners]
        self.admin = AdminServer(self.metrics.exposition, self.is_ready)
        self._started = False
        self._draining = False
        self._stopped = asyncio.Event()

    def is_ready(self) -> bool:
        return self._started and not self._draining

    async def start(self) -> None:
        for listener in self.listeners:
            await listener.start()
            logs.event(
                logging.INFO,
                f"listening on {listener.config.host}:{listener.port}",
                listener=listener.name,
                routes=[route.name for route in listener.routes.all_routes()],
            )
        if self.config.metrics.enabled:
            await self.admin.start(self.config.metrics.host, self.config.metrics.port)
            logs.event(
                logging.INFO,
                f"metrics on http://{self.config.metrics.host}:{self.admin.port}/metrics",
            )
        self._started = True

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: int) -> None:
        logs.event(logging.INFO, f"{signal.Signals(signum).name}: draining")
        asyncio.get_running_loop().create_task(self.drain())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, let open connections finish for up to the drain timeout, close."""
        if self._draining:
            return
        self._draining = True
        for listener in self.listeners:
            listener.stop_accepting()
        deadline = max(listener.timeouts.drain for listener in self.listeners)
        if timeout is not None:
            deadline = timeout
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while any(listener.connections for listener in self.listeners) and loop.time() < end:
            await asyncio.sleep(0.05)
        for listener in self.listeners:
            for connection in list(listener.connections):
                connection.shutdown()
        await asyncio.sleep(0)  # let transports flush close_notify before the loop stops
        await self.admin.close()
        self._stopped.set()


async def serve(config: Config) -> None:
    proxy = Proxy(config)
    await proxy.start()
    proxy.install_signal_handlers()
    await proxy.wait_stopped()


def run(config: Config) -> None:
    """Run until SIGTERM/SIGINT, on uvloop where it imports."""
    logs.configure(config.log)
    runner: contextlib.AbstractContextManager[asyncio.Runner]
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - platforms without uvloop
        runner = asyncio.Runner()
    with runner as r:
        r.run(serve(config))
