"""The whole proxy: its listeners and admin endpoint, reloads, signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import ssl
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mtlsproxy import logs
from mtlsproxy.config import ConfigError, load_config_with_warnings
from mtlsproxy.config.files import check_files
from mtlsproxy.config.model import Config, Listener
from mtlsproxy.metrics import Metrics
from mtlsproxy.proxy.admin import AdminServer, process_status
from mtlsproxy.proxy.listener import ListenerRuntime
from mtlsproxy.routing.inventory import certificates_document
from mtlsproxy.routing.routes import RouteTable

FileDigests = dict[Path, bytes | None]
SUPERVISOR_CHECK_INTERVAL = 0.5  # seconds

# glibc's malloc serves a block above its mmap threshold (128 KiB at first, moved as such
# blocks are freed) with a fresh mmap, and gives free heap above its trim threshold back to
# the kernel. The data path allocates blocks of up to a read's size (256 KiB with uvloop) for
# every read and every decrypted batch: with the moving thresholds each came as new pages,
# a page fault per 4 KiB (bench/e2e.py bulk: 190k faults per 512 MiB, a third of the
# proxy's CPU per GiB). Fixed thresholds keep them in the heap, reused; at most
# MALLOC_TRIM_THRESHOLD of free heap stays mapped beyond what is in use.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MALLOC_MMAP_THRESHOLD = 1 << 20
MALLOC_TRIM_THRESHOLD = 4 << 20


class ReloadRefused(Exception):
    """New material or config cannot be used; the old keeps serving."""


class Proxy:
    """Start with ``await start()``; stop with ``await drain()`` (SIGTERM does it too).

    ``worker`` is True in a process started by the supervisor: it shares the listening ports
    with its siblings (SO_REUSEPORT) and leaves the admin endpoint to the supervisor.
    """

    def __init__(self, config: Config, worker: bool = False) -> None:
        self.config = config
        self.worker = worker
        self.metrics = Metrics(",".join(sorted({listener.engine for listener in config.listeners})))
        self.listeners = [
            ListenerRuntime(
                listener, self.metrics, RouteTable.for_listener(listener), config.log.access
            )
            for listener in config.listeners
        ]
        self.admin = AdminServer(
            self.metrics.exposition,
            self.is_ready,
            {b"/certs": self.certificates_document, b"/status": self.status_document},
        )
        self._digests = {
            runtime.name: _digests(runtime.watched_files()) for runtime in self.listeners
        }
        # The YAML's content at the last load attempt, and at the last poll (see _watch_files).
        self._config_digest = _digests((config.source,))
        self._config_polled = self._config_digest
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._started_at = time.time()
        self._last_reload: dict[str, object] | None = None
        self._draining = False
        self._stopped = asyncio.Event()

    def is_ready(self) -> bool:
        return self._started and not self._draining

    def certificates_document(self) -> dict:
        """``/certs``: what every listener's routes have loaded now."""
        tables = [(runtime.name, runtime.routes) for runtime in self.listeners]
        return certificates_document(tables, datetime.now(UTC))

    def status_document(self) -> dict:
        """``/status``: the process, its listeners and the last reload."""
        return {
            **process_status(self.config.source, ready=self.is_ready(), draining=self._draining),
            "uptime_seconds": round(time.time() - self._started_at, 3),
            "listeners": [
                {
                    "name": runtime.name,
                    "address": f"{runtime.config.host}:{runtime.port}",
                    "engine": str(runtime.config.engine),
                    "accepting": not runtime.draining,
                    "active_connections": len(runtime.connections),
                    "routes": [route.name for route in runtime.routes.all_routes()],
                }
                for runtime in self.listeners
            ],
            "last_reload": self._last_reload,
        }

    async def start(self) -> None:
        for runtime in self.listeners:
            await self._start_listener(runtime)
        if self.config.metrics.enabled and not self.worker:
            await self.admin.start(self.config.metrics.host, self.config.metrics.port)
            logs.event(
                logging.INFO,
                f"metrics on http://{self.config.metrics.host}:{self.admin.port}/metrics",
            )
        if self.config.reload.watch:
            self._spawn(self._watch_files())
        if self.worker:
            self._spawn(self._watch_supervisor(os.getppid()))
        self.metrics.last_reload_success.set(time.time())
        self._create_zero_series()
        self._started = True

    def _create_zero_series(self) -> None:
        """Series that exist from the start at 0, so that the first failure is an increase
        to Prometheus (``increase()`` cannot see a series born at 1)."""
        for trigger in ("files", "config"):
            for result in ("ok", "failed"):
                self.metrics.config_reloads.labels(trigger, result)
        for runtime in self.listeners:
            for route in runtime.routes.all_routes():
                self.metrics.handshakes.labels(runtime.name, route.name, "ok", "none", "none")

    async def _start_listener(self, runtime: ListenerRuntime) -> None:
        runtime.server = await runtime.listening(reuse_port=self.worker)
        logs.event(
            logging.INFO,
            f"listening on {runtime.config.host}:{runtime.port}",
            listener=runtime.name,
            routes=[route.name for route in runtime.routes.all_routes()],
        )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload_config()))

    def _on_stop_signal(self, signum: int) -> None:
        logs.event(logging.INFO, f"{signal.Signals(signum).name}: draining")
        self._spawn(self.drain())

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _watch_supervisor(self, supervisor: int) -> None:
        """A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of serving
        on, unsupervised and unseen by /metrics."""
        while os.getppid() == supervisor:
            await asyncio.sleep(SUPERVISOR_CHECK_INTERVAL)
        logs.event(logging.ERROR, "the supervisor is gone: draining")
        await self.drain()

    # Reload flow

    async def _watch_files(self) -> None:
        """Poll the content of the YAML and of every certificate, key, CA and CRL file.
        Content, not mtime: Kubernetes swaps a ``..data`` symlink and cert-manager writes
        then renames, and both keep or reset mtimes in ways a stat would miss.

        A changed YAML is reloaded (as SIGHUP does) once two polls agree on its new content:
        an editor writing in place is not caught half-way, and a SIGHUP that already loaded
        that content is not repeated."""
        while not self._draining:
            await asyncio.sleep(self.config.reload.interval)
            polled = _digests((self.config.source,))
            if polled != self._config_digest and polled == self._config_polled:
                await self.reload_config()
            self._config_polled = polled
            for runtime in list(self.listeners):
                digests = _digests(runtime.watched_files())
                if digests != self._digests.get(runtime.name):
                    self.reload_files(runtime, digests)

    def reload_files(self, runtime: ListenerRuntime, digests: FileDigests) -> bool:
        """New handshakes of ``runtime`` use the changed files, if they are usable."""
        self._digests[runtime.name] = digests  # a bad state is reported once, not every poll
        try:
            routes = _build_routes(replace(self.config, listeners=(runtime.config,)))[0]
        except ReloadRefused as error:
            self._reload_failed("files", str(error), listener=runtime.name)
            return False
        runtime.install(runtime.config, routes)
        self._reload_succeeded("files", listener=runtime.name)
        return True

    async def reload_config(self) -> bool:
        """SIGHUP: re-read the YAML. Listeners that keep their address keep their socket and
        open connections; new ones start, removed ones stop accepting and drain. A config
        that does not load, or material that does not, changes nothing. What is read at start
        only (the metrics address, workers) keeps its old value, with a warning."""
        self._config_digest = _digests((self.config.source,))
        try:
            config, warnings = load_config_with_warnings(self.config.source)
            routes = _build_routes(config)
        except ConfigError as error:
            problems = "; ".join(str(p) for p in error.problems if p.severity == "error")
            self._reload_failed("config", problems)
            return False
        except ReloadRefused as error:
            self._reload_failed("config", str(error))
            return False
        for warning in warnings:
            logs.event(logging.WARNING, str(warning))
        config = self._keep_start_only_settings(config)
        old = {runtime.name: runtime for runtime in self.listeners}
        kept, started = [], []
        try:
            for listener, table in zip(config.listeners, routes, strict=True):
                runtime = old.get(listener.name)
                if runtime is not None and _same_socket(runtime.config, listener):
                    kept.append((runtime, listener, table))
                    continue
                fresh = ListenerRuntime(listener, self.metrics, table, config.log.access)
                await self._start_listener(fresh)
                started.append(fresh)
        except OSError as error:
            for fresh in started:
                fresh.stop_accepting()
            self._reload_failed("config", f"cannot listen: {error}")
            return False
        for runtime, listener, table in kept:
            runtime.install(listener, table)
            runtime.access_log = config.log.access
        kept_names = {runtime.name for runtime, _, _ in kept}
        for runtime in self.listeners:
            if runtime.name not in kept_names:
                runtime.stop_accepting()  # its open connections finish on their own
        self.listeners = [runtime for runtime, _, _ in kept] + started
        self.config = config
        self._digests = {r.name: _digests(r.watched_files()) for r in self.listeners}
        logs.configure(config.log)
        self._reload_succeeded("config")
        return True

    def _keep_start_only_settings(self, config: Config) -> Config:
        """The metrics endpoint and the worker count are set up at start: a reload that
        changes them warns and keeps the running values."""
        old = self.config
        changed = []
        if config.metrics != old.metrics:
            changed.append(f"metrics ({_metrics_address(old)} -> {_metrics_address(config)})")
        if config.workers != old.workers:
            changed.append(f"workers ({old.workers} -> {config.workers})")
        if changed:
            logs.event(
                logging.WARNING,
                f"{', '.join(changed)} changed: read at start only, takes effect at the next "
                "restart; the rest of the config is reloaded",
            )
        return replace(config, metrics=old.metrics, workers=old.workers)

    def _reload_succeeded(self, trigger: str, **fields: str) -> None:
        self._last_reload = {"trigger": trigger, "result": "ok", "at": _now_text(), **fields}
        self.metrics.config_reloads.labels(trigger, "ok").inc()
        self.metrics.last_reload_success.set(time.time())
        logs.event(logging.INFO, f"reloaded ({trigger})", **fields)

    def _reload_failed(self, trigger: str, reason: str, **fields: str) -> None:
        self._last_reload = {
            "trigger": trigger,
            "result": "failed",
            "at": _now_text(),
            "reason": reason,
            **fields,
        }
        self.metrics.config_reloads.labels(trigger, "failed").inc()
        logs.event(
            logging.ERROR, f"reload refused ({trigger}), still serving the old: {reason}", **fields
        )

    # Shutdown flow

    async def drain(self, timeout: float | None = None) -> None:
        """/readyz turns 503; after ``timeouts.shutdown_delay`` (still accepting, while load
        balancers take the endpoint out) stop accepting, let open connections finish for up
        to the drain timeout, close."""
        if self._draining:
            return
        self._draining = True
        delay = max(runtime.timeouts.shutdown_delay for runtime in self.listeners)
        if delay > 0 and timeout is None:
            logs.event(logging.INFO, f"still accepting for {delay:g} s (shutdown_delay)")
            await asyncio.sleep(delay)
        for runtime in self.listeners:
            runtime.stop_accepting()
        deadline = max(runtime.timeouts.drain for runtime in self.listeners)
        if timeout is not None:
            deadline = timeout
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while any(runtime.connections for runtime in self.listeners) and loop.time() < end:
            await asyncio.sleep(0.05)
        for runtime in self.listeners:
            for connection in list(runtime.connections):
                connection.shutdown()
        await asyncio.sleep(0)  # let transports flush close_notify before the loop stops
        await self.admin.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._stopped.set()


