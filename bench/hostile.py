"""Hostile load on a real proxy process: what it costs in memory, what good clients keep.

For each engine (``--engines openssl,native``), each attack and each run, a fresh
``python -m mtlsproxy run`` (mutual TLS 1.3, client CA + CRLs, default limits: buffer_size
256 KiB, max_handshakes 1024, handshake timeout 10 s) is started on core 0; everything else
(driver, good clients, attackers, upstream) runs on core 1. Then:

1. good clients alone for ``--seconds`` (after a short warm-up): their handshake rate;
2. the attack starts; once it is in place, good clients again for ``--seconds`` while it runs;
   the proxy's VmRSS (``/proc/PID/status``) before the attack and at the end of that window,
   and the hostile connections the proxy holds (``mtlsproxy_connections_active``).

Good clients are ``--workers`` processes doing full mutual-TLS handshakes with Python ``ssl``
in a loop (connect, handshake, 1 byte echoed through the upstream, close), as in e2e.py, from
127.0.0.1. Attackers come from other addresses: ``--sources`` of them, 127.0.0.2, 127.0.0.3,
... (all of 127.0.0.0/8 is loopback on Linux), their connections spread over them in turn, as
an attacker is not on the good clients' address. What the proxy refused at accept because a
source spent its ``limits.failed_handshakes_per_source`` (default: 10 a second, burst 100) is
reported as ``rejected``.

Attacks (each bounded in connections, records and time; every loop stops by itself):

* ``slowloris``: ``--slowloris`` connections each trickling a ClientHello one byte at a time
  (every ``--trickle`` seconds); one closed by the proxy is opened again;
* ``flood``: ``--flood`` connections in a closed loop, each sending a (replayed) ClientHello,
  reading the server's flight and closing: full server handshake cost, none for the client;
  a connection the proxy refuses at accept is opened again at once;
* ``keyupdate``: ``--established`` mutual-TLS 1.3 sessions (the project's raw TLS 1.3 test
  client), each sending KeyUpdate(update_requested) records as fast as it can, never reading;
* ``empty``: the same sessions sending empty application-data records, never reading;
* ``neverread``: ``--established`` sessions asking the upstream for an endless download and
  never reading it.

The attackers run at ``nice 19`` so that on the shared client core they take only what the
good clients leave: what is measured is the proxy's share, not the load generator's.

    /work/venv/bin/python bench/hostile.py --engines openssl,native --seconds 3 --runs 3

Internal mode: ``--serve upstream`` (E -> E; D -> an endless download).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import resource
import select
import selectors
import shlex
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from e2e import SETUPS, client_context, measure_handshakes  # bench/e2e.py
from e2e import proxy_config as e2e_proxy_config
from procs import REPO, Process, field_median, write_samples  # bench/procs.py

SERVER_CORE = 0
CLIENT_CORE = 1
REQUIRE13 = next(s for s in SETUPS if s.key == "require13")
ATTACKS = ("slowloris", "flood", "keyupdate", "empty", "neverread")
METRICS = re.compile(rb"metrics on (http://\S+)/metrics")
BATCH = 200  # records built per send in the record floods
GOOD_SOURCE = "127.0.0.1"  # the good clients' address (e2e.py connects from it)


def attacker_source(index: int, sources: int) -> str:
    """The address of an attacker's ``index``-th connection: 127.0.0.2 onwards, in turn."""
    return f"127.0.0.{2 + index % sources}"


