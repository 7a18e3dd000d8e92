"""Processes for the benchmarks: started pinned, their port found, their CPU read from /proc,
stopped by PID, their memory read from /proc; the tables. Shared by the bench scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


def proxy_command(config: Path, before: Path | None = None) -> tuple[list[str], Path]:
    """``python -m mtlsproxy run -c CONFIG`` of this tree, or of the checkout ``before`` (with
    its own ``.venv``: another commit's proxy in the same passes), and the directory to run it
    in (``-m`` imports the tree it runs in)."""
    if before is None:
        return [sys.executable, "-m", "mtlsproxy", "run", "-c", str(config)], REPO
    tree = before.resolve()
    python = str(tree / ".venv" / "bin" / "python")
    return [python, "-m", "mtlsproxy", "run", "-c", str(config)], tree


def pin_servers(server_core: int, client_core: int) -> int | None:
    """With ``taskset`` and two cores: this process (the driver, and the clients and upstream
    it starts) on ``client_core``; returns the core to pin servers to (None: no pinning)."""
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        return None
    os.sched_setaffinity(0, {client_core})
    return server_core


def print_header(server_pin: int | None, nginx: str, tail: str) -> str:
    """Print the command line and the setting of the run; returns the command line."""
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    version = f"nginx {nginx_version(nginx)}; " if nginx else ""
    pinning = "servers core 0, clients+upstream core 1" if server_pin is not None else "none"
    print(
        f"pinning: {pinning}; {ssl.OPENSSL_VERSION}; Python {sys.version.split()[0]}; "
        f"{version}{tail}",
        flush=True,
    )
    return command


def nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return out.removeprefix("nginx version: ")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def field_median(samples: dict[str, list[dict]], key: str, field: str) -> float:
    """The median of ``field`` over the samples kept under ``key`` (nan when none)."""
    return median([s[field] for s in samples.get(key, [])])


def keep_sample(
    samples: dict[str, list[dict]], key: str, run: int, result: dict, label: str
) -> None:
    """File one measurement under ``key`` with its pass number, and print it as one line."""
    result["run"] = run
    samples.setdefault(key, []).append(result)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k != "run")
    print(f"run {run + 1} {label} {shown}", flush=True)


def write_samples(path: str | None, command: str, samples: dict) -> None:
    """``--json FILE``: every sample and the command line."""
    if path:
        Path(path).write_text(json.dumps({"command": command, "samples": samples}, indent=2) + "\n")


async def serve_until_stopped(server: asyncio.Server) -> None:
    """A bench server started by ``Process``: says its port (the line ``Process`` waits for),
    serves until SIGTERM or SIGINT, then closes."""
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tasks:
        with contextlib.suppress(FileNotFoundError):
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            found += [int(c) for c in children.split()]
    return found


def process_tree(pid: int) -> Iterator[int]:
    """``pid`` and its live descendants, parents first."""
    todo = [pid]
    while todo:
        current = todo.pop()
        yield current
        todo += _children(current)


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and all its live descendants (nginx: master + worker)."""
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime (14), stime (15)
    return total / os.sysconf("SC_CLK_TCK")


class Process:
    """A front or the upstream: a subprocess, its port, its CPU, stopped by PID."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        pin: int | None,
        port: int | None,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,  # None: this process's environment
    ) -> None:
        if pin is not None:
            argv = ["taskset", "-c", str(pin), *argv]  # taskset execs: same PID
        self.log = log
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,  # ``python -m mtlsproxy`` imports the tree it runs in
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        try:
            self.port = self._wait(port, timeout=20.0)
        except BaseException:
            self.stop()
            raise

    def _wait(self, port: int | None, timeout: float) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if port is None:
                match = LISTENING.search(self.log.read_bytes())
                if match:
                    return int(match.group(1))
            else:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return port
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = self.log.read_bytes()[-2000:].decode(errors="replace")
        raise RuntimeError(f"did not start: {shlex.join(self.proc.args)}\n{tail}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def rss_kib(self) -> int:
        return tree_rss_kib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # nginx: SIGTERM to the master is a fast shutdown that also stops its worker.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stderr.close()


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its live descendants (nginx: master + worker), in KiB."""
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{current}/status").read_text()
            total += int(status.split("VmRSS:", 1)[1].split()[0]) if "VmRSS:" in status else 0
    return total


def pass_ratios(samples: dict[str, list[dict]], key: str, base: str, field: str) -> list[float]:
    """``field`` of ``key`` over ``field`` of ``base``, per pass (samples of the same pass were
    taken back to back on the same machine state): the figures to take the median of."""
    by_run = {s["run"]: s[field] for s in samples.get(base, [])}
    return [s[field] / by_run[s["run"]] for s in samples.get(key, []) if by_run.get(s["run"])]


def print_table(title: str, columns: list[tuple[str, str]], rows: list[list[object]]) -> None:
    """One results table: ``columns`` are ``(heading, format)`` pairs (``"s"`` left-aligned
    text; a number format such as ``".0f"`` right-aligned), each as wide as its widest cell."""
    cells = [
        [
            format(value, fmt) if value == value else "-"
            for value, (_, fmt) in zip(row, columns, strict=True)
        ]
        for row in rows
    ]
    widths = [
        max([len(heading)] + [len(row[i]) for row in cells])
        for i, (heading, _) in enumerate(columns)
    ]

    def line(values: list[str]) -> str:
        return " ".join(
            value.ljust(width) if fmt == "s" else value.rjust(width)
            for value, width, (_, fmt) in zip(values, widths, columns, strict=True)
        ).rstrip()

    print()
    print(title)
    header = line([heading for heading, _ in columns])
    print(header)
    print("-" * len(header))
    for row in cells:
        print(line(row))