def _build_routes(config: Config) -> list[RouteTable]:
    """Every listener's routes from ``config``, after the same file checks as ``check``."""
    errors = [p for p in check_files(config) if p.severity == "error"]
    if errors:
        raise ReloadRefused("; ".join(p.message for p in errors))
    try:
        return [RouteTable.for_listener(listener) for listener in config.listeners]
    except (ssl.SSLError, ValueError, OSError) as error:
        raise ReloadRefused(f"cannot load the TLS material: {error}") from error


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metrics_address(config: Config) -> str:
    metrics = config.metrics
    return f"{metrics.host}:{metrics.port}" if metrics.enabled else "disabled"


def _same_socket(old: Listener, new: Listener) -> bool:
    return (old.host, old.port) == (new.host, new.port)


def _digests(paths: tuple[Path, ...]) -> FileDigests:
    digests: FileDigests = {}
    for path in paths:
        try:
            digests[path] = hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            digests[path] = None
    return digests


async def serve(config: Config, worker: bool = False) -> None:
    proxy = Proxy(config, worker=worker)
    # Before start(): a SIGHUP or SIGTERM arriving while the listeners open must not take its
    # default action (terminate) once the log has said "listening".
    proxy.install_signal_handlers()
    await proxy.start()
    if worker:
        print("ready", flush=True)  # to the supervisor (mtlsproxy.supervisor)
    await proxy.wait_stopped()


def tune_malloc() -> bool:
    """Fixed malloc thresholds (see ``MALLOC_MMAP_THRESHOLD``), on glibc; false elsewhere
    (musl, macOS: their allocators have no such thresholds, or no ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        and mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )


def run(config: Config, worker: bool = False) -> None:
    """Run until SIGTERM/SIGINT, on uvloop where it imports."""
    logs.configure(config.log)
    tune_malloc()
    runner: contextlib.AbstractContextManager[asyncio.Runner]
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - platforms without uvloop
        runner = asyncio.Runner()
    with runner as r:
        r.run(serve(config, worker))