def connect_from(source: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to the proxy from ``source`` (bound before connect)."""
    return socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))


# ---------------------------------------------------------------------------------------------
# The upstream: E -> E (good clients); D -> 64 KiB blocks until the connection closes.


def serve_upstream() -> None:
    import asyncio

    import uvloop

    block = b"d" * 65536

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.downloading = self.paused = False

        def data_received(self, data: bytes) -> None:
            if data[:1] == b"E":
                self.transport.write(b"E")
            elif data[:1] == b"D" and not self.downloading:
                self.downloading = True
                self.send()

        def send(self) -> None:
            while not self.paused and not self.transport.is_closing():
                self.transport.write(block)

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            asyncio.get_running_loop().call_soon(self.send)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Upstream, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# ---------------------------------------------------------------------------------------------
# The proxy


def proxy_config(directory: Path, engine: str, upstream: int) -> Path:
    """e2e.py's require/TLS 1.3 config with metrics on (to count the connections held)."""
    path = e2e_proxy_config(directory, REQUIRE13, upstream, engine)
    path.write_text(path.read_text().replace("  enabled: false", "  listen: 127.0.0.1:0"))
    return path


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metric(url: str, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------------------------
# Attackers: each runs in its own process (nice 19), reports "ready" once in place, then keeps
# attacking while ``running()`` (until told to stop, or its deadline) and reports its counts.


def client_hello(directory: Path) -> bytes:
    """A real ClientHello (Python ssl, TLS 1.3 only, our client certificate loaded)."""
    context = client_context(directory, REQUIRE13)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def slowloris(port: int, directory: Path, args, running, conn) -> None:
    """Connections trickling a ClientHello; once a round (``--trickle`` seconds), as
    slowloris.py does, those the proxy closed are opened again."""
    hello = client_hello(directory)
    sel = selectors.DefaultSelector()
    sent: dict[socket.socket, int] = {}
    reopened = refused = 0

    def open_one() -> None:
        nonlocal refused
        source = attacker_source(len(sent) + reopened, args.sources)
        try:
            sock = connect_from(source, port, timeout=5)
        except OSError:  # the proxy refused an earlier one at once, the backlog is full
            refused += 1
            return
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        sent[sock] = 0

    for _ in range(args.slowloris):
        open_one()
    conn.send("ready")
    ticks = max(1, round(args.trickle / 0.05))  # a share of the sockets every 50 ms
    tick = 0
    while running():
        for key, _ in sel.select(timeout=0.05):  # readable: the proxy closed it (or an alert)
            sock = key.fileobj
            sel.unregister(sock)
            del sent[sock]  # type: ignore[arg-type]
            sock.close()  # type: ignore[union-attr]
        if tick % ticks == 0:
            order = list(sent)
            for _ in range(args.slowloris - len(sent)):
                if reopened >= 1_000_000 or not running():
                    break
                open_one()
                reopened += 1
        share = order[tick % ticks :: ticks]
        for sock in share:
            if sock in sent and sent[sock] < len(hello):
                with contextlib.suppress(OSError):
                    sock.send(hello[sent[sock] : sent[sock] + 1])
                    sent[sock] += 1
        tick += 1
    conn.send({"reopened": reopened, "open": len(sent), "connect_failed": refused})
    for sock in list(sent):
        sock.close()


def flight_size(port: int, hello: bytes, source: str) -> int:
    """Bytes of the server's flight to this ClientHello (read until 0.3 s of quiet), less a
    few: an ECDSA signature's length varies by a byte or two."""
    with connect_from(source, port, timeout=5) as sock:
        sock.sendall(hello)
        sock.settimeout(0.3)
        total = 0
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                total += len(chunk)
    return total - 16


def flood(port: int, directory: Path, args, running, conn) -> None:
    hello = client_hello(directory)
    size = flight_size(port, hello, attacker_source(0, args.sources))
    counts = [0] * args.flood  # whole flights taken, then abandoned
    refusals = [0] * args.flood  # connections closed (or reset) before a whole flight

    def loop(index: int) -> None:
        source = attacker_source(index, args.sources)
        while running() and counts[index] + refusals[index] < 1_000_000:
            got = 0
            with contextlib.suppress(OSError), connect_from(source, port, timeout=5) as sock:
                sock.sendall(hello)
                while got < size and (chunk := sock.recv(65536)):
                    got += len(chunk)
            if got >= size:
                counts[index] += 1
            else:
                refusals[index] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(args.flood)]
    for thread in threads:
        thread.start()
    conn.send("ready")
    for thread in threads:
        thread.join(70)
    conn.send(
        {
            "abandoned_handshakes": sum(counts),
            "refused_before_flight": sum(refusals),
            "flight_bytes": size,
        }
    )


def raw_session(port: int, directory: Path, source: str):
    """A mutual-TLS 1.3 session on the project's raw test client (any record can be built)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.engine.native.tls13_client import MiniClient

    certs = x509.load_pem_x509_certificates((directory / "client.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / "client.key").read_bytes(), None)
    client = MiniClient(chain=[c.public_bytes(serialization.Encoding.DER) for c in certs], key=key)
    sock = connect_from(source, port, timeout=10)
    sock.sendall(client.client_hello())
    while not client.server_finished:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        client.receive(data)
    sock.sendall(client.flight())
    sock.setblocking(False)
    return client, sock


def record_flood(kind: str, port: int, directory: Path, args, running, conn) -> None:
    """KeyUpdate(update_requested) or empty application-data records, never reading."""
    sources = [attacker_source(i, args.sources) for i in range(args.established)]
    sessions = [raw_session(port, directory, source) for source in sources]
    pending = [b""] * len(sessions)
    records = closed = 0
    conn.send("ready")
    while running() and records < 20_000_000:
        _, writable, _ = select.select([], [s for _, s in sessions], [], 0.2)
        for index, (client, sock) in enumerate(sessions):
            if sock not in writable:
                continue
            if not pending[index]:
                if kind == "keyupdate":
                    pending[index] = b"".join(client.key_update(True) for _ in range(BATCH))
                else:
                    pending[index] = b"".join(client.seal(b"", 23) for _ in range(BATCH))
                records += BATCH
            try:
                pending[index] = pending[index][sock.send(pending[index]) :]
            except OSError:  # the proxy closed it
                closed += 1
                sessions[index] = raw_session(port, directory, sources[index])
                pending[index] = b""
    conn.send({"records": records, "sessions_closed_by_proxy": closed})
    for _, sock in sessions:
        sock.close()


def neverread(port: int, directory: Path, args, running, conn) -> None:
    context = client_context(directory, REQUIRE13)
    sessions = []
    for index in range(args.established):
        raw = connect_from(attacker_source(index, args.sources), port, timeout=10)
        tls = context.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"D")
        sessions.append(tls)
    conn.send("ready")
    while running():
        time.sleep(0.1)
    conn.send({"sessions": len(sessions)})
    for tls in sessions:
        tls.close()


def _attacker(kind: str, port: int, directory: str, args, stop, conn) -> None:
    os.nice(19)
    sys.path.insert(0, str(REPO))
    path = Path(directory)
    end = time.time() + args.seconds + 60  # in place within 60 s, or it stops anyway

    def running() -> bool:
        return not stop.is_set() and time.time() < end

    if kind == "slowloris":
        slowloris(port, path, args, running, conn)
    elif kind == "flood":
        flood(port, path, args, running, conn)
    elif kind in ("keyupdate", "empty"):
        record_flood(kind, port, path, args, running, conn)
    else:
        neverread(port, path, args, running, conn)
    conn.close()


# ---------------------------------------------------------------------------------------------
# One sample: a fresh proxy, good clients alone, then under one attack.


def sample(engine: str, attack: str, config: Path, directory: Path, args) -> dict:
    log = directory / f"{engine}-{attack}.log"
    proxy = Process(
        [sys.executable, "-m", "mtlsproxy", "run", "-c", str(config)], log, SERVER_CORE, None
    )
    try:
        match = None
        for _ in range(200):
            if match := METRICS.search(log.read_bytes()):
                break
            time.sleep(0.05)
        assert match, "no metrics URL in the proxy's log"
        url = match.group(1).decode()
        good = SimpleNamespace(seconds=args.seconds, workers=args.workers)
        measure_handshakes(proxy, directory, REQUIRE13, SimpleNamespace(seconds=1, workers=1))
        alone = measure_handshakes(proxy, directory, REQUIRE13, good)
        rss_before = vm_rss_kib(proxy.proc.pid)
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        stop = ctx.Event()
        attacker = ctx.Process(
            target=_attacker, args=(attack, proxy.port, str(directory), args, stop, child)
        )
        attacker.start()
        child.close()
        try:
            if not parent.poll(60) or parent.recv() != "ready":
                raise RuntimeError(f"{attack}: the attacker did not get in place")
            time.sleep(args.settle)
            under = measure_handshakes(proxy, directory, REQUIRE13, good)
            rss_during = vm_rss_kib(proxy.proc.pid)
            held = metric(url, "mtlsproxy_connections_active{")
            rejected_total = "mtlsproxy_connections_rejected_total{"
            shed = metric(url, rejected_total, 'reason="handshake_shed"')
            rejected = metric(url, rejected_total, 'reason="source_budget"')
        finally:
            stop.set()
            report = parent.recv() if parent.poll(30) else {}
            attacker.join(10)
            if attacker.is_alive():
                attacker.kill()
                attacker.join(5)
    finally:
        proxy.stop()
    hostile = {"flood": args.flood}.get(attack, held)
    return {
        "alone_hs_s": alone["per_s"],
        "under_hs_s": under["per_s"],
        "fraction": under["per_s"] / alone["per_s"] if alone["per_s"] else float("nan"),
        "under_errors": under["errors"],
        "proxy_core_under": under["cpu_util"],
        "rss_before_kib": rss_before,
        "rss_growth_kib": rss_during - rss_before,
        "hostile_held": held,
        "rss_kib_per_hostile": (rss_during - rss_before) / hostile if hostile else float("nan"),
        "shed": shed,
        "rejected": rejected,
        "attacker": report,
    }


def main() -> int:
    if sys.argv[1:3] == ["--serve", "upstream"]:
        serve_upstream()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="openssl,native")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--seconds", type=float, default=3.0, help="good-client load window")
    parser.add_argument("--runs", type=int, default=3, help="samples per engine and attack")
    parser.add_argument("--workers", type=int, default=3, help="good client processes")
    parser.add_argument("--settle", type=float, default=1.0, help="attack in place, then wait")
    parser.add_argument("--slowloris", type=int, default=3000, help="trickling connections")
    parser.add_argument("--trickle", type=float, default=1.0, help="seconds between bytes")
    parser.add_argument("--flood", type=int, default=3, help="abandoning connections in flight")
    parser.add_argument("--established", type=int, default=20, help="sessions per record flood")
    parser.add_argument(
        "--sources", type=int, default=3, help="attacker addresses: 127.0.0.2 onwards"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()
    engines = args.engines.split(",")
    attacks = [a for a in args.attacks.split(",") if a in ATTACKS]
    if not attacks or set(engines) - {"openssl", "native"}:
        parser.error("unknown engine or attack")
    if not 1 <= args.sources <= 250:
        parser.error("--sources: 1 to 250 (127.0.0.2 to 127.0.0.251)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.slowloris + 100 > hard:
        parser.error(f"--slowloris {args.slowloris}: the open-file limit is {hard}")
    pin = shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
    if not pin:
        parser.error("needs taskset and two cores (the proxy on one, the load on the other)")
    os.sched_setaffinity(0, {CLIENT_CORE})
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    print(
        f"pinning: proxy core {SERVER_CORE}, everything else core {CLIENT_CORE} (attackers "
        f"nice 19); {ssl.OPENSSL_VERSION}; Python {sys.version.split()[0]}",
        flush=True,
    )
    samples: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlsproxy-hostile-") as tmp:
        directory = Path(tmp)
        sys.path.insert(0, str(REPO))
        from mtlsproxy import pki

        pki.init(directory)
        me = str(Path(__file__).resolve())
        upstream = Process(
            [sys.executable, me, "--serve", "upstream"], directory / "up.log", None, None
        )
        try:
            configs = {e: proxy_config(directory, e, upstream.port) for e in engines}
            for run in range(args.runs):
                for attack in attacks:
                    for engine in engines if run % 2 == 0 else engines[::-1]:
                        result = sample(engine, attack, configs[engine], directory, args)
                        result["run"] = run
                        samples.setdefault(f"{engine}/{attack}", []).append(result)
                        print(
                            f"run {run + 1} {engine:7} {attack:9} alone "
                            f"{result['alone_hs_s']:6.0f} hs/s, under {result['under_hs_s']:6.0f}"
                            f" ({result['fraction']:.2f}), proxy core "
                            f"{100 * result['proxy_core_under']:3.0f} %, RSS "
                            f"+{result['rss_growth_kib']} KiB over {result['hostile_held']:.0f}"
                            f" held, shed {result['shed']:.0f}, rejected "
                            f"{result['rejected']:.0f}; attacker {result['attacker']}",
                            flush=True,
                        )
        finally:
            upstream.stop()
    print_table(engines, attacks, samples, args)
    write_samples(args.json, command, samples)
    return 0


DESCRIPTIONS = {
    "slowloris": "slowloris: {slowloris} conns, 1 byte/{trickle:g} s",
    "flood": "flood: {flood} abandoning conns in flight",
    "keyupdate": "KeyUpdate flood: {established} sessions",
    "empty": "empty records: {established} sessions",
    "neverread": "never reads a download: {established}",
}


def print_table(engines: list[str], attacks: list[str], samples: dict, args) -> None:
    def med(key: str, field: str) -> float:
        return field_median(samples, key, field)

    print()
    print(
        f"Good clients: {args.workers} processes, full mutual-TLS 1.3 handshakes, "
        f"{args.seconds:g} s windows; medians of {args.runs} runs (fresh proxy each); "
        "fraction = rate under attack / rate alone, per run; attackers from "
        f"{args.sources} addresses (127.0.0.2 on); rejected: refused at accept "
        "(failed_handshakes_per_source) by the end of the window"
    )
    header = (
        f"{'attack':42} {'engine':7} {'alone hs/s':>10} {'under hs/s':>10} {'fraction':>8} "
        f"{'held':>5} {'RSS +KiB':>8} {'KiB/hostile':>11} {'shed':>6} {'rejected':>8}"
    )
    print(header)
    print("-" * len(header))
    for attack in attacks:
        label = DESCRIPTIONS[attack].format(**vars(args))
        for engine in engines:
            key = f"{engine}/{attack}"
            print(
                f"{label:42} {engine:7} {med(key, 'alone_hs_s'):10.0f} "
                f"{med(key, 'under_hs_s'):10.0f} {med(key, 'fraction'):8.2f} "
                f"{med(key, 'hostile_held'):5.0f} {med(key, 'rss_growth_kib'):8.0f} "
                f"{med(key, 'rss_kib_per_hostile'):11.1f} {med(key, 'shed'):6.0f} "
                f"{med(key, 'rejected'):8.0f}"
            )
    print()
    print("Per-run fractions:")
    for attack in attacks:
        for engine in engines:
            fractions = " ".join(f"{s['fraction']:.2f}" for s in samples[f"{engine}/{attack}"])
            print(f"  {attack:9} {engine:7} {fractions}")


if __name__ == "__main__":
    sys.exit(main())
