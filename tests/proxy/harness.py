"""Real sockets on 127.0.0.1: a proxy running in a thread, upstreams, and TLS clients.

Nothing here mocks TLS: the proxy is the real ``Proxy`` on its own event loop (uvloop), the
upstreams are real TCP servers, and the clients are Python ``ssl``, ``openssl s_client`` and
``curl`` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import select
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
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
        # Anything that escapes a callback lands here: the tests require there is none.
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(self._on_loop_error)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy: Proxy = self._call(self._create())
        self._call(self.proxy.start())

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:  # type: ignore[type-arg]
        self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        loop.default_exception_handler(context)

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
        assert not self.loop_errors, f"errors escaped the proxy's event loop: {self.loop_errors}"


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Upstream = self.server  # type: ignore[assignment]
        server.behaviour(self.request, server)


def echo(sock: socket.socket, server: Upstream) -> None:
    """Echo until EOF, then half-close: answers arrive even after the client's FIN."""
    with contextlib.suppress(ConnectionError):
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
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
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
            return echo_through(tls, payload)


def echo_through(tls: ssl.SSLSocket, payload: bytes) -> bytes:
    """Send ``payload`` and read the echo; raises (or returns short) when refused."""
    tls.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = tls.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def read_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the peer sends until it closes (a reset ends it too)."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def send_raw(port: int, data: bytes, half_close: bool = False, timeout: float = 5) -> bytes:
    """Send ``data`` on a plain TCP connection and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout)


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


class MemoryClient:
    """A TLS client on ``ssl.SSLObject`` over a raw socket: the test decides what bytes go out
    when (one byte at a time, a truncated hello, close_notify while still reading)."""

    def __init__(self, pki: PkiFiles, port: int, cert: str | None = "client") -> None:
        context = Client(pki, port, cert=cert).context()
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def client_hello(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def finish_handshake(self) -> None:
        """Drive the handshake to completion once the ClientHello has been sent."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.sock.sendall(self.outgoing.read())

    def receive_all(self) -> tuple[bytes, bool]:
        """Read until the server's close_notify or EOF: (data, whether close_notify came)."""
        received = bytearray()
        while True:
            try:
                chunk = self.tls.read(65536)
                if not chunk:
                    return bytes(received), True
                received += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(received), True
            data = self.sock.recv(65536)
            if not data:
                return bytes(received), False
            self.incoming.write(data)

    def exchange(self, payload: bytes, chunk: int = 256 * 1024) -> bytes:
        """Send ``payload`` and read what comes back at the same time, in one thread (an
        SSL object must not be used from two threads), until as many bytes came back."""
        self.sock.setblocking(False)
        sent, received = 0, bytearray()
        pending = b""
        while len(received) < len(payload):
            if not pending and sent < len(payload):
                self.tls.write(payload[sent : sent + chunk])
                sent = min(sent + chunk, len(payload))
                pending = self.outgoing.read()
            writers = [self.sock] if pending else []
            readable, writable, _ = select.select([self.sock], writers, [], 30)
            if not readable and not writable:
                raise TimeoutError(f"stalled after {sent} sent, {len(received)} received")
            if writable:
                pending = pending[self.sock.send(pending) :]
            if readable:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self.incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    while chunk_in := self.tls.read(1 << 20):
                        received += chunk_in
        self.sock.setblocking(True)
        return bytes(received)

    def close(self) -> None:
        self.sock.close()


# Helpers for interoperability tests: interactive clients, polling, a tiny HTTP upstream.


@dataclass
class Interaction:
    """What an interactive client process printed; ``returncode`` is None if it was stopped."""

    stdout: bytes
    stderr: bytes
    returncode: int | None

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")


def interact(
    command: list[str], stdin: bytes = b"", until: bytes = b"", timeout: float = 10
) -> Interaction:
    """Run ``command``, write ``stdin`` (left open, so the client does not quit on EOF), and
    collect its output until ``until`` appears on stdout, the process exits, or ``timeout``."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    buffers: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def pump(name: str) -> None:
        stream = getattr(process, name)
        while chunk := stream.read1(65536):
            buffers[name] += chunk

    readers = [threading.Thread(target=pump, args=(n,), daemon=True) for n in buffers]
    for reader in readers:
        reader.start()
    assert process.stdin is not None
    if stdin:
        with contextlib.suppress(BrokenPipeError):  # the client may have quit already
            process.stdin.write(stdin)
            process.stdin.flush()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if until and until in buffers["stdout"]:
            break
        time.sleep(0.01)
    returncode = process.poll()
    if returncode is None:
        process.kill()
    process.wait()
    for reader in readers:
        reader.join(timeout=5)
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    return Interaction(bytes(buffers["stdout"]), bytes(buffers["stderr"]), returncode)


def eventually(predicate: Callable[[], bool], timeout: float = 5) -> bool:
    """Poll ``predicate`` until it is true (metrics are counted on the proxy's own thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def http_ok(body: bytes) -> Callable[[socket.socket, Upstream], None]:
    """An upstream behaviour: read one HTTP/1.1 request head, answer 200 with ``body``."""

    def behaviour(sock: socket.socket, server: Upstream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return
            head += chunk
        server.received += len(head)
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        sock.shutdown(socket.SHUT_WR)

    return behaviour


def start_proxy(
    directory: Path,
    pki: PkiFiles,
    upstream_port: int,
    mode: str = "require",
    allow: list[str] | None = None,
    routes: str = "",
    name: str = "api",
    engine: str = "openssl",
) -> RunningProxy:
    """A proxy from conftest's listener template, for module-scoped fixtures (``make_proxy``
    is per test; each of its upstreams costs a ``socketserver`` shutdown poll to stop)."""
    from tests.proxy.conftest import render_config  # conftest imports this module

    path = directory / f"{name}-{mode}-{engine}.yaml"
    address = f"127.0.0.1:{upstream_port}"
    text = render_config(pki, address, mode, allow=allow, routes=routes, name=name, engine=engine)
    path.write_text(text)
    return RunningProxy(path)


class ProxyProcess:
    """``python -m mtlsproxy run -c CONFIG`` as a child process, its ports read from its log.

    A thread keeps reading the child's stderr into ``lines``: a pipe nobody reads would
    block the proxy once its buffer (64 KiB) is full of access log lines."""

    def __init__(self, config: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtlsproxy", "run", "-c", str(config), *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._seen = 0
        self._new_line = threading.Condition()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.metrics = self.wait_for(r"metrics on (http://\S+)/metrics")
        self._seen = 0  # the order of the two start-up lines differs with workers
        self.port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)"))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        """The first group of the next log line (after those already matched) matching
        ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                while self._seen < len(self.lines):
                    line = self.lines[self._seen]
                    self._seen += 1
                    if match := re.search(pattern, line):
                        return match.group(1)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._pending()):
                    raise AssertionError(f"no {pattern!r} in the proxy's log: {self.lines}")
                self._new_line.wait(min(remaining, 0.1))

    def _pending(self) -> bool:
        return self._seen < len(self.lines)

    def assert_no_traceback(self) -> None:
        """After the process ended: nothing escaped as a Python traceback."""
        time.sleep(0.05)  # the reader thread takes the last lines
        tracebacks = [line for line in self.lines if "Traceback" in line]
        assert not tracebacks, "".join(self.lines[-40:])

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.metrics}{path}", timeout=5) as response:
            return str(response.read().decode())

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"{self.metrics}{path}", timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
