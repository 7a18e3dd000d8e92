"""The admin endpoint: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``, and JSON
documents of what is loaded and running (``/certs``, ``/status``).

A deliberately tiny HTTP/1.1 server on asyncio streams: one GET per connection, request head
bounded, answered and closed. It serves scrapes, probes and operators, nothing else, and says
nothing secret: the documents hold public certificates' fields and counters, never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mtlsproxy import __version__

# A probe or scrape request head is a few hundred bytes; 8 KiB is Apache's per-line limit.
MAX_REQUEST_HEAD = 8 * 1024
READ_TIMEOUT = 5.0

# RFC 9112 section 3: method SP request-target SP HTTP-version.
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[!-~]*) HTTP/1\.[01]")
_BAD_REQUEST = ("400 Bad Request", "text/plain", b"bad request\n")


Document = Callable[[], object]


def process_status(source: Path, *, ready: bool, draining: bool) -> dict[str, object]:
    """The fields every ``/status`` starts with: which build, which process, which config."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "config": str(source),
        "ready": ready,
        "draining": draining,
    }


class AdminServer:
    """``documents`` maps a path (``b"/certs"``) to what its JSON body is made of, built on
    each request."""

    def __init__(
        self,
        exposition: Callable[[], bytes],
        ready: Callable[[], bool],
        documents: Mapping[bytes, Document] | None = None,
    ) -> None:
        self._exposition = exposition
        self._ready = ready
        self._documents = dict(documents or {})
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_REQUEST_HEAD, reuse_address=True
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, status, content_type, body = self._respond(head)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            method, status, content_type, body = b"", *_BAD_REQUEST
        except ConnectionError:
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + (body if method != b"HEAD" else b"")  # RFC 9110 section 9.3.2
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _respond(self, head: bytes) -> tuple[bytes, str, str, bytes]:
        """(method, status, content type, body) for one request head."""
        request_line = head.split(b"\r\n", 1)[0]
        match = _REQUEST_LINE.fullmatch(request_line)
        if match is None:
            return (b"", *_BAD_REQUEST)  # RFC 9112 section 3
        method, target = match.group(1), match.group(2)
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return (method, "405 Method Not Allowed", "text/plain", b"GET only\n")
        if path == b"/metrics":
            return (method, "200 OK", CONTENT_TYPE_LATEST, self._exposition())
        if path == b"/healthz":
            return (method, "200 OK", "text/plain", b"ok\n")
        if path == b"/readyz":
            if self._ready():
                return (method, "200 OK", "text/plain", b"ready\n")
            return (method, "503 Service Unavailable", "text/plain", b"not ready\n")
        document = self._documents.get(path)
        if document is not None:
            body = json.dumps(document(), indent=2, sort_keys=True).encode() + b"\n"
            return (method, "200 OK", "application/json", body)
        return (method, "404 Not Found", "text/plain", b"not found\n")
