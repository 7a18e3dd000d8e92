"""What a connection costs once it is open: keep-alive requests and idle memory, mtlsproxy
(both engines) against nginx stream, in the same interleaved passes; and ``workers: 1``
against ``workers: 2``.

For each pass (the order of the systems rotates, as in e2e.py) this starts each system fresh
with e2e.py's ``require, TLS 1.3`` settings (client CA, CRLs for the whole chain, no
allow-list; the proxy with its access log on, as deployed) and measures:

* ``hs``: e2e.py's handshake load (new connection, full mutual-TLS 1.3 handshake, 1 byte
  echoed through the upstream, close), server CPU per handshake;
* ``ka1``: one established connection, the client writing a 1 KiB request and reading the
  1 KiB answer (echoed by the upstream) in a loop for ``--seconds``: server CPU per request,
  requests per second;
* ``kaN``: the same over ``--connections`` connections (one client process each);
* ``idle``: ``--idle`` connections opened (full handshake, 1 byte echoed, so that each has its
  upstream connection) and left open; the server's RSS (``VmRSS`` of its process tree) before
  and with them, per connection. Before, 50 connections are opened and closed (first-use
  caches, the chain verification's included); not more: memory freed by connections that
  closed stays in the process and would be reused, hiding what an open one holds.

Systems: ``openssl``, ``native`` (``python -m mtlsproxy run``), ``nginx`` (stream module, one
worker), and with ``--workers`` the proxy's ``native-w2`` (``workers: 2``) and nginx's
``nginx-w2``; ``native-before`` is the native proxy of another checkout (``--before DIR``:
its own ``.venv`` and tree, e.g. the main branch beside a work branch), in the same passes.
Ratios are to nginx (``--baseline``), per pass, then the median. With ``--cores 1`` (the
default) servers run on core 0 and everything else on core 1; with ``--cores 2`` nothing is
pinned (the server gets both cores, and shares them with the load: hs/s and
requests/s are then what the machine gives, the CPU per request stays comparable).

    flock /work/bench.lock .venv/bin/python bench/keepalive.py --runs 3 --seconds 4
    flock /work/bench.lock .venv/bin/python bench/keepalive.py --systems native,native-w2 \\
        --tests hs,kaN --cores 2
    flock /work/bench.lock .venv/bin/python bench/keepalive.py --systems native,nginx \\
        --before ../main --tests ka1,kaN   # this tree against main's, nginx the baseline
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from e2e import (  # bench/e2e.py
    CLIENT_CORE,
    SERVER_CORE,
    SETUPS,
    client_context,
    connect,
    find_nginx,
    measure_handshakes,
    pki_and_upstream,
    proxy_config,
    start_nginx_stream,
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
    proxy_command,
    write_samples,
)

SETUP = next(s for s in SETUPS if s.key == "require13")
SYSTEMS = ("openssl", "native", "nginx", "native-w2", "nginx-w2", "native-before")
LABELS = {
    "openssl": "mtlsproxy openssl",
    "native": "mtlsproxy native",
    "native-before": "mtlsproxy native, --before tree",
    "nginx": "nginx stream",
    "native-w2": "mtlsproxy native, 2 workers",
    "nginx-w2": "nginx stream, 2 workers",
}
TESTS = ("hs", "ka1", "kaN", "idle")
REQUEST = 1024
WARM_UP = 50  # connections opened and closed before the idle count (first-use caches)


# ---------------------------------------------------------------------------------------------
# Clients


def _keepalive_worker(directory: str, port: int, start: float, end: float, conn) -> None:
    """One connection: 1 KiB out, 1 KiB back, until ``end``."""
    context = client_context(Path(directory), SETUP)
    payload = os.urandom(REQUEST)
    done = 0
    with (
        connect(port, timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"R")
        conn.send("ready")
        while time.time() < start:
            time.sleep(0.001)
        cpu0 = time.process_time()
        while time.time() < end:
            tls.sendall(payload)
            got = 0
            while got < REQUEST:
                chunk = tls.recv(REQUEST - got)
                if not chunk:
                    raise ConnectionError("closed")
                got += len(chunk)
            done += 1
        conn.send((done, time.process_time() - cpu0))
    conn.close()


def measure_keepalive(server: Process, directory: Path, connections: int, args) -> dict:
    ctx = mp.get_context("fork")
    start = time.time() + 0.5 + 0.05 * connections
    end = start + args.seconds
    workers = []
    for _ in range(connections):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_keepalive_worker, args=(str(directory), server.port, start, end, child)
        )
        proc.start()
        child.close()
        workers.append((proc, parent))
    requests, client_cpu = 0, 0.0
    try:
        for _, parent in workers:
            if not parent.poll(20) or parent.recv() != "ready":
                raise RuntimeError("a keep-alive client did not connect")
        time.sleep(max(0.0, start - time.time()))
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        for proc, parent in workers:
            if parent.poll(args.seconds + 30):
                count, cpu = parent.recv()
                requests, client_cpu = requests + count, client_cpu + cpu
            proc.join(timeout=5)
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
    finally:
        for proc, _ in workers:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    return {
        "requests": requests,
        "per_s": requests / (t1 - t0),
        "cpu_us": (cpu1 - cpu0) / requests * 1e6 if requests else float("nan"),
        "cpu_util": (cpu1 - cpu0) / (t1 - t0),
        "client_us": client_cpu / requests * 1e6 if requests else float("nan"),
    }


def _open_connections(directory: Path, port: int, count: int) -> list:
    context = client_context(directory, SETUP)
    held = []
    for _ in range(count):
        tls = context.wrap_socket(connect(port, timeout=30), server_hostname="localhost")
        tls.sendall(b"E")
        if tls.recv(1) != b"E":
            raise ConnectionError("no echo")
        held.append(tls)
    return held


def measure_idle(server: Process, directory: Path, args) -> dict:
    """RSS growth of the server with ``--idle`` established, idle connections, per connection."""
    for tls in _open_connections(directory, server.port, WARM_UP):
        tls.close()
    time.sleep(1.0)  # the server sees the closes
    before = server.rss_kib()
    held = _open_connections(directory, server.port, args.idle)
    try:
        time.sleep(1.0)
        after = server.rss_kib()
    finally:
        for tls in held:
            tls.close()
    return {
        "connections": len(held),
        "rss_before_kib": before,
        "rss_kib": after,
        "kib_per_conn": (after - before) / len(held),
    }


# ---------------------------------------------------------------------------------------------
# Driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per sample")
    parser.add_argument("--runs", type=int, default=3, help="interleaved passes (medians)")
    parser.add_argument("--connections", type=int, default=4, help="connections of kaN")
    parser.add_argument("--clients", type=int, default=3, help="client processes of hs")
    parser.add_argument("--idle", type=int, default=2000, help="connections of idle")
    parser.add_argument("--systems", default="openssl,native,nginx", help=", ".join(SYSTEMS))
    parser.add_argument("--tests", default=",".join(TESTS), help=", ".join(TESTS))
    parser.add_argument("--baseline", default="nginx", help="the system ratios are to")
    parser.add_argument("--cores", type=int, choices=(1, 2), default=1, help="server cores")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    parser.add_argument(
        "--before", type=Path, metavar="DIR", help="a checkout with a .venv: native-before"
    )
    args = parser.parse_args()
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    if args.before is not None and "native-before" not in systems:
        systems.append("native-before")
    if "native-before" in systems and args.before is None:
        parser.error("native-before needs --before DIR")
    tests = [t for t in TESTS if t in args.tests.split(",")]
    if not systems or not tests:
        parser.error("no known system in --systems or test in --tests")

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # --idle sockets in this process
    has_nginx = any(s.startswith("nginx") for s in systems)
    nginx, load_module = find_nginx() if has_nginx else ("", "")
    server_pin = pin_servers(SERVER_CORE, CLIENT_CORE) if args.cores == 1 else None
    tail = f"{args.cores} server core(s); {args.seconds:g} s per sample"
    command = print_header(server_pin, nginx, tail)

    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-bench-keepalive-") as tmp:
        directory = Path(tmp)
        upstream = pki_and_upstream(directory)

        def start(system: str) -> Process:
            workers = 2 if system.endswith("-w2") else 1
            if system.startswith("nginx"):
                return start_nginx_stream(
                    nginx, directory, SETUP, upstream.port, load_module, server_pin,
                    workers=workers,
                )  # fmt: skip
            engine = system.removesuffix("-w2").removesuffix("-before")
            text = proxy_config(directory, SETUP, upstream.port, engine).read_text()
            port = free_port()
            text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}")
            config = directory / f"proxy-{system}.yaml"
            config.write_text(f"workers: {workers}\n" + text)
            before = args.before if system == "native-before" else None
            argv, tree = proxy_command(config, before)
            server = Process(argv, directory / f"{system}.log", server_pin, port, cwd=tree)
            if workers > 1:
                time.sleep(1.0)  # every worker listening (the port answers at the first)
            return server

        try:
            for run in range(args.runs):
                shift = run % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    server = start(system)
                    try:
                        for test in tests if run % 2 == 0 else tests[::-1]:
                            if test == "hs":
                                load = argparse.Namespace(
                                    seconds=args.seconds, workers=args.clients
                                )
                                result = measure_handshakes(server, directory, SETUP, load)
                            elif test == "idle":
                                result = measure_idle(server, directory, args)
                            else:
                                n = 1 if test == "ka1" else args.connections
                                result = measure_keepalive(server, directory, n, args)
                            label = f"{system:9} {test:4}"
                            keep_sample(samples, f"{test}/{system}", run, result, label)
                    finally:
                        server.stop()
        finally:
            upstream.stop()

    report(systems, tests, samples, args)
    write_samples(args.json, command, samples)
    return 0


def report(systems: list[str], tests: list[str], samples: dict[str, list[dict]], args) -> None:
    base = args.baseline if args.baseline in systems else systems[0]

    def med(key: str, field: str) -> float:
        return field_median(samples, key, field)

    def spread(key: str, field: str, fmt: str = ".0f") -> str:
        values = [s[field] for s in samples.get(key, [])]
        return f"{min(values):{fmt}}-{max(values):{fmt}}" if values else "-"

    def ratio_cells(test: str, system: str, field: str) -> list[object]:
        ratios = pass_ratios(samples, f"{test}/{system}", f"{test}/{base}", field)
        return [median(ratios), " ".join(f"{r:.2f}" for r in ratios)]

    what = {
        "hs": f"new connection, full handshake, 1 byte echoed, close; {args.clients} clients",
        "ka1": "1 KiB request, 1 KiB answer (echoed upstream) over 1 connection",
        "kaN": f"1 KiB request, 1 KiB answer over {args.connections} connections",
    }
    for test in (t for t in tests if t != "idle"):
        unit = "hs" if test == "hs" else "req"
        print_table(
            f"{test}: {what[test]}; {args.seconds:g} s per sample; medians of {args.runs}; "
            f"ratios to {LABELS[base]} per pass, then median",
            [
                ("system", "s"), (f"{unit}/s", ".0f"), (f"server CPU us/{unit}", ".1f"),
                ("range", "s"), ("server core %", ".0f"), (f"client CPU us/{unit}", ".1f"),
                ("CPU ratio", ".2f"), ("per pass", "s"), (f"{unit}/s ratio", ".2f"),
            ],
            [
                [
                    LABELS[system], med(f"{test}/{system}", "per_s"),
                    med(f"{test}/{system}", "cpu_us"), spread(f"{test}/{system}", "cpu_us"),
                    100 * med(f"{test}/{system}", "cpu_util"),
                    med(f"{test}/{system}", "client_us"),
                    *ratio_cells(test, system, "cpu_us"),
                    median(pass_ratios(samples, f"{test}/{system}", f"{test}/{base}", "per_s")),
                ]
                for system in systems
            ],
        )  # fmt: skip
    if "idle" in tests:
        print_table(
            f"idle: {args.idle} established mutual-TLS connections held open; RSS of the "
            f"server's processes; medians of {args.runs}",
            [
                ("system", "s"), ("RSS before KiB", ".0f"), ("RSS with them KiB", ".0f"),
                ("KiB/conn", ".1f"), ("range", "s"), ("ratio", ".2f"), ("per pass", "s"),
            ],
            [
                [
                    LABELS[system], med(f"idle/{system}", "rss_before_kib"),
                    med(f"idle/{system}", "rss_kib"), med(f"idle/{system}", "kib_per_conn"),
                    spread(f"idle/{system}", "kib_per_conn", ".1f"),
                    *ratio_cells("idle", system, "kib_per_conn"),
                ]
                for system in systems
            ],
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
