"""Instructions per connection and per keep-alive request with ``workers: 1`` and ``workers: 2``.

CPU time per operation on this 2-core machine rises when a second worker shares the cores with
the load generator (caches, migrations, fewer events per wakeup), which says nothing about what
the workers' own code costs. This script counts it: the proxy (``engine: native``, e2e.py's
require/TLS 1.3 settings, metrics on, access log on) runs under ``valgrind --tool=callgrind
--trace-children=yes``, so the supervisor and every worker are counted, and a client makes a
fixed number of operations one after another. Three runs per setting, over every process of
the tree: idle for 30 s, ``--few`` and ``--many`` operations; start-up and shutdown cancel out,
and so does the background (timers of the workers and the supervisor) in proportion to each
run's length (``per_operation``): what is left is each operation's user-space instructions
wherever it ran. Kernel work is not counted (callgrind sees user space only).

    .venv/bin/python bench/workers_instructions.py --workers 1,2 --test hs --few 20 --many 80
    .venv/bin/python bench/workers_instructions.py --workers 1,2 --test ka --few 200 --many 1000

``hs``: full mutual-TLS 1.3 connections (handshake, 1 byte echoed through the upstream, close);
``ka``: 1 KiB requests echoed through the upstream on 4 connections opened beforehand (their
handshakes are in both totals, so they cancel).
"""

from __future__ import annotations

import argparse
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from e2e import SETUPS, client_context, connect, pki_and_upstream, proxy_config  # bench/e2e.py
from procs import REPO, free_port

SETUP = next(s for s in SETUPS if s.key == "require13")
START_TIMEOUT = 300.0  # Python and its imports under callgrind: ~50x slower than native
TOTAL = re.compile(rb"^summary: (\d+)", re.MULTILINE)
IDLE_SECONDS = 30.0
Run = tuple[tuple[int, float], int]  # (instructions, seconds), operations


def config(directory: Path, upstream: int, port: int, admin: int, workers: int) -> Path:
    text = proxy_config(directory, SETUP, upstream, "native").read_text()
    text = text.replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}")
    text = text.replace("  enabled: false", f"  listen: 127.0.0.1:{admin}")
    path = directory / f"proxy-w{workers}.yaml"
    path.write_text(f"workers: {workers}\n" + text)
    return path


def wait_ready(admin: int, proc: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the proxy exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the proxy did not become ready:\n{log.read_text()[-3000:]}")


def handshakes(port: int, context: ssl.SSLContext, count: int) -> None:
    for _ in range(count):
        with (
            connect(port, timeout=60) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"E")
            if tls.recv(1) != b"E":
                raise SystemExit("no echo")


def requests(port: int, context: ssl.SSLContext, count: int, connections: int = 4) -> None:
    """``count`` 1 KiB requests over ``connections`` connections, round robin."""
    sockets = []
    for _ in range(connections):
        tls = context.wrap_socket(connect(port, timeout=60), server_hostname="localhost")
        tls.sendall(b"R")  # the upstream echoes every byte after it
        sockets.append(tls)
    payload = b"x" * 1024
    for index in range(count):
        tls = sockets[index % connections]
        tls.sendall(payload)
        received = 0
        while received < len(payload):
            received += len(tls.recv(65536))
    for tls in sockets:
        tls.close()


def instructions(
    directory: Path, workers: int, test: str, count: int, upstream: int
) -> tuple[int, float]:
    """The whole tree's instructions with ``count`` operations (none: ``IDLE_SECONDS`` idle),
    and how long the operations took."""
    port, admin = free_port(), free_port()
    path = config(directory, upstream, port, admin, workers)
    out = directory / f"cg-{workers}-{test}-{count}"
    out.mkdir()
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={out}/cg.%p",
        sys.executable,
        "-m",
        "mtlsproxy",
        "run",
        "-c",
        str(path),
    ]
    log_path = directory / f"proxy-{workers}-{test}-{count}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_ready(admin, proc, log_path)
        context = client_context(directory, SETUP)
        started = time.monotonic()
        if count == 0:
            time.sleep(IDLE_SECONDS)
        else:
            (handshakes if test == "hs" else requests)(port, context, count)
        elapsed = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    return sum(int(TOTAL.search(f.read_bytes())[1]) for f in out.glob("cg.*")), elapsed


def per_operation(idle: tuple[int, float], few: Run, many: Run) -> float:
    """Solve ``total = start-up + seconds * background + operations * per_operation`` for the
    last from three runs: idle (no operations) and two counts of operations. The background
    (the workers' and the supervisor's timers: file watchers, the event loops) grows with
    the run's length, which is longer under callgrind for more operations."""
    (i0, t0), ((i1, t1), n1), ((i2, t2), n2) = idle, few, many
    a1, a2, y1, y2 = t1 - t0, t2 - t0, i1 - i0, i2 - i0
    return (a1 * y2 - a2 * y1) / (a1 * n2 - a2 * n1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--test", choices=("hs", "ka"), default="hs")
    parser.add_argument("--few", type=int, default=20)
    parser.add_argument("--many", type=int, default=80)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-wi-") as name:
        directory = Path(name)
        upstream = pki_and_upstream(directory)
        try:
            for workers in (int(w) for w in args.workers.split(",")):

                def run(count: int, workers: int = workers) -> tuple[int, float]:
                    return instructions(directory, workers, args.test, count, upstream.port)

                idle, few, many = run(0), run(args.few), run(args.many)
                for count, (total, seconds) in ((0, idle), (args.few, few), (args.many, many)):
                    print(f"  workers {workers}, {count} operations: {total} in {seconds:.1f} s")
                per = per_operation(idle, (few, args.few), (many, args.many))
                unit = "connection" if args.test == "hs" else "request"
                print(f"workers {workers}: {per / 1e6:.3f} M instructions per {unit}", flush=True)
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
