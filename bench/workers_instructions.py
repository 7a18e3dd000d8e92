"""Instructions per connection and per keep-alive request with ``workers: 1`` and ``workers: 2``.

CPU time per operation on this 2-core machine rises when a second worker shares the cores with
the load generator (caches, migrations, fewer events per wakeup), which says nothing about what
the workers' own code costs. This script counts it: the proxy (``engine: native``, e2e.py's
require/TLS 1.3 settings, metrics on, access log on) runs under ``valgrind --tool=callgrind
--trace-children=yes``, so the supervisor and every worker are counted. Once it is ready and
warmed up (``--warmup`` operations: first runs of code paths, caches), every process's counters
are zeroed (``callgrind_control --zero PID``), a client makes ``--count`` operations one after
another, the counters are dumped; then zeroed again for as long idle, and dumped. Per operation
= (operations - idle) / count: the user-space instructions of an operation wherever it ran,
the background (file watchers, the supervisor) taken out. Kernel work is not counted
(callgrind sees user space only). The proxies run with ``bench/valgrind_site`` on their
``PYTHONPATH``: it lifts the time budget of a read's slices, which callgrind's slowness would
otherwise make cut every request (see its docstring).

    .venv/bin/python bench/workers_instructions.py --workers 1,2 --test hs --count 100
    .venv/bin/python bench/workers_instructions.py --workers 1,2 --test ka --count 2000

``hs``: full mutual-TLS 1.3 connections (handshake, 1 byte echoed through the upstream, close);
``ka``: 1 KiB requests echoed through the upstream over 4 connections opened beforehand.
"""

from __future__ import annotations

import argparse
import os
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
TOTAL = re.compile(rb"^summary: (\d+)", re.MULTILINE)  # what callgrind_annotate totals
WORKER_PID = re.compile(rb"worker \d+ started \(pid (\d+)\)")


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


class Client:
    """The operations of a test; ``ka``'s 4 connections are opened once, before the warm-up."""

    def __init__(self, test: str, port: int, context: ssl.SSLContext) -> None:
        self.test, self.port, self.context = test, port, context
        self.sockets: list[ssl.SSLSocket] = []
        if test == "ka":
            for _ in range(4):
                tls = context.wrap_socket(connect(port, timeout=60), server_hostname="localhost")
                tls.sendall(b"R")  # the upstream echoes every byte after it
                self.sockets.append(tls)

    def run(self, count: int) -> None:
        (self._handshakes if self.test == "hs" else self._requests)(count)

    def close(self) -> None:
        for tls in self.sockets:
            tls.close()

    def _handshakes(self, count: int) -> None:
        for _ in range(count):
            with (
                connect(self.port, timeout=60) as raw,
                self.context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"E")
                if tls.recv(1) != b"E":
                    raise SystemExit("no echo")

    def _requests(self, count: int) -> None:
        """``count`` 1 KiB requests, round robin over the connections."""
        payload = b"x" * 1024
        for index in range(count):
            tls = self.sockets[index % len(self.sockets)]
            tls.sendall(payload)
            received = 0
            while received < len(payload):
                received += len(tls.recv(65536))


def dump_totals(pids: list[int], out: Path, part: int) -> int:
    """Dump every process's counters (file ``cg.PID.part``) and add up their totals."""
    for pid in pids:
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    totals = []
    for pid in pids:
        dump = out / f"cg.{pid}.{part}"
        end = time.monotonic() + 60
        while not (dump.exists() and TOTAL.search(dump.read_bytes())):
            if time.monotonic() > end:
                raise SystemExit(f"no callgrind dump {dump}")
            time.sleep(0.2)
        totals.append(int(TOTAL.search(dump.read_bytes())[1]))
    print(f"  part {part}, per process: {totals}")
    return sum(totals)


def zero(pids: list[int]) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)


def per_operation(directory: Path, workers: int, args: argparse.Namespace, upstream: int) -> float:
    """Instructions per operation over the proxy's process tree (see the module docstring)."""
    port, admin = free_port(), free_port()
    path = config(directory, upstream, port, admin, workers)
    out = Path(tempfile.mkdtemp(prefix=f"cg-{workers}-{args.test}-", dir=directory))
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
    log_path = directory / f"proxy-{workers}-{args.test}.log"
    log = log_path.open("wb")
    site = str(Path(__file__).resolve().parent / "valgrind_site")
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (site, inherited)))}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_ready(admin, proc, log_path)
        pids = [proc.pid, *map(int, WORKER_PID.findall(log_path.read_bytes()))]
        client = Client(args.test, port, client_context(directory, SETUP))
        client.run(args.warmup)
        zero(pids)
        started = time.monotonic()
        client.run(args.count)
        elapsed = time.monotonic() - started
        busy = dump_totals(pids, out, 1)
        zero(pids)
        time.sleep(elapsed)
        idle = dump_totals(pids, out, 2)
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    print(
        f"  workers {workers}: {busy} with {args.count} operations in {elapsed:.1f} s, {idle} idle"
    )
    return (busy - idle) / args.count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--test", choices=("hs", "ka"), default="hs")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="a directory to keep the callgrind files in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-wi-") as name:
        directory = Path(args.keep or name)  # --keep: the callgrind files, for callgrind_annotate
        directory.mkdir(parents=True, exist_ok=True)
        upstream = pki_and_upstream(directory)
        try:
            for workers in (int(w) for w in args.workers.split(",")):
                per = per_operation(directory, workers, args, upstream.port)
                unit = "connection" if args.test == "hs" else "request"
                print(f"workers {workers}: {per / 1e6:.3f} M instructions per {unit}", flush=True)
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
