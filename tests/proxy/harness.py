"""Real sockets on 127.0.0.1: a proxy running in a thread, upstreams, and TLS clients.

Nothing here mocks TLS: the proxy is the real ``Proxy`` on its own event loop (uvloop), the
upstreams are real TCP servers, and the clients are Python ``ssl``, ``openssl s_client`` and
``curl`` processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import socketserver
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from mtlsproxy import logs
from mtlsproxy.config import load_config
from mtlsproxy.pki import PkiFiles
from mtlsproxy.proxy.server import Proxy


class RunningProxy:
    """A ``Proxy`` serving from a background thread; ``stop()`` drains it."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path)
        logs.configure(self.config.log)
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy: Proxy = self._call(self._create())
        self._call(self.proxy.start())

    async def _create(self) -> Proxy:
        return Proxy(self.config)

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def port(self, index: int = 0) -> int:
        return self.proxy.listeners[index].port

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.admin.port}"

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def handshakes(self, **labels: str) -> float:
        return self.sample("mtlsproxy_handshakes_total", **labels)

    def active_connections(self) -> int:
        async def count() -> int:
            return sum(len(listener.connections) for listener in self.proxy.listeners)

        return int(self._call(count()))

    def stop(self) -> None:
        self._call(self.proxy.drain(timeout=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Upstream = self.server  # type: ignore[assignment]
        server.behaviour(self.request, server)


def echo(sock: socket.socket, server: Upstream) -> None:
    """Echo until EOF, then half-close: answers arrive even after the client's FIN."""
    while data := sock.recv(256 * 1024):
        server.received += len(data)
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


class Upstream(socketserver.ThreadingTCPServer):
    """A real TCP upstream on 127.0.0.1 with a pluggable per-connection behaviour."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, behaviour: Callable[[socket.socket, Upstream], None] = echo) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.behaviour = behaviour
        self.received = 0
        self.connections = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        self.connections += 1
        super().process_request(request, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class Client:
    """A Python ``ssl`` client of the proxy."""

    pki: PkiFiles
    port: int
    cert: str | None = "client"  # a PKI leaf name, or None for no certificate
    server_hostname: str = "localhost"
    maximum_version: ssl.TLSVersion | None = None
    minimum_version: ssl.TLSVersion | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if self.maximum_version is not None:
            context.maximum_version = self.maximum_version
        if self.minimum_version is not None:
            context.minimum_version = self.minimum_version
        if self.cert is not None:
            directory = self.pki.directory
            context.load_cert_chain(directory / f"{self.cert}.crt", directory / f"{self.cert}.key")
        return context

    def connect(self, timeout: float = 10) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            return self.context().wrap_socket(raw, server_hostname=self.server_hostname)
        except BaseException:
            raw.close()
            raise

    def roundtrip(self, payload: bytes = b"ping") -> bytes:
        """Send ``payload`` through an echo upstream and read it back; raises on refusal."""
        with self.connect() as tls:
            tls.sendall(payload)
            received = b""
            while len(received) < len(payload):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
            return received


def refused_by(client: Client) -> str:
    """The ``ssl`` reason the client sees when the proxy refuses it, or "" when admitted.

    Under TLS 1.3 the client finishes its handshake before the server has checked its
    certificate, so the refusal arrives as an alert (or close) on the first read.
    """
    try:
        echoed = client.roundtrip(b"ping")
    except ssl.SSLError as error:
        return error.reason or str(error)
    except (ConnectionError, TimeoutError) as error:
        return type(error).__name__
    return "" if echoed == b"ping" else "closed"


def openssl_s_client(
    port: int, pki: PkiFiles, *args: str, stdin: bytes = b"", timeout: float = 10
) -> subprocess.CompletedProcess[bytes]:
    command = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca_cert),
        "-verify_return_error", "-quiet", *args,
    ]  # fmt: skip
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)


def curl(
    port: int, pki: PkiFiles, *args: str, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    command = [
        "curl", "-sS", "--max-time", str(int(timeout)), "--cacert", str(pki.ca_cert),
        *args, f"https://localhost:{port}/",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
