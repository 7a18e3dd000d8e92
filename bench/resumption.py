"""Resumption benchmark: resumed mutual-TLS 1.3 connections against full ones, native engine
with ``workers: 2`` beside nginx stream with session tickets, in the same passes.

For each pass (the order of the systems rotates, as in e2e.py) this starts fresh servers:

* ``native``: ``python -m mtlsproxy run`` with ``engine: native`` and ``workers: 2`` (the
  supervisor's shared ticket keys: a ticket issued by one worker is resumed by the other, as
  SO_REUSEPORT spreads the connections);
* ``nginx``: nginx's stream module with ``ssl_session_tickets on`` and two worker processes
  (one master's ticket keys), the same client CA and CRL bundle (bench/e2e.py's config).

and measures, each for ``--seconds``:

* ``full``: client processes open new connections in a loop (full handshake, 1 byte echoed
  through the upstream, close);
* ``resumed``: the same, each connection offering the ticket of the connection before it
  (``wrap_socket(..., session=previous)``), as a client reconnecting does.

Reported per system and test: connections per second, server CPU per connection (utime + stime
of the server's process tree from ``/proc``), the resumption rate seen by the clients
(``session_reused``) and, for the native engine, by the proxy
(``mtlsproxy_tls_resumed_sessions_total`` over the handshakes). Ratios are per pass, then the
median: resumed/full for each system, and native resumed/nginx resumed. The goal: native
resumed at most 0.6x native full, and at most nginx resumed. The servers are pinned to core 0,
the driver, the clients and the upstream to core 1 (when there are two cores and ``taskset``).

    .venv/bin/python bench/resumption.py --seconds 5 --runs 5
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from e2e import (  # bench/e2e.py
    CLIENT_CORE,
    SERVER_CORE,
    SETUPS,
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
)

SYSTEMS = ("native", "nginx")
LABELS = {"native": "mtlsproxy native, 2 workers", "nginx": "nginx stream, 2 workers"}
TESTS = ("full", "resumed")
SETUP = next(s for s in SETUPS if s.key == "require13")
WORKERS = 2


def native_config(
    directory: Path, upstream: int, port: int, metrics: int, access_log: bool = True
) -> Path:
    """e2e.py's require/TLS 1.3 config (the client CA and CRLs, no allow-list), on a fixed port
    (the workers share it), with metrics (the resumption counter) and two workers."""
    text = proxy_config(directory, SETUP, upstream, "native").read_text()
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}")
    text = text.replace("  enabled: false", f"  listen: 127.0.0.1:{metrics}")
    if not access_log:
        text = text.replace("  level: info", "  level: info\n  access: false")
    path = directory / "proxy-native-workers.yaml"
    path.write_text(f"workers: {WORKERS}\n" + text)
    return path


def metric(metrics_port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match[1] or "") for k, v in labels.items()):
            total += float(match[2])
    return total


def measure(server: Process, directory: Path, resume: bool, args, metrics: int | None) -> dict:
    """e2e.py's handshake load (``--clients`` processes), resuming or not, with the proxy's
    share of resumed handshakes from its counters."""
    counters = ("mtlsproxy_handshakes_total", "mtlsproxy_tls_resumed_sessions_total")

    def read() -> list[float]:
        return [metric(metrics, name) for name in counters] if metrics is not None else [0, 0]

    before = read()
    load = argparse.Namespace(seconds=args.seconds, workers=args.clients)
    result = measure_handshakes(server, directory, SETUP, load, resume=resume)
    time.sleep(0.2 if metrics is not None else 0)  # the workers' last counter writes
    after = read()
    handshakes, resumed = after[0] - before[0], after[1] - before[1]
    result.setdefault("reused_pct", 0.0)
    result["server_resumed_pct"] = 100 * resumed / handshakes if handshakes else float("nan")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per sample")
    parser.add_argument("--runs", type=int, default=5, help="interleaved passes (medians)")
    parser.add_argument("--clients", type=int, default=3, help="client processes")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated subset of native, nginx"
    )
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="log.access: false on the proxy (nginx's stream module logs nothing by default)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    if not systems or "native" not in systems:
        parser.error("--systems needs native")

    nginx, load_module = find_nginx() if "nginx" in systems else ("", "")

    server_pin = pin_servers(SERVER_CORE, CLIENT_CORE)
    tail = f"{args.clients} client processes, {args.seconds:g} s per sample"
    command = print_header(server_pin, nginx, tail)

    python = sys.executable
    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-bench-resumption-") as tmp:
        directory = Path(tmp)
        upstream = pki_and_upstream(directory)
        try:
            for run in range(args.runs):
                shift = run % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    metrics = None
                    if system == "native":
                        port, metrics = free_port(), free_port()
                        config = native_config(
                            directory, upstream.port, port, metrics, not args.no_access_log
                        )
                        argv = [python, "-m", "mtlsproxy", "run", "-c", str(config)]
                        server = Process(argv, directory / f"native-{run}.log", server_pin, port)
                        time.sleep(1.0)  # both workers listening (the port answers at the first)
                    else:
                        server = start_nginx_stream(
                            nginx, directory, SETUP, upstream.port, load_module, server_pin,
                            workers=WORKERS, directives="        ssl_session_tickets on;\n",
                        )  # fmt: skip
                    try:
                        tests = TESTS if run % 2 == 0 else TESTS[::-1]
                        for test in tests:
                            result = measure(server, directory, test == "resumed", args, metrics)
                            label = f"{system:6} {test:7}"
                            keep_sample(samples, f"{test}/{system}", run, result, label)
                    finally:
                        server.stop()
        finally:
            upstream.stop()

    report(systems, samples, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"command": command, "samples": samples}, indent=2) + "\n"
        )
    return 0


def report(systems: list[str], samples: dict[str, list[dict]], args) -> None:
    def med(key: str, field: str) -> float:
        return field_median(samples, key, field)

    def ratios(numerator: str, denominator: str) -> list[float]:
        return pass_ratios(samples, numerator, denominator, "cpu_us")

    print_table(
        f"Mutual TLS 1.3 (require, CRLs), new connection, 1 byte echoed, close; {args.clients} "
        f"client processes, {args.seconds:g} s per sample; medians of {args.runs} passes",
        [
            ("system", "s"), ("test", "s"), ("conn/s", ".0f"), ("server CPU us/conn", ".0f"),
            ("client CPU us/conn", ".0f"), ("resumed (client) %", ".1f"),
            ("resumed (server) %", ".1f"), ("CPU vs full", ".2f"),
        ],
        [
            [
                LABELS[system], test, med(f"{test}/{system}", "per_s"),
                med(f"{test}/{system}", "cpu_us"), med(f"{test}/{system}", "client_us"),
                med(f"{test}/{system}", "reused_pct"),
                med(f"{test}/{system}", "server_resumed_pct"),
                median(ratios(f"{test}/{system}", f"full/{system}")),
            ]
            for system in systems
            for test in TESTS
        ],
    )  # fmt: skip
    print()
    native_vs_full = ratios("resumed/native", "full/native")
    print(
        "native resumed / native full, server CPU per connection, per pass: "
        + " ".join(f"{r:.2f}" for r in native_vs_full)
        + f"; median {median(native_vs_full):.2f} (goal <= 0.60)"
    )
    if "nginx" in systems:
        vs_nginx = ratios("resumed/native", "resumed/nginx")
        print(
            "native resumed / nginx resumed, server CPU per connection, per pass: "
            + " ".join(f"{r:.2f}" for r in vs_nginx)
            + f"; median {median(vs_nginx):.2f} (goal <= 1.00)"
        )


if __name__ == "__main__":
    sys.exit(main())
