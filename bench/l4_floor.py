"""The L4 floor: server CPU per connection of the cheapest Python proxy on this machine, beside
nginx stream doing the same plaintext forwarding.

e2e.py's handshake test without TLS: client processes open new TCP connections in a loop
(connect, 1 byte written, the byte echoed back through the upstream, close), the same
upstream behind either front, server CPU per connection from ``/proc`` (the process and its
descendants). The fronts:

* ``python``: an asyncio Protocol on uvloop that accepts, connects to the upstream
  (``loop.create_connection`` from a task), forwards bytes both ways and closes: no TLS, no
  timers, no metrics, no log line, no limits. What a connection costs any Python proxy on
  uvloop, in the kernel and the event loop: the part of mtlsproxy's cost per connection that
  no change to the proxy can remove (mtlsproxy's own cost is its e2e.py figure less this
  floor and the engine's in-process cost);
* ``nginx``: nginx's stream module, ``proxy_pass`` without ``ssl``, one worker.

Ratios are to nginx, per pass, then the median; servers on core 0, clients and the upstream
on core 1 (as e2e.py).

    flock /work/bench.lock .venv/bin/python bench/l4_floor.py --seconds 4 --runs 3

Internal mode (used by the script on itself): ``--serve UPSTREAM_PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from functools import partial
from pathlib import Path

from e2e import (  # bench/e2e.py
    CLIENT_CORE,
    SERVER_CORE,
    Setup,
    find_nginx,
    measure_handshakes,
    pki_and_upstream,
)
from procs import (  # bench/procs.py
    Process,
    field_median,
    free_port,
    keep_sample,
    median,
    pass_ratios,
    pin_servers,
    print_header,
    print_table,
    serve_until_stopped,
    write_samples,
)

PLAIN = Setup("plain", "plain TCP", "plain", "-")  # e2e.py's clients: no TLS
SYSTEMS = ("python", "nginx")
LABELS = {"python": "python uvloop forwarder", "nginx": "nginx stream"}

NGINX_PLAIN = """\
{load_module}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
stream {{
    upstream app {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        proxy_pass app;
    }}
}}
"""


# ---------------------------------------------------------------------------------------------
# The Python front


class _Upstream(asyncio.Protocol):
    __slots__ = ("client",)

    def __init__(self, client: _Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def eof_received(self) -> bool:
        self.client.transport.close()  # what is buffered is still written
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    __slots__ = ("early", "eof", "loop", "transport", "upstream", "upstream_port")

    def __init__(self, loop: asyncio.AbstractEventLoop, upstream_port: int) -> None:
        self.loop, self.upstream_port = loop, upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early = b""  # read before the upstream connected
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop.create_task(self.connect())

    async def connect(self) -> None:
        try:
            upstream, _ = await self.loop.create_connection(
                partial(_Upstream, self), "127.0.0.1", self.upstream_port
            )
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream  # type: ignore[assignment]
        if self.early:
            upstream.write(self.early)  # type: ignore[attr-defined]
        if self.eof:
            upstream.write_eof()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early += data
        else:
            self.upstream.write(data)

    def eof_received(self) -> bool:
        if self.upstream is None:
            self.eof = True
        else:
            self.upstream.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


def _serve(upstream_port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            partial(_Client, loop, upstream_port), "127.0.0.1", 0, backlog=1024
        )
        await serve_until_stopped(server)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# ---------------------------------------------------------------------------------------------
# Driver


def start_nginx_plain(
    nginx: str, directory: Path, upstream: int, load_module: str, pin: int | None
) -> Process:
    """A fresh foreground nginx (its own prefix dir) forwarding plain TCP to ``upstream``."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-plain-", dir=directory))
    port = free_port()
    conf = NGINX_PLAIN.format(load_module=load_module, dir=prefix, upstream=upstream, port=port)
    (prefix / "nginx.conf").write_text(conf)
    argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    argv += ["-e", str(prefix / "error.log"), "-g", "daemon off;"]
    return Process(argv, prefix / "stderr.log", pin, port)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per sample")
    parser.add_argument("--runs", type=int, default=3, help="interleaved passes (medians)")
    parser.add_argument("--workers", type=int, default=3, help="client processes")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()

    nginx, load_module = find_nginx()
    server_pin = pin_servers(SERVER_CORE, CLIENT_CORE)
    command = print_header(server_pin, nginx, "plain TCP, no TLS")
    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-l4-") as tmp:
        directory = Path(tmp)
        upstream = pki_and_upstream(directory)
        try:

            def start(system: str) -> Process:
                if system == "nginx":
                    return start_nginx_plain(
                        nginx, directory, upstream.port, load_module, server_pin
                    )
                argv = [sys.executable, str(Path(__file__).resolve()), "--serve"]
                argv.append(str(upstream.port))
                return Process(argv, directory / "python.log", server_pin, None)

            for run in range(args.runs):
                shift = run % len(SYSTEMS)  # rotate the order each pass
                for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
                    server = start(system)
                    try:
                        result = measure_handshakes(server, directory, PLAIN, args)
                    finally:
                        server.stop()
                    keep_sample(samples, system, run, result, f"{system:7}")
        finally:
            upstream.stop()

    print_table(
        f"L4 floor: new TCP connection, 1 byte echoed through the upstream, close; "
        f"{args.workers} client processes, {args.seconds:g} s per sample; medians of "
        f"{args.runs}; ratios to nginx per pass, then median",
        [
            ("system", "s"), ("connections", ".0f"), ("conn/s", ".0f"),
            ("server CPU us/conn", ".0f"), ("server core %", ".0f"),
            ("client CPU us/conn", ".0f"), ("CPU ratio", ".2f"),
        ],
        [
            [
                LABELS[system],
                field_median(samples, system, "handshakes"),
                field_median(samples, system, "per_s"),
                field_median(samples, system, "cpu_us"),
                field_median(samples, system, "cpu_util") * 100,
                field_median(samples, system, "client_us"),
                median(pass_ratios(samples, system, "nginx", "cpu_us")),
            ]
            for system in SYSTEMS
        ],
    )  # fmt: skip
    write_samples(args.json, command, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
