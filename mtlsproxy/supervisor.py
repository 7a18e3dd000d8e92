"""``workers: N``: N proxy processes sharing the listening ports, one supervisor above them.

Each worker is ``python -m mtlsproxy worker -c FILE``: a whole proxy with its own event loop,
binding the listeners with SO_REUSEPORT so the kernel spreads new connections across workers
(uvicorn and hypercorn pre-bind instead; SO_REUSEPORT also lets each worker re-bind on its
own after a SIGHUP adds a listener). The supervisor:

* starts the workers and restarts one that dies (after a short, growing delay);
* serves the one admin endpoint, whose ``/metrics`` sums every worker through
  prometheus-client's multiprocess mode (each worker writes its values to files in
  ``PROMETHEUS_MULTIPROC_DIR``; a dead worker's live gauges are dropped, its counters kept);
* forwards SIGHUP (each worker reloads the YAML) and SIGTERM/SIGINT (each worker drains),
  and reports not-ready from the moment draining starts.

Session tickets of ``engine: native`` (TLS 1.3) are shared: unless a route names its own key
file (``tls.session_tickets.keys``), every worker seals and opens tickets with the keys of
:class:`SharedTicketKeys`, a 0600 file in the supervisor's private 0700 directory, so a ticket
issued by one worker resumes on any other. The supervisor rotates it every hour; the workers'
file watchers pick it up as they do certificates. OpenSSL's tickets (``engine: openssl``, and
TLS 1.2 on either engine) stay per worker: Python's ``ssl`` module does not expose
``SSL_CTX_set_tlsext_ticket_keys``, so such a ticket resumes only on the worker that issued it
(1/N of the time with SO_REUSEPORT; the others do a full handshake, which is always correct).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from mtlsproxy import logs
from mtlsproxy.config.model import Config
from mtlsproxy.engine.native.tickets import (
    PREVIOUS_KEYS_KEPT,
    ROTATION_PERIOD,
    format_ticket_keys,
    new_ticket_key,
)
from mtlsproxy.routing.tickets import SHARED_KEYS_ENV

# A worker that dies is restarted after this delay, doubled on each quick death (a worker that
# cannot start should not spin), up to the maximum; a worker that lived a minute resets it.
RESTART_DELAY = 0.2
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 60.0
READY_TIMEOUT = 30.0


class SharedTicketKeys:
    """The workers' session ticket keys, in the key-file format (``parse_ticket_keys``).

    The file lives in ``directory`` (the supervisor's own, mode 0700) with mode 0600, and is
    named to the workers by path (``SHARED_KEYS_ENV``); it is replaced atomically. It holds
    the key that seals, then the previous ones for as long as a ticket they sealed may live
    (plus one, for the workers' reload interval), then the next key: every worker can open
    tickets of the next key before any worker seals with it. ``rotate`` moves on by one key.
    The keys are never logged."""

    def __init__(self, directory: Path, kept: int = PREVIOUS_KEYS_KEPT + 1) -> None:
        self.path = directory / "ticket.keys"
        self._kept = kept
        self._keys = [new_ticket_key()]
        self._next = new_ticket_key()
        self._write()

    def rotate(self) -> None:
        self._keys = [self._next, *self._keys][: 1 + self._kept]
        self._next = new_ticket_key()
        self._write()

    def _write(self) -> None:
        data = format_ticket_keys(
            [*self._keys, self._next],
            "mtlsproxy supervisor: session ticket keys of its workers; the first seals",
        )
        temporary = self.path.with_name(self.path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
        os.replace(temporary, self.path)

    async def rotate_every(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            self.rotate()
            logs.event(logging.INFO, "session ticket keys of the workers rotated")


def private_directory(prefix: str) -> Path:
    """A new 0700 directory, in memory (``/dev/shm``) where there is one: keys never reach a
    disk."""
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=where))


class Supervisor:
    def __init__(
        self, config: Config, multiprocess_dir: Path, tickets: SharedTicketKeys | None = None
    ) -> None:
        self.config = config
        self.multiprocess_dir = multiprocess_dir
        self.tickets = tickets
        self.workers: dict[int, asyncio.subprocess.Process] = {}  # slot -> process
        self._ready: set[int] = set()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    def is_ready(self) -> bool:
        return not self._draining and len(self._ready) == self.config.workers

    async def run(self) -> None:
        from mtlsproxy.proxy.admin import AdminServer

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        admin = AdminServer(
            self._exposition,
            self.is_ready,
            {b"/certs": self._certificates, b"/status": self._status},
        )
        if self.config.metrics.enabled:
            await admin.start(self.config.metrics.host, self.config.metrics.port)
            logs.event(
                logging.INFO,
                f"metrics on http://{self.config.metrics.host}:{admin.port}/metrics",
                workers=self.config.workers,
            )
        rotation = (
            asyncio.create_task(self.tickets.rotate_every(ROTATION_PERIOD))
            if self.tickets is not None
            else None
        )
        slots = [
            asyncio.create_task(self._keep_running(slot)) for slot in range(self.config.workers)
        ]
        await asyncio.gather(*slots)
        if rotation is not None:
            rotation.cancel()
        await admin.close()

    async def _keep_running(self, slot: int) -> None:
        """Run worker ``slot`` until draining, restarting it when it dies."""
        delay = RESTART_DELAY
        while not self._draining:
            loop = asyncio.get_running_loop()
            started = loop.time()
            process = await self._start(slot)
            code = await process.wait()
            self._ready.discard(slot)
            self._forget(process.pid)
            if self._draining:
                return
            lived = loop.time() - started
            delay = RESTART_DELAY if lived > STABLE_AFTER else min(delay * 2, MAX_RESTART_DELAY)
            logs.event(
                logging.ERROR,
                f"worker {slot} (pid {process.pid}) exited with {code}; restarting",
                worker=slot,
            )
            await asyncio.sleep(delay)

    async def _start(self, slot: int) -> asyncio.subprocess.Process:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.multiprocess_dir)}
        if self.tickets is not None:
            env[SHARED_KEYS_ENV] = str(self.tickets.path)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtlsproxy", "worker", "-c", str(self.config.source),
            stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        self.workers[slot] = process
        logs.event(logging.INFO, f"worker {slot} started (pid {process.pid})", worker=slot)
        task = asyncio.create_task(self._await_ready(slot, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return process

    async def _await_ready(self, slot: int, process: asyncio.subprocess.Process) -> None:
        """A worker writes one line, ``ready``, on stdout once its listeners are open.

        One slower than ``READY_TIMEOUT`` (a loaded node, large CRL files) is warned about and
        still waited for: giving up would leave /readyz at 503 while the worker serves."""
        assert process.stdout is not None
        line = asyncio.ensure_future(process.stdout.readline())
        try:
            if not (await asyncio.wait({line}, timeout=READY_TIMEOUT))[0]:
                logs.event(
                    logging.WARNING,
                    f"worker {slot} not ready after {READY_TIMEOUT:g} s; still waiting",
                    worker=slot,
                )
            with contextlib.suppress(ConnectionError):
                if (await line).strip() == b"ready" and process.returncode is None:
                    self._ready.add(slot)
        finally:
            line.cancel()  # the supervisor stopping: no read left behind

    def _forget(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.multiprocess_dir))

    def _exposition(self) -> bytes:
        from prometheus_client import (
            CollectorRegistry,
            ProcessCollector,
            generate_latest,
            multiprocess,
        )

        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # the supervisor's own process_* series
        multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry)

    def _certificates(self) -> dict:
        """``/certs``: the workers load what the config file names; read it as they do."""
        from mtlsproxy.config import ConfigError, load_config
        from mtlsproxy.routing.inventory import certificates_document
        from mtlsproxy.routing.routes import RouteTable

        try:
            config = load_config(self.config.source)
            tables = [(li.name, RouteTable.for_listener(li)) for li in config.listeners]
        except (ConfigError, ValueError, OSError) as error:
            return {"error": f"the config or its files do not load: {error}"}
        return certificates_document(tables, datetime.now(UTC))

    def _status(self) -> dict:
        """``/status``: the supervisor and each worker slot."""
        from mtlsproxy.proxy.admin import process_status

        return {
            **process_status(self.config.source, ready=self.is_ready(), draining=self._draining),
            "workers": [
                {
                    "slot": slot,
                    "pid": process.pid,
                    "running": process.returncode is None,
                    "ready": slot in self._ready,
                }
                for slot, process in sorted(self.workers.items())
            ],
        }

    def _forward(self, signum: int) -> None:
        for process in self.workers.values():
            if process.returncode is None:
                process.send_signal(signum)

    def _on_stop(self, signum: int) -> None:
        logs.event(logging.INFO, f"{signal.Signals(signum).name}: draining all workers")
        self._draining = True
        self._forward(signal.SIGTERM)


def run(config: Config) -> None:
    """Supervise ``config.workers`` workers until SIGTERM/SIGINT and every worker has drained."""
    logs.configure(config.log)
    directory = Path(tempfile.mkdtemp(prefix="mtlsproxy-metrics-"))
    keys = private_directory("mtlsproxy-tickets-")
    try:
        asyncio.run(Supervisor(config, directory, SharedTicketKeys(keys)).run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(keys, ignore_errors=True)
