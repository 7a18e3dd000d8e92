"""Which Python functions a connection still runs as bytecode, and how often: interpreted
calls per connection under ``e2e.py``'s handshake load (``engine: native``).

The engine and the connection path are compiled (setup.py); what is not (the policy, the
routes, the metrics, ``asyncio``'s and the standard library's Python, ``cryptography``'s
Python wrappers) still costs an interpreted frame a call, ~0.1-0.3 us with warm caches. The
proxy runs with ``bench/python_calls_site`` on its ``PYTHONPATH``, which counts the calls
between two signals (``sys.setprofile``; see its docstring); this script starts it as
``e2e.py`` does, loads it, and prints the calls per connection, most frequent first.

    .venv/bin/python bench/python_calls.py --setups require13,none13 --seconds 3

A count under 1 per connection is a call some connections make (a cache miss, a timer).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import e2e  # bench/e2e.py
from procs import Process, process_tree, proxy_command

SITE = Path(__file__).resolve().parent / "python_calls_site"


def count_calls(setup: e2e.Setup, directory: Path, upstream: int, args) -> tuple[int, Path]:
    """Connections made, and the file of counts the proxy's worker wrote."""
    config = e2e.proxy_config(directory, setup, upstream, "native")
    argv, tree = proxy_command(config)
    out = directory / f"calls-{setup.key}"
    path = os.pathsep.join(filter(None, (str(SITE), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": path, "MTLSPROXY_PYTHON_CALLS": str(out)}
    server = Process(argv, directory / f"native-{setup.key}.log", None, None, cwd=tree, env=env)
    try:
        worker = list(process_tree(server.proc.pid))[-1]  # the process that serves
        os.kill(worker, signal.SIGUSR2)
        result = e2e.measure_handshakes(server, directory, setup, args)
        os.kill(worker, signal.SIGUSR1)
        written = Path(f"{out}.{worker}")
        end = time.monotonic() + 10
        while not written.exists() and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        server.stop()
    if not written.exists():
        raise SystemExit(f"the proxy wrote no counts to {written}: see {server.log}")
    return result["handshakes"], written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="require13", help="of require13, none13, require12")
    parser.add_argument("--seconds", type=float, default=3.0, help="handshake load")
    parser.add_argument("--workers", type=int, default=2, help="handshake client processes")
    parser.add_argument("--min", type=float, default=0.5, help="leave out rarer calls")
    args = parser.parse_args()
    setups = [s for s in e2e.SETUPS if s.key in args.setups.split(",")]
    if not setups:
        parser.error("unknown setup")
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-calls-") as tmp:
        directory = Path(tmp)
        upstream = e2e.pki_and_upstream(directory)
        try:
            for setup in setups:
                connections, written = count_calls(setup, directory, upstream.port, args)
                rows = [line.split("\t") for line in written.read_text().splitlines()]
                total = sum(int(count) for count, _, _ in rows) / connections
                print(f"\n{setup.key}: {total:.1f} interpreted calls per connection "
                      f"({connections} connections)")  # fmt: skip
                for count, where, name in rows:
                    if int(count) / connections >= args.min:
                        print(f"  {int(count) / connections:6.2f}  {where:18s} {name}")
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
